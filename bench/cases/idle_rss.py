"""Idle memory: a fresh rack's processes (supervisor, gateway, five services) against the Docker Engine's own.

The judged figure (issue #14: at most 300 MiB) is the rack's resident memory with each page counted once:
the union of its processes' resident physical pages (``/proc/PID/pagemap``; root only), i.e. the RSS of
the rack as one thing. The plain sum of the processes' RSS counts a page shared by several of them
(libpython, libcrypto, pydantic-core's library) once in every process and overstates it; the sum of USS
(pages only that process maps) understates it; the sum of PSS (each shared page split among its sharers)
is close but depends on what else runs on the machine (another rack's processes share libpython's pages
too). All three sums and each process's figures are in the details; without access to the page frames the
RSS sum is judged. The docker side is the engine the rack runs on, idle too: dockerd and containerd (RSS;
not the shims, one per container).
"""

from __future__ import annotations

import resource
import struct
import time

import psutil

from bench.context import Context
from bench.rack import throwaway_rack
from bench.result import Result, Target
from bench.stats import Stats

MIB = 1 << 20
PAGE = resource.getpagesize()
FRAME_MASK = (1 << 55) - 1
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
        argv = " ".join(process.cmdline()).split()  # a forked service's title is one string (see forkserver)
        name = argv[argv.index("-m") + 1] if "-m" in argv else " ".join(argv[:3])
        memory = process.memory_full_info()
        figures[name] = {"rss": memory.rss, "uss": memory.uss, "pss": memory.pss}
    return figures


def resident_pages(pid: int) -> set[int] | None:
    """The physical frames of ``pid``'s resident pages, from ``/proc/PID/pagemap`` (bit 63: present; bits
    0-54: the frame). None when the frames are hidden (reading them needs CAP_SYS_ADMIN: they read as 0)."""
    frames: set[int] = set()
    try:
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for line in maps:
                if line.rstrip().endswith("[vsyscall]"):  # the kernel's page, outside the process's pagemap
                    continue
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                pagemap.seek(start // PAGE * 8)
                data = pagemap.read((end - start) // PAGE * 8)
                for (entry,) in struct.iter_unpack("<Q", data):
                    if entry >> 63:
                        frames.add(entry & FRAME_MASK)
    except OSError:
        return None
    return None if frames == {0} else frames


def footprint(processes: list[psutil.Process]) -> float | None:
    """The bytes of memory the processes hold together, each page once however many of them map it: what
    RSS would be for the rack as one thing (shared libraries counted once, not once per process)."""
    union: set[int] = set()
    for process in processes:
        frames = resident_pages(process.pid)
        if frames is None:
            return None
        union |= frames
    return float(len(union) * PAGE)


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
        together: float | None = None
        for _ in range(rounds):
            last = measure(processes)
            together = footprint(processes)
            ours.append(sum(f["rss"] for f in last.values()) if together is None else together)
            theirs.append(engine_rss())
            time.sleep(0.5)
    sums = {kind: round(sum(f[kind] for f in last.values()) / MIB, 1) for kind in ("rss", "uss", "pss")}
    if together is not None:
        sums["footprint"] = round(together / MIB, 1)
    per_process = {name: {k: round(v / MIB, 1) for k, v in f.items()} for name, f in last.items()}
    return Result(
        title="idle rack resident memory, each page once / idle Docker Engine RSS (dockerd + containerd)",
        unit="B",
        convox=Stats(tuple(ours)),
        docker=Stats(tuple(theirs)),
        target=TARGET,
        details={
            "judged": "rss_sum" if together is None else "footprint",
            "processes": len(last),
            "sum_mib": sums,
            "per_process_mib": per_process,
            "load_average": list(psutil.getloadavg()),
        },
    )
