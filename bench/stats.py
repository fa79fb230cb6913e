"""Samples and their summary: median and p90."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """The samples of one side of a case, in the case's unit (seconds for durations)."""

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("no samples")

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        """The 90th percentile (inclusive method, so it lies within the samples' range)."""
        if len(self.samples) == 1:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]

    def to_dict(self) -> dict[str, object]:
        return {
            "n": len(self.samples),
            "median": self.median,
            "p90": self.p90,
            "min": min(self.samples),
            "max": max(self.samples),
            "samples": list(self.samples),
        }
