"""CPU seconds spent by the rack's processes (the supervisor, the gateway, the services: the tree under
``convox rack start``) and by the CLI, around one command: what issue #14's "CPU per GiB moved" counts."""

from __future__ import annotations

import resource
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence

import psutil

from bench.timing import CommandFailed


def label(process: psutil.Process) -> str:
    """``services.gateway`` for ``python -m services.gateway ...``, else the process's name."""
    try:
        argv = " ".join(process.cmdline()).split()  # a forked service's title is one string (see forkserver)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return process.name()


LABELS: dict[int, str] = {}


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system seconds of ``pid`` and each of its descendants so far, by pid (their labels in
    :data:`LABELS`)."""
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
        if process.pid not in LABELS:
            LABELS[process.pid] = label(process)
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
    by_process: dict[str, list[float]] | None = None,
) -> tuple[float, float]:
    """Run ``argv`` (stdout to /dev/null, stdin from the fd ``stdin`` or /dev/null): its wall-clock seconds,
    and the CPU seconds that the rack's processes and the command itself spent meanwhile (each one's, by
    label, appended to ``by_process``: the command is ``cli``)."""
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
    spent = {pid: seconds - before.get(pid, 0.0) for pid, seconds in after.items()}
    if by_process is not None:
        by_process.setdefault("cli", []).append(cli_after - cli_before)
        for pid, seconds in spent.items():
            by_process.setdefault(LABELS.get(pid, "?"), []).append(seconds)
    return elapsed, sum(spent.values()) + (cli_after - cli_before)


GIB = 1024**3


def per_gib_details(
    cpu_per_gib: Sequence[float], by_process: Mapping[str, Sequence[float]], size: int
) -> dict[str, object]:
    """What a throughput case records of the CPU its run took: seconds per GiB moved, of the rack and the CLI
    together (each run, and their median) and of each process (medians of ``by_process``'s seconds per run)."""
    return {
        "rack_and_cli_cpu_seconds_per_gib": list(cpu_per_gib),
        "rack_and_cli_cpu_seconds_per_gib_median": statistics.median(cpu_per_gib) if cpu_per_gib else None,
        "cpu_seconds_per_gib_by_process": {
            name: round(statistics.median(values) * GIB / size, 3) for name, values in by_process.items() if values
        },
    }
