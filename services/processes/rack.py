"""The rack's own processes (`convox rack ps`, `convox ps --app convox`): the supervisor and the services it
runs, from ``DATA/run/processes.json``, with CPU and MEM measured like an app's (fractions; CPU 1.0 is one
full core, as ``docker stats`` counts it; MEM of the host's memory)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from fastapi import APIRouter, Request

from shared import __version__
from shared.config import RackSettings
from shared.models import RACK_APP, Process

router = APIRouter()

FRESH_SAMPLE = 0.25
"""Seconds between two samples when there is no recent one to compare with."""
STALE_AFTER = 10.0
"""A previous sample older than this is not compared with (the figure would be an average over too long)."""


@dataclass(frozen=True)
class Entry:
    name: str
    pid: int
    started: float
    command: str


def read_entries(path: Path) -> list[Entry]:
    try:
        data: Any = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    entries = []
    for item in data if isinstance(data, list) else []:
        try:
            entries.append(Entry(str(item["name"]), int(item["pid"]), float(item["started"]), str(item["command"])))
        except (KeyError, TypeError, ValueError):
            continue
    return entries


@dataclass
class Reading:
    created: float
    cpu_seconds: float
    at: float
    rss: int


def _read(pid: int) -> Reading | None:
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            times = process.cpu_times()
            return Reading(
                process.create_time(), times.user + times.system, time.monotonic(), process.memory_info().rss
            )
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


class Sampler:
    """CPU from the difference of two readings of a process's CPU time: the previous request's when it is
    recent, else two readings a quarter of a second apart."""

    def __init__(self) -> None:
        self.previous: dict[int, Reading] = {}
        self.lock = threading.Lock()

    def sample(self, entries: list[Entry]) -> list[Process]:
        with self.lock:
            total = psutil.virtual_memory().total or 1
            now = {entry.pid: _read(entry.pid) for entry in entries}
            stale = {
                pid: reading
                for pid, reading in now.items()
                if reading is not None
                and (
                    (before := self.previous.get(pid)) is None
                    or before.created != reading.created
                    or not 0.05 <= reading.at - before.at <= STALE_AFTER
                )
            }
            if stale:
                self.previous.update(stale)
                time.sleep(FRESH_SAMPLE)
                now.update({pid: _read(pid) for pid in stale})
            processes = []
            for entry in entries:
                reading = now.get(entry.pid)
                before = self.previous.get(entry.pid)
                if reading is None:
                    continue
                cpu = 0.0
                if before is not None and before.created == reading.created and reading.at > before.at:
                    cpu = max(0.0, (reading.cpu_seconds - before.cpu_seconds) / (reading.at - before.at))
                processes.append(
                    Process(
                        id=str(entry.pid),
                        app=RACK_APP,
                        name=entry.name,
                        release=__version__,
                        command=entry.command,
                        host="127.0.0.1",
                        cpu=round(cpu, 4),
                        memory=round(reading.rss / total, 4),
                        started=datetime.fromtimestamp(entry.started, UTC),
                    )
                )
            self.previous = {pid: reading for pid, reading in now.items() if reading is not None}
            return processes


sampler = Sampler()


@router.get(
    "/system/processes",
    name="system_processes",
    tags=["system"],
    summary="List the rack's own processes with CPU and MEM",
    description=(
        "The supervisor and the rack's services (`convox rack ps`). `id` is the OS pid; `cpu` and `memory` "
        "are fractions, as for an app's processes (cpu 1.0 = one full core; memory of the host's)."
    ),
)
async def system_processes(request: Request) -> list[Process]:
    settings: RackSettings = request.app.state.settings
    entries = await asyncio.to_thread(read_entries, settings.run_dir / "processes.json")
    return await asyncio.to_thread(sampler.sample, entries)
