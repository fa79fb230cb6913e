"""CPU seconds spent by the rack's processes (the supervisor, the gateway, the services: the tree under
``convox rack start``) and by the CLI, around one command: what issue #14's "CPU per GiB moved" counts."""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Mapping, Sequence

import psutil

from bench.timing import CommandFailed


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system seconds of ``pid`` and each of its descendants so far, by pid."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds: dict[int, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured_command(
    argv: Sequence[str],
    rack_pid: int,
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | None = None,
    timeout: float = 300.0,
) -> tuple[float, float]:
    """Run ``argv`` (stdout to /dev/null, stdin from the fd ``stdin`` or /dev/null): its wall-clock seconds,
    and the CPU seconds that the rack's processes and the command itself spent meanwhile."""
    before, cli_before = tree_cpu(rack_pid), children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - start
    after, cli_after = tree_cpu(rack_pid), children_cpu()
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    rack = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    return elapsed, rack + (cli_after - cli_before)
