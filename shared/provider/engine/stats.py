"""CPU and memory of containers, computed as ``docker stats`` computes them, from samples kept in the background.

``GET /containers/{id}/stats?stream=false`` waits about a second for two ticks; with ``one-shot=true`` (API
1.41) it answers at once but without the previous tick, so the CPU figure comes from this module's own
previous sample: ``cpu = Δcontainer_usage / Δsystem_usage * online_cpus`` (a fraction: 1.0 is one whole
CPU, as docker's 100%). Memory is ``usage - inactive_file`` (cgroup v1 ``total_inactive_file``, v2
``inactive_file``) over the limit (the host's memory when the container has none).

Samples are read from the containers' cgroups when this host has them (the engine is local: what the engine
reads for ``docker stats``, without waiting for its collector's next tick, which one-shot stats do on
engines before 23), else from the engine's one-shot stats: always so for a remote engine (a container
instance's, over TLS), whose containers' cgroups are not this host's.

A listing asks :meth:`Sampler.figures` for the containers it shows. Those seen before are answered from
memory at once; new ones get two quick samples (concurrently, :data:`FIRST_GAP` apart). Every container asked
about stays sampled once per :data:`INTERVAL` for :data:`LINGER` seconds, by one background task that stops
when nobody asks any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import NotFound, RackError
from shared.provider.engine.docker import Engine

INTERVAL = 1.0
LINGER = 120.0
FIRST_GAP = 0.2
MIN_GAP = 0.1
"""Samples closer than this to the previous one are dropped: too short an interval for a CPU figure."""
STALE = 3 * INTERVAL


@dataclass(frozen=True)
class Sample:
    at: float
    cpu: int
    system: int
    online: int
    memory: int
    limit: int


def parse(stats: Mapping[str, Any], at: float) -> Sample | None:
    """One sample from the engine's stats document (``None`` for a container that is not running)."""
    cpu_stats = stats.get("cpu_stats") or {}
    usage = cpu_stats.get("cpu_usage") or {}
    memory = stats.get("memory_stats") or {}
    if "usage" not in memory or "total_usage" not in usage:
        return None
    detail = memory.get("stats") or {}
    used = int(memory["usage"])
    inactive = detail.get("total_inactive_file", detail.get("inactive_file"))
    if isinstance(inactive, int) and inactive < used:
        used -= inactive
    online = cpu_stats.get("online_cpus") or len(usage.get("percpu_usage") or []) or 1
    return Sample(
        at=at,
        cpu=int(usage["total_usage"]),
        system=int(cpu_stats.get("system_cpu_usage") or 0),
        online=int(online),
        memory=used,
        limit=int(memory.get("limit") or 0),
    )


def cpu_fraction(previous: Sample | None, current: Sample) -> float:
    if previous is None:
        return 0.0
    cpu_delta = current.cpu - previous.cpu
    system_delta = current.system - previous.system
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * current.online


def memory_fraction(current: Sample) -> float:
    return current.memory / current.limit if current.limit > 0 else 0.0


class Cgroups:
    """Samples read from this host's cgroup files (v1 or v2, cgroupfs or systemd driver)."""

    def __init__(self, root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> None:
        self.root = root
        self.proc = proc
        self.paths: dict[str, tuple[Path, Path, bool] | None] = {}
        self.online = os.sysconf("SC_NPROCESSORS_ONLN")
        self.tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        self.total = self._memory_total()

    def _memory_total(self) -> int:
        try:
            for line in (self.proc / "meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def _find(self, container_id: str) -> tuple[Path, Path, bool] | None:
        """(cpu file, memory dir, cgroup v2) for the container, if this host shows its cgroup."""
        if container_id not in self.paths:
            found = None
            for scope in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
                v1_cpu = self.root / "cpuacct" / scope / "cpuacct.usage"
                if v1_cpu.exists():
                    found = (v1_cpu, self.root / "memory" / scope, False)
                    break
                v2 = self.root / scope
                if (v2 / "cpu.stat").exists():
                    found = (v2 / "cpu.stat", v2, True)
                    break
            self.paths[container_id] = found
        return self.paths[container_id]

    def _system(self) -> int:
        """The host's CPU time in nanoseconds, as the engine counts it (the first 8 fields of ``cpu``)."""
        with (self.proc / "stat").open() as handle:
            fields = handle.readline().split()[1:9]
        return sum(int(v) for v in fields) * self.tick

    def read(self, container_ids: list[str]) -> dict[str, Sample | None]:
        """A sample per container (``None``: not readable here, ask the engine). Blocking: call in a thread."""
        found: dict[str, Sample | None] = {}
        try:
            system = self._system()
        except (OSError, ValueError):
            return dict.fromkeys(container_ids)
        for container_id in container_ids:
            paths = self._find(container_id)
            try:
                found[container_id] = self._sample(paths, system) if paths else None
            except (OSError, ValueError, KeyError):
                self.paths.pop(container_id, None)
                found[container_id] = None
        return found

    def _sample(self, paths: tuple[Path, Path, bool], system: int) -> Sample:
        cpu_file, memory_dir, v2 = paths
        stat = dict(line.split() for line in (memory_dir / "memory.stat").read_text().splitlines() if " " in line)
        if v2:
            cpu = dict(line.split() for line in cpu_file.read_text().splitlines())
            usage = int(cpu["usage_usec"]) * 1000
            used = int((memory_dir / "memory.current").read_text())
            inactive = int(stat.get("inactive_file", 0))
            raw_limit = (memory_dir / "memory.max").read_text().strip()
            limit = int(raw_limit) if raw_limit.isdigit() else 0
        else:
            usage = int(cpu_file.read_text())
            used = int((memory_dir / "memory.usage_in_bytes").read_text())
            inactive = int(stat.get("total_inactive_file", 0))
            limit = int((memory_dir / "memory.limit_in_bytes").read_text())
        if inactive < used:
            used -= inactive
        if self.total and (limit <= 0 or limit > self.total):
            limit = self.total
        return Sample(at=time.monotonic(), cpu=usage, system=system, online=self.online, memory=used, limit=limit)


class Sampler:
    def __init__(
        self,
        docker: Engine,
        interval: float = INTERVAL,
        linger: float = LINGER,
        cgroups: Cgroups | None = None,
        local: bool = True,
    ) -> None:
        self.docker = docker
        self.cgroups: Cgroups | None = (cgroups or Cgroups()) if local else None
        """None: every sample from the engine (it is not this host's)."""
        self.interval = interval
        self.linger = linger
        self.samples: dict[str, tuple[Sample | None, Sample]] = {}
        self.wanted: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None

    async def _sample_one(self, container_id: str) -> None:
        try:
            stats = await self.docker.stats_once(container_id)
        except NotFound:
            self.samples.pop(container_id, None)
            self.wanted.pop(container_id, None)
            return
        except RackError:  # any other answer, or none (an engine that is gone): no sample this time
            return
        self._keep(container_id, parse(stats, time.monotonic()))

    def _keep(self, container_id: str, sample: Sample | None) -> None:
        if sample is None:
            return
        last = self.samples.get(container_id)
        if last is not None and sample.at - last[1].at < MIN_GAP:
            return
        self.samples[container_id] = (last[1] if last else None, sample)

    async def _sample(self, ids: list[str]) -> None:
        if not ids:
            return
        read = await asyncio.to_thread(self.cgroups.read, ids) if self.cgroups else dict.fromkeys(ids)
        for container_id, sample in read.items():
            self._keep(container_id, sample)
        await asyncio.gather(*(self._sample_one(i) for i, sample in read.items() if sample is None))

    def _fresh(self, container_id: str, now: float) -> bool:
        pair = self.samples.get(container_id)
        return pair is not None and pair[0] is not None and now - pair[1].at < STALE

    async def figures(self, ids: list[str]) -> dict[str, tuple[float, float]]:
        """``{id: (cpu, memory)}`` for the running containers among ``ids``."""
        now = time.monotonic()
        for container_id in ids:
            self.wanted[container_id] = now + self.linger
        missing = [i for i in ids if not self._fresh(i, now)]
        if missing:
            for container_id in missing:  # a stale pair must not be taken for a fresh interval
                if container_id in self.samples and now - self.samples[container_id][1].at >= STALE:
                    del self.samples[container_id]
            await self._sample(missing)
            await asyncio.sleep(FIRST_GAP)
            await self._sample(missing)
        self._ensure_running()
        found = {}
        for container_id in ids:
            pair = self.samples.get(container_id)
            if pair is not None:
                found[container_id] = (cpu_fraction(*pair), memory_fraction(pair[1]))
        return found

    def _ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="stats-sampler")

    async def _run(self) -> None:
        while self.wanted:
            started = time.monotonic()
            for container_id, until in list(self.wanted.items()):
                if until < started:
                    del self.wanted[container_id]
                    self.samples.pop(container_id, None)
                    if self.cgroups:
                        self.cgroups.paths.pop(container_id, None)
            await self._sample(list(self.wanted))
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
