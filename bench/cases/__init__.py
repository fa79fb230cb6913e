"""The registry of cases: name -> ``"module:function"``, imported only when the case runs.

A case is a module here with a function ``run(ctx: Context) -> Result``; the table lists cases in the
order below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.context import Context
    from bench.result import Result

Case = Callable[["Context"], "Result"]

CASES: dict[str, str] = {
    "version": "bench.cases.version:run",  # issue #2: `convox --version` startup vs `docker --version`
    "deploy": "bench.cases.deploy:run",  # issue #3: `convox deploy` vs `docker build` + `docker run`
    "exec_throughput": "bench.cases.exec_throughput:run",  # issue #4: `convox exec` dd 512 MiB vs `docker exec`
    "exec_stdin": "bench.cases.exec_stdin:run",  # issue #14: 512 MiB piped into `convox exec` vs `docker exec -i`
    "exec_roundtrip": "bench.cases.exec_roundtrip:run",  # issue #4: a byte echoed in a TTY vs `docker exec -it`
    "run_true": "bench.cases.run_true:run",  # issue #4: `convox run web true` vs `docker run --rm`
    "ps_twenty": "bench.cases.ps_twenty:run",  # issue #4: `convox ps` of 20 vs `docker stats --no-stream`
    "logs_throughput": "bench.cases.logs:throughput",  # issue #5: lines/s via `convox logs` vs `docker logs -f`
    "logs_latency": "bench.cases.logs:latency",  # issue #5: write-to-print p50/p99 vs `docker logs -f`
    "idle_rss": "bench.cases.idle_rss:run",  # issue #14: the idle rack's memory vs the idle Docker Engine's
}


def load(name: str) -> Case:
    module_name, _, attr = CASES[name].partition(":")
    case: Case = getattr(importlib.import_module(module_name), attr)
    return case


def describe(name: str) -> str:
    """The first line of the case module's docstring."""
    module = importlib.import_module(CASES[name].partition(":")[0])
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
