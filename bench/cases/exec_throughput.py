"""Exec throughput: `convox exec PID dd` of 512 MiB to the client against `docker exec` of it (issue #4)."""

from __future__ import annotations

from bench import cpu, timing
from bench.cases.processes_app import deployed
from bench.context import Context
from bench.result import Result, Target

SIZE = 512 * 1024 * 1024
GIB = 1024**3
TARGET = Target.ratio_above(0.9)


def run(ctx: Context) -> Result:
    app = deployed(ctx)
    rack_pid = ctx.rack().process.pid
    dd = ["dd", "if=/dev/zero", "bs=1M", "count=512"]
    convox = [str(ctx.convox), "exec", "--app", app.app, app.pid, *dd]
    docker = [ctx.docker, "exec", app.pid, *dd]
    cpu_per_gib: list[float] = []
    by_process: dict[str, list[float]] = {}

    def ours() -> float:
        elapsed, seconds = cpu.measured_command(convox, rack_pid, env=app.env, by_process=by_process)
        cpu_per_gib.append(seconds * GIB / SIZE)
        return SIZE / elapsed

    def theirs() -> float:
        return SIZE / timing.time_command(docker, env=app.env, timeout=300)

    mine, docker_side = timing.interleave(ours, theirs, repeat=ctx.repetitions(5), warmup=ctx.warmups(1))
    return Result(
        title="convox exec / docker exec: dd of 512 MiB to the client's stdout (/dev/null), no TTY",
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
