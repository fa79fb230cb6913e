"""Idle memory: a fresh rack's processes (supervisor, gateway, five services) against the Docker Engine's own.

The judged figure is the issue's: the sum of the processes' RSS (issue #14: at most 300 MiB). RSS counts a
page shared by several processes (libpython, the C libraries, a page inherited from a fork) once in every
process, so the sum overstates what the rack takes from the machine; the details also give the sum of USS
(the pages only that process maps: what is freed when it exits) and of PSS (each shared page split among
its sharers: the honest total), and each process's three figures. The docker side is the engine the rack
runs on, idle too: dockerd and containerd (their RSS; not the shims, one per container).
"""

from __future__ import annotations

import time

import psutil

from bench.context import Context
from bench.rack import throwaway_rack
from bench.result import Result, Target
from bench.stats import Stats

MIB = 1 << 20
TARGET = Target.below(300 * MIB)
SETTLE_SECONDS = 3.0
"""After `/check` answers: the services' start-up hooks finish and nothing else is asked of the rack."""
ENGINE = ("dockerd", "containerd")


def rack_processes(pid: int, data_dir: str) -> list[psutil.Process]:
    """The supervisor, its children, and any process of this rack that is not its child (the balancer
    daemon, detached so that it outlives a restart, when the rack has started it): named by the data dir."""
    root = psutil.Process(pid)
    found = [root, *root.children(recursive=True)]
    pids = {p.pid for p in found}
    for process in psutil.process_iter(["cmdline"]):
        if process.pid not in pids and data_dir in " ".join(process.info["cmdline"] or ()):
            found.append(process)
    return found


def measure(processes: list[psutil.Process]) -> dict[str, dict[str, float]]:
    """Each process's rss, uss and pss in bytes, by a name from its command line."""
    figures: dict[str, dict[str, float]] = {}
    for process in processes:
        argv = process.cmdline()
        name = argv[argv.index("-m") + 1] if "-m" in argv else " ".join(argv[:3])
        memory = process.memory_full_info()
        figures[name] = {"rss": memory.rss, "uss": memory.uss, "pss": memory.pss}
    return figures


def engine_rss() -> float:
    found = [p for p in psutil.process_iter(["name"]) if p.info["name"] in ENGINE]
    if not found:
        raise RuntimeError(f"no {' or '.join(ENGINE)} process visible here: is the Docker Engine on this machine?")
    return float(sum(p.memory_info().rss for p in found))


def run(ctx: Context) -> Result:
    rounds = ctx.repetitions(5)
    with throwaway_rack(ctx.convox, name="benchidle") as rack:
        time.sleep(SETTLE_SECONDS)
        processes = rack_processes(rack.process.pid, str(rack.data_dir))
        if len(processes) < 7:
            raise RuntimeError(f"the rack has {len(processes)} processes, 7 at least expected")
        ours: list[float] = []
        theirs: list[float] = []
        last: dict[str, dict[str, float]] = {}
        for _ in range(rounds):
            last = measure(processes)
            ours.append(sum(f["rss"] for f in last.values()))
            theirs.append(engine_rss())
            time.sleep(0.5)
    sums = {kind: round(sum(f[kind] for f in last.values()) / MIB, 1) for kind in ("rss", "uss", "pss")}
    per_process = {name: {k: round(v / MIB, 1) for k, v in f.items()} for name, f in last.items()}
    return Result(
        title="idle rack RSS (all its processes) / idle Docker Engine RSS (dockerd + containerd)",
        unit="B",
        convox=Stats(tuple(ours)),
        docker=Stats(tuple(theirs)),
        target=TARGET,
        details={
            "processes": len(last),
            "sum_mib": sums,
            "per_process_mib": per_process,
            "load_average": list(psutil.getloadavg()),
        },
    )
