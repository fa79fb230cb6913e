"""Exec throughput: `convox exec PID dd` of 512 MiB to the client against `docker exec` of it (issue #4)."""

from __future__ import annotations

from bench import timing
from bench.cases.processes_app import deployed
from bench.context import Context
from bench.result import Result, Target

SIZE = 512 * 1024 * 1024
TARGET = Target.ratio_above(1.0)


def run(ctx: Context) -> Result:
    app = deployed(ctx)
    dd = ["dd", "if=/dev/zero", "bs=1M", "count=512"]
    convox = [str(ctx.convox), "exec", "--app", app.app, app.pid, *dd]
    docker = [ctx.docker, "exec", app.pid, *dd]

    def sampler(argv: list[str]) -> timing.Sampler:
        return lambda: SIZE / timing.time_command(argv, env=app.env, timeout=300)

    ours, theirs = timing.interleave(sampler(convox), sampler(docker), repeat=ctx.repetitions(5), warmup=ctx.warmups(1))
    return Result(
        title="convox exec / docker exec: dd of 512 MiB to the client's stdout (/dev/null), no TTY",
        unit="B/s",
        convox=ours,
        docker=theirs,
        target=TARGET,
        details={"convox": convox, "docker": docker, "bytes": SIZE},
    )
