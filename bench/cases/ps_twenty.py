"""ps of 20 processes: `convox ps` with CPU and MEM against `docker stats --no-stream` of them (issue #4)."""

from __future__ import annotations

from bench import timing
from bench.cases.processes_app import deployed, scale
from bench.context import Context
from bench.result import Result, Target

TARGET = Target.ratio_below(0.3)
COUNT = 20


def run(ctx: Context) -> Result:
    app = deployed(ctx)
    pids = scale(ctx, app, COUNT)
    try:
        convox = [str(ctx.convox), "ps", "--app", app.app]
        docker = [ctx.docker, "stats", "--no-stream", *pids]
        listed = timing.run(convox, env=app.env).stdout.decode().splitlines()
        if len(listed) != COUNT + 1 or "%" not in listed[1]:
            raise RuntimeError(f"`convox ps` listed {len(listed) - 1} processes: {listed[:3]}")
        ours, theirs = timing.interleave(
            timing.command_sampler(convox, env=app.env),
            timing.command_sampler(docker, env=app.env),
            repeat=ctx.repetitions(10),
            warmup=ctx.warmups(1),
        )
    finally:
        scale(ctx, app, 1)
    return Result(
        title=f"convox ps / docker stats --no-stream, {COUNT} processes with CPU and MEM",
        unit="s",
        convox=ours,
        docker=theirs,
        target=TARGET,
        details={"convox": convox, "docker": [*docker[:3], "..."]},
    )
