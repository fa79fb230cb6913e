"""`convox rack start`: the gateway and the five services as separate OS processes, supervised.

Each child is named by its command line (``python -m services.apps --socket ...``), gets the per-start
secret through its environment (never its command line), has its output prefixed with its name and kept
in the rack's log, and is restarted within two seconds when it dies. SIGINT or SIGTERM stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import httpx

from shared.config import INTERNAL_HEADER, SERVICES
from shared.logfmt import format_line

RESTART_DELAYS = (0.1, 0.5, 1.0, 1.5)
"""Back-off between restarts of a service that keeps dying; never past the 2 s promise."""
STABLE_AFTER = 10.0
LOG_MAX_BYTES = 32 << 20
"""The rack's own log is kept to two files of about this size: rack.log and rack.log.1."""


READY_SECONDS = 90.0
"""How long a service may take to answer at start (six Python processes importing at once on a busy
machine take tens of seconds)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ensure_password(data_dir: Path, from_env: str | None) -> tuple[str, bool]:
    """The rack password: stored at first start (``CONVOX_PASSWORD`` or generated), mode 0600.
    Returns the password and whether it was generated now (and so must be shown once)."""
    path = data_dir / "password"
    if path.exists():
        return path.read_text().strip(), False
    password = from_env or secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password, not from_env


def open_private_log(path: Path) -> TextIO:
    """``path`` opened to append, readable by this user only (0600, also when it was there before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


@dataclass
class Child:
    name: str
    argv: list[str]
    socket: Path | None
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
    def __init__(
        self, data_dir: Path, host: str, port: int, rack: str = "convox", log_max_bytes: int = LOG_MAX_BYTES
    ) -> None:
        self.data_dir = data_dir
        self.run_dir = data_dir / "run"
        self.log_path = data_dir / "logs" / "rack.log"
        self.log_max_bytes = log_max_bytes
        self.host = host
        self.port = port
        self.rack = rack
        self.secret = secrets.token_hex(32)
        self.stopping = asyncio.Event()
        self.lines: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10_000)
        python = sys.executable
        common = ["--data-dir", str(data_dir)]
        self.children = [
            Child(
                name,
                [python, "-m", f"services.{name}", "--socket", str(self.run_dir / f"{name}.sock"), *common],
                self.run_dir / f"{name}.sock",
            )
            for name in SERVICES
        ]
        self.children.append(
            Child("gateway", [python, "-m", "services.gateway", "--host", host, "--port", str(port), *common], None)
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def emit(self, source: str, line: str) -> None:
        """A line of the rack's log: ``source: line``, to stdout and to the log file."""
        text = f"{source}: {line}"
        print(text, flush=True)
        with contextlib.suppress(asyncio.QueueFull):
            self.lines.put_nowait(f"{datetime.now(UTC).isoformat()} {text}\n")

    def note(self, at: str, **fields: object) -> None:
        self.emit("supervisor", format_line(ns="supervisor", at=at, **fields))

    async def write_log(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle: TextIO = await asyncio.to_thread(open_private_log, self.log_path)
        try:
            done = False
            while not done:
                batch = [await self.lines.get()]
                while not self.lines.empty():
                    batch.append(self.lines.get_nowait())
                done = None in batch
                handle = await asyncio.to_thread(self._write, handle, "".join(line for line in batch if line))
        finally:
            await asyncio.to_thread(handle.close)

    def _write(self, handle: TextIO, text: str) -> TextIO:
        """Append ``text``; past ``log_max_bytes`` the log becomes ``rack.log.1`` and a new one starts."""
        handle.write(text)
        handle.flush()
        if handle.tell() < self.log_max_bytes:
            return handle
        handle.close()
        os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        return open_private_log(self.log_path)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CONVOX_PASSWORD", None)
        env.update(
            RACK_BALANCER_HOST=self.host,
            RACK_INTERNAL_SECRET=self.secret,
            RACK_DATA_DIR=str(self.data_dir),
            RACK_NAME=self.rack,
            PYTHONUNBUFFERED="1",
        )
        return env

    async def spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.environment(),
            preexec_fn=_die_with_parent,
        )
        child.started = time.time()
        child.pumps = [asyncio.create_task(self.pump(child, child.process))]
        self.note("start", service=child.name, pid=child.process.pid)
        await self.write_processes()

    async def pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            self.emit(child.name, line.decode("utf-8", "backslashreplace").rstrip("\n"))

    async def write_processes(self) -> None:
        """``run/processes.json``: what `convox ps --app convox` lists."""
        entries = [
            {"name": c.name, "pid": c.process.pid, "started": c.started, "command": " ".join(c.argv[1:])}
            for c in self.children
            if c.process is not None and c.process.returncode is None
        ]
        entries.insert(
            0, {"name": "supervisor", "pid": os.getpid(), "started": self.began, "command": "convox rack start"}
        )
        path = self.run_dir / "processes.json"
        await asyncio.to_thread(self._replace, path, json.dumps(entries))

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    async def ready(self, child: Child, within: float = READY_SECONDS) -> None:
        """Wait until the child answers ``GET /check``."""
        if child.socket is not None:
            transport = httpx.AsyncHTTPTransport(uds=str(child.socket))
            base = f"http://{child.name}"
        else:
            transport = httpx.AsyncHTTPTransport()
            base = self.url
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(transport=transport, base_url=base, timeout=2.0) as client:
            while True:
                with contextlib.suppress(httpx.TransportError, OSError):
                    response = await client.get("/check", headers={INTERNAL_HEADER: self.secret})
                    if response.status_code == 200:
                        return
                if child.process is not None and child.process.returncode is not None:
                    raise RuntimeError(f"{child.name} exited with code {child.process.returncode} at start")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} did not answer within {within:.0f}s")
                await asyncio.sleep(0.05)

    async def watch(self, child: Child) -> None:
        """Restart ``child`` whenever it dies, until the rack stops."""
        while not self.stopping.is_set():
            assert child.process is not None
            code = await child.process.wait()
            await asyncio.gather(*child.pumps, return_exceptions=True)
            if self.stopping.is_set():
                return
            if time.time() - child.started > STABLE_AFTER:
                child.restarts = 0
            delay = RESTART_DELAYS[min(child.restarts, len(RESTART_DELAYS) - 1)]
            child.restarts += 1
            self.note("exit", service=child.name, code=code, restart_in=delay)
            await self.write_processes()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            await self.spawn(child)
            self.note("restart", service=child.name, pid=child.process.pid, attempt=child.restarts)

    async def stop_children(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.returncode is None]
        for child in reversed(running):  # the gateway first
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for child in running:
            assert child.process is not None
            try:
                await asyncio.wait_for(child.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
            self.note("stopped", service=child.name, code=child.process.returncode)

    async def run(self, on_ready: object = None) -> int:
        self.began = time.time()
        os.umask(0o077)  # what the rack and its services write is its user's alone (inherited by the services)
        for directory in (self.data_dir, self.run_dir, self.log_path.parent):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)  # also when it was there before, made by hand or by an older rack
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        writer = asyncio.create_task(self.write_log())
        watchers: list[asyncio.Task[None]] = []
        code = 0
        try:
            for child in self.children[:-1]:
                await self.spawn(child)
            await asyncio.gather(*(self.ready(c) for c in self.children[:-1]))
            gateway = self.children[-1]
            await self.spawn(gateway)
            await self.ready(gateway)
            watchers = [asyncio.create_task(self.watch(c)) for c in self.children]
            self.note("ready", url=self.url)
            if callable(on_ready):
                on_ready()
            await self.stopping.wait()
        except RuntimeError as exc:
            self.note("failed", message=str(exc))
            code = 1
        finally:
            self.stopping.set()
            for task in watchers:
                task.cancel()
            await self.stop_children()
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / "processes.json").unlink()
            await self.lines.put(None)  # the writer's last batch
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), 5)
            writer.cancel()
            await asyncio.gather(writer, *watchers, return_exceptions=True)
        return code
