"""What a case returns (:class:`Result`), the goal it is judged by (:class:`Target`), and a table row."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from bench.stats import Stats

Unit = Literal["s", "B/s", "ops/s", "B"]


def format_value(value: float, unit: Unit, digits: int = 1) -> str:
    """``0.0152`` s -> ``15.2 ms``; ``digits=0`` for round numbers such as targets."""
    if unit == "s":
        return f"{value * 1000:.{digits}f} ms" if value < 10 else f"{value:.{max(digits, 1)}f} s"
    if unit == "B/s":
        return f"{value / 1e6:.{digits}f} MB/s"
    if unit == "B":
        return f"{value / (1 << 20):.{digits}f} MiB"
    return f"{value:.{digits}f} ops/s"


@dataclass(frozen=True)
class Target:
    """A goal on the convox side's median (``absolute``) or on the ratio convox/docker (``ratio``).

    ``higher_is_better`` is for throughputs: then the value must reach ``limit`` instead of stay below it.
    """

    on: Literal["absolute", "ratio"]
    limit: float
    higher_is_better: bool = False

    @classmethod
    def below(cls, limit: float) -> Target:
        """The convox median under ``limit`` (in the case's unit), whatever Docker does."""
        return cls("absolute", limit)

    @classmethod
    def above(cls, limit: float) -> Target:
        return cls("absolute", limit, higher_is_better=True)

    @classmethod
    def ratio_below(cls, limit: float) -> Target:
        """convox/docker at most ``limit`` (durations: convox no more than ``limit`` times slower)."""
        return cls("ratio", limit)

    @classmethod
    def ratio_above(cls, limit: float) -> Target:
        """convox/docker at least ``limit`` (throughputs: convox at least ``limit`` of Docker's)."""
        return cls("ratio", limit, higher_is_better=True)

    def describe(self, unit: Unit) -> str:
        sign = "≥" if self.higher_is_better else "<"
        if self.on == "ratio":
            return f"ratio {sign} {self.limit:g}x"
        whole = format_value(self.limit, unit, digits=0)
        tenths = format_value(self.limit, unit, digits=1)
        return f"{sign} {whole if tenths.replace('.0 ', ' ') == whole else tenths}"  # 150 ms, but 0.7 ms

    def met(self, convox_median: float, ratio: float) -> bool:
        value = ratio if self.on == "ratio" else convox_median
        return value >= self.limit if self.higher_is_better else value < self.limit


@dataclass(frozen=True)
class Result:
    """One case's measurements: both sides' samples, in one unit, and the target to judge them by."""

    title: str
    unit: Unit
    convox: Stats
    docker: Stats
    target: Target
    details: dict[str, object] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """convox/docker, of the medians."""
        return self.convox.median / self.docker.median if self.docker.median else math.inf

    @property
    def passed(self) -> bool:
        return self.target.met(self.convox.median, self.ratio)


@dataclass(frozen=True)
class Row:
    """A case's line in the report: its result, or why it has none."""

    case: str
    result: Result | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.passed

    def to_dict(self) -> dict[str, object]:
        if self.result is None:
            return {"case": self.case, "status": "error", "error": self.error}
        r = self.result
        return {
            "case": self.case,
            "title": r.title,
            "status": "pass" if r.passed else "fail",
            "unit": r.unit,
            "ratio": r.ratio,
            "target": {
                "on": r.target.on,
                "limit": r.target.limit,
                "higher_is_better": r.target.higher_is_better,
                "text": r.target.describe(r.unit),
            },
            "convox": r.convox.to_dict(),
            "docker": r.docker.to_dict(),
            "details": r.details,
        }
