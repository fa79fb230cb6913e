"""Startup time: `convox --version` against `docker --version` (issue #2; target < 150 ms absolute)."""

from __future__ import annotations

from bench import timing
from bench.context import Context
from bench.result import Result, Target

TARGET = Target.below(0.150)


def run(ctx: Context) -> Result:
    convox = [str(ctx.convox), "--version"]
    docker = [ctx.docker, "--version"]
    printed = timing.run(convox).stdout.decode().strip()
    if not printed.startswith("convox "):
        raise RuntimeError(f"`convox --version` printed {printed!r}")
    ours, theirs = timing.interleave(
        timing.command_sampler(convox),
        timing.command_sampler(docker),
        repeat=ctx.repetitions(40),
        warmup=ctx.warmups(5),
    )
    return Result(
        title="convox --version / docker --version",
        unit="s",
        convox=ours,
        docker=theirs,
        target=TARGET,
        details={
            "convox": convox,
            "docker": docker,
            "printed": printed,
            "docker_printed": timing.run(docker).stdout.decode().strip(),
        },
    )
