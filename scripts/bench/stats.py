"""Median and spread of repeated measurements, and percentiles of latency samples."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Figure:
    """One benchmark figure over repeated runs."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def low(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def high(self) -> float:
        return max(self.samples) if self.samples else math.nan

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent: how much the repeats disagree."""
        m = self.median
        if not self.samples or m == 0 or math.isnan(m):
            return math.nan
        return (self.high - self.low) / abs(m) * 100.0

    def fmt(self, digits: int = 1) -> str:
        if not self.samples:
            return "n/a"
        if len(self.samples) == 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} (±{self.spread_pct:.0f} %, n={len(self.samples)})"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]
