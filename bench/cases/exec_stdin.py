"""Stdin throughput: 512 MiB piped into `convox exec PID sh -c 'cat > /dev/null'` against `docker exec -i`
(issue #14: what piping into exec and `convox cp` ride on)."""

from __future__ import annotations

import subprocess
import time

from bench import cpu, timing
from bench.cases.processes_app import deployed
from bench.context import Context
from bench.result import Result, Target
from bench.timing import CommandFailed

SIZE = 512 * 1024 * 1024
GIB = 1024**3
TARGET = Target.ratio_above(0.9)
SINK = ["sh", "-c", "cat > /dev/null"]


def piped(
    argv: list[str], rack_pid: int | None, env: dict[str, str], by_process: dict[str, list[float]] | None = None
) -> tuple[float, float]:
    """``head -c 512M /dev/zero | argv``: seconds until ``argv`` exits, and (with ``rack_pid``) the CPU seconds
    of the rack's processes and of ``argv``."""
    head = subprocess.Popen(["head", "-c", str(SIZE), "/dev/zero"], stdout=subprocess.PIPE)
    assert head.stdout is not None
    try:
        if rack_pid is not None:
            return cpu.measured_command(argv, rack_pid, env=env, stdin=head.stdout.fileno(), by_process=by_process)
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            stdin=head.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        return time.perf_counter() - start, 0.0
    finally:
        head.stdout.close()
        head.wait()


def run(ctx: Context) -> Result:
    app = deployed(ctx)
    rack_pid = ctx.rack().process.pid
    convox = [str(ctx.convox), "exec", "--app", app.app, app.pid, *SINK]
    docker = [ctx.docker, "exec", "-i", app.pid, *SINK]
    cpu_per_gib: list[float] = []
    by_process: dict[str, list[float]] = {}

    def ours() -> float:
        elapsed, seconds = piped(convox, rack_pid, app.env, by_process)
        cpu_per_gib.append(seconds * GIB / SIZE)
        return SIZE / elapsed

    def theirs() -> float:
        return SIZE / piped(docker, None, app.env)[0]

    mine, docker_side = timing.interleave(ours, theirs, repeat=ctx.repetitions(5), warmup=ctx.warmups(1))
    return Result(
        title="convox exec / docker exec -i: 512 MiB piped to the process's stdin (cat > /dev/null)",
        unit="B/s",
        convox=mine,
        docker=docker_side,
        target=TARGET,
        details={
            "convox": convox,
            "docker": docker,
            "bytes": SIZE,
            **cpu.per_gib_details(cpu_per_gib, by_process, SIZE),
        },
    )
