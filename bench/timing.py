"""Timing helpers: run a command and time it, and sample two sides interleaved.

Interleaving (and alternating which side goes first) puts both sides under the same load, caches and
CPU frequency, so that their ratio is meaningful even when absolute times drift.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench.stats import Stats

Sampler = Callable[[], float]
"""One measurement of one side: a duration in seconds, or a throughput, in the case's unit."""


class CommandFailed(RuntimeError):
    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-3:]
        super().__init__(f"`{' '.join(argv)}` exited {code}" + (f": {' / '.join(tail)}" if tail else ""))


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion, capturing its output; a non-zero exit raises :class:`CommandFailed`."""
    proc = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        env=None if env is None else dict(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return proc


def time_command(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 120.0
) -> float:
    """Wall-clock seconds from spawn to exit; output goes to /dev/null, stderr is kept for errors."""
    start = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return elapsed


def command_sampler(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 120.0
) -> Sampler:
    """A :data:`Sampler` that times one run of ``argv``."""
    args = list(argv)
    return lambda: time_command(args, env=env, cwd=cwd, timeout=timeout)


def interleave(convox: Sampler, docker: Sampler, *, repeat: int, warmup: int) -> tuple[Stats, Stats]:
    """``warmup`` unrecorded rounds, then ``repeat`` recorded rounds of both sides, alternating which side
    runs first in each round. Returns the convox side's stats and the docker side's."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    for _ in range(warmup):
        convox()
        docker()
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(repeat):
        if i % 2 == 0:
            ours.append(convox())
            theirs.append(docker())
        else:
            theirs.append(docker())
            ours.append(convox())
    return Stats(tuple(ours)), Stats(tuple(theirs))
