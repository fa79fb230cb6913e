"""Logs (issue #5): lines per second through `convox logs` against `docker logs -f` on the same container, and
write-to-print latency (p50, p99), both followers running side by side on the same lines.

One process of an app (a container with the rack's labels, Docker's ``local`` log driver as the rack's own
processes use) writes; `convox logs --app APP` and `docker logs -f` follow it at the same time, each line
time-stamped when it is read from the follower's stdout. Throughput: a round writes a burst of lines
(`yes | head`), a side's rate is the burst over the time from its first line of the round to its last.
Latency: a line every 20 ms; a line's latency is when the follower printed it minus Docker's timestamp of it
(when the Engine read it from the process), both sides parsing the timestamp they print.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial

from bench import timing
from bench.context import Context
from bench.result import Result, Target
from bench.stats import Stats

RACK = "bench"
"""The name the shared bench rack runs under (its containers carry ``convox.rack=bench``)."""
APP = "benchlogs"
BURST = 50_000
THROUGHPUT_TARGET = Target.ratio_above(1.0)
"""convox at least docker's lines per second (issue #14)."""
P50_ABOVE_DOCKER = 0.0003
"""convox's median write-to-print latency at most 0.3 ms above docker's (issue #14)."""
BURST_SCRIPT = (
    f"n=0; while true; do if [ -f /go ]; then rm /go; n=$((n+1)); yes r$n | head -n {BURST}; fi; usleep 10000; done"
)
"""A process that writes a burst of ``BURST`` lines tagged ``rN`` (its N-th) each time ``/go`` appears."""
TICK_SCRIPT = "i=0; while true; do echo tick-$i; i=$((i+1)); usleep 20000; done"
"""A process that writes a line every 20 ms (the latency case's)."""
P99_ABOVE_DOCKER = 0.005
"""convox's p99 at most 5 ms above docker's (issue #14; in the details, the row is the median's)."""


class Reader:
    """A follower subprocess, its stdout read in blocks (each stamped with the time it was read: a line's time
    is its block's). The measuring must not load the machine it measures: a line is never looked at one by one
    in Python but for the few the latency case asks for; each round's lines are counted as they come."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(  # a group of its own: a pipeline's every process goes with it
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True
        )
        self.blocks: list[tuple[float, bytes]] = []
        """Whole lines, as they came, with the time they were read."""
        self.counts: collections.Counter[bytes] = collections.Counter()
        """Lines by their last word (a round's tag)."""
        self.first: dict[bytes, float] = {}
        self.last: dict[bytes, float] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        partial = b""
        while block := os.read(fd, 1 << 16):
            when = time.time()
            whole, newline, partial = (partial + block).rpartition(b"\n")
            if not newline:
                partial = whole
                continue
            self.blocks.append((when, whole + newline))
            tags = collections.Counter(line.rpartition(b" ")[2] for line in whole.split(b"\n"))
            for tag in tags:
                self.first.setdefault(tag, when)
                self.last[tag] = when
            self.counts.update(tags)

    def rate(self, tag: bytes) -> float:
        """Lines per second of a round: its lines over the time from its first to its last."""
        return (self.counts[tag] - 1) / max(self.last[tag] - self.first[tag], 1e-6)

    def lines(self, marker: bytes) -> list[tuple[float, bytes]]:
        """The lines read so far that hold ``marker``, with their times."""
        return [
            (when, line)
            for when, block in list(self.blocks)
            if marker in block
            for line in block.split(b"\n")
            if marker in line
        ]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def followed(ctx: Context, script: str) -> Iterator[tuple[str, Reader, Reader]]:
    """A process of the bench app running ``script``, followed by `convox logs` and `docker logs -f`."""
    from tests.images import ensure_busybox_image

    env = ctx.rack().env()
    subprocess.run([str(ctx.convox), "apps", "create", APP], env=env, capture_output=True, check=False)
    labels = [f"convox.rack={RACK}", f"convox.app={APP}", "convox.type=bench", "convox.release=RBENCHLOGSX"]
    argv = [ctx.docker, "run", "-d", "--init", "--log-driver", "local"]
    for label in labels:
        argv += ["--label", label]
    container = timing.run([*argv, ensure_busybox_image(), "sh", "-c", script], env=env).stdout.decode().strip()
    convox = Reader([str(ctx.convox), "logs", "--app", APP, "--since", "1s"], env)
    docker = Reader([ctx.docker, "logs", "-f", "-t", "--since", "1s", container], env)
    try:
        yield container, convox, docker
    finally:
        convox.close()
        docker.close()
        subprocess.run([ctx.docker, "rm", "-f", container], capture_output=True, check=False)
        subprocess.run([str(ctx.convox), "apps", "delete", APP], env=env, capture_output=True, check=False)


def wait_for(done: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not seen within {within:.0f}s")
        time.sleep(0.01)


def wait_for_round(reader: Reader, tag: bytes, what: str) -> None:
    """Until ``reader`` has read the whole burst tagged ``tag``."""
    wait_for(partial(lambda reader, tag: reader.counts[tag] >= BURST, reader, tag), 120, what)


def throughput(ctx: Context) -> Result:
    ours: list[float] = []
    theirs: list[float] = []
    rounds = ctx.warmups(1) + ctx.repetitions(5)
    with followed(ctx, BURST_SCRIPT) as (container, convox, docker):
        time.sleep(2)  # both followers attached
        for number in range(1, rounds + 1):
            tag = f"r{number}".encode()
            timing.run([ctx.docker, "exec", container, "touch", "/go"])
            for reader, name in ((convox, "convox logs"), (docker, "docker logs -f")):
                wait_for_round(reader, tag, f"{name}: round {number}")
            if number > ctx.warmups(1):
                ours.append(convox.rate(tag))
                theirs.append(docker.rate(tag))
    return Result(
        title=f"convox logs / docker logs -f, lines per second (bursts of {BURST:,} lines)",
        unit="ops/s",
        convox=Stats(tuple(ours)),
        docker=Stats(tuple(theirs)),
        target=THROUGHPUT_TARGET,
        details={"burst": BURST, "rounds": len(ours), "unit": "lines/s"},
    )


def _stamp(line: bytes) -> float | None:
    text = line.split(b" ", 1)[0].decode("ascii", "replace")
    if not text.endswith("Z") or "." not in text:
        return None
    whole, fraction = text[:-1].split(".", 1)
    try:
        return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + fraction)
    except ValueError:
        return None


def latencies(reader: Reader, marker: bytes) -> list[float]:
    found = []
    for when, line in reader.lines(marker):
        if (stamp := _stamp(line)) is not None:
            found.append(when - stamp)
    return found


def latency(ctx: Context) -> Result:
    count = ctx.repetitions(300)
    warm = ctx.warmups(20)
    with followed(ctx, TICK_SCRIPT) as (_, convox, docker):
        wait_for(lambda: len(latencies(convox, b"tick-")) >= warm + count, 60 + count * 0.1, "convox logs: ticks")
        wait_for(lambda: len(latencies(docker, b"tick-")) >= warm + count, 30, "docker logs -f: ticks")
        ours = latencies(convox, b"tick-")[warm : warm + count]
        theirs = latencies(docker, b"tick-")[warm : warm + count]

    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[98]

    return Result(
        title="convox logs / docker logs -f, write-to-print latency (one line every 20 ms)",
        unit="s",
        convox=Stats(tuple(ours)),
        docker=Stats(tuple(theirs)),
        target=Target.below(statistics.median(theirs) + P50_ABOVE_DOCKER),
        details={
            "lines": count,
            "convox_p50": statistics.median(ours),
            "convox_p99": p99(ours),
            "docker_p50": statistics.median(theirs),
            "docker_p99": p99(theirs),
            "p99_ratio": p99(ours) / p99(theirs) if p99(theirs) else None,
            "p99_goal_met": p99(ours) <= p99(theirs) + P99_ABOVE_DOCKER,
        },
    )
