"""One-off run: `convox run web true` against `docker run --rm IMAGE true` of the same image (issue #4)."""

from __future__ import annotations

from bench import timing
from bench.cases.processes_app import deployed
from bench.context import Context
from bench.result import Result, Target

TARGET = Target.ratio_below(1.3)


def run(ctx: Context) -> Result:
    app = deployed(ctx)
    convox = [str(ctx.convox), "run", "--app", app.app, "web", "true"]
    docker = [ctx.docker, "run", "--rm", app.image, "true"]
    ours, theirs = timing.interleave(
        timing.command_sampler(convox, env=app.env),
        timing.command_sampler(docker, env=app.env),
        repeat=ctx.repetitions(15),
        warmup=ctx.warmups(2),
    )
    return Result(
        title="convox run web true / docker run --rm IMAGE true (the release's image, until the exit code)",
        unit="s",
        convox=ours,
        docker=theirs,
        target=TARGET,
        details={"convox": convox, "docker": docker},
    )
