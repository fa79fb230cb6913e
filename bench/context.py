"""What a case gets: the commands to compare, the repetition settings, and a shared throwaway rack."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.rack import Rack, throwaway_rack

ROOT = Path(__file__).resolve().parent.parent


def find_convox() -> Path:
    """The repository's ``.venv/bin/convox`` (the installed CLI), else the one on ``PATH``."""
    local = ROOT / ".venv" / "bin" / "convox"
    if local.exists():
        return local
    found = shutil.which("convox")
    if found is None:
        raise RuntimeError("no convox CLI: run `make` to create .venv, or put convox on PATH")
    return Path(found)


@dataclass
class Context:
    """Settings and shared resources for one benchmark run. ``repeat``/``warmup`` are the command
    line's overrides; a case asks for its own defaults through :meth:`repetitions` and :meth:`warmups`."""

    convox: Path
    repeat: int | None = None
    warmup: int | None = None
    stack: ExitStack = field(default_factory=ExitStack)
    _rack: Rack | None = None

    @property
    def docker(self) -> str:
        found = shutil.which("docker")
        if found is None:
            raise RuntimeError("no docker CLI on PATH")
        return found

    def repetitions(self, default: int) -> int:
        return self.repeat if self.repeat is not None else default

    def warmups(self, default: int) -> int:
        return self.warmup if self.warmup is not None else default

    def rack(self) -> Rack:
        """One rack for every case of this run, started on first use and stopped when the run ends."""
        if self._rack is None or self._rack.process.poll() is not None:
            self._rack = self.stack.enter_context(throwaway_rack(self.convox, name="bench"))
        return self._rack

    def close(self) -> None:
        self.stack.close()
