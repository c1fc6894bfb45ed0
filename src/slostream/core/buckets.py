"""Buckets: the columns of a stats row, bucket geometry (``bucket_start``, ``Resolution``), and
the readable result over a span (``Aggregate``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .sketch import QuantileSketch

# Columns of a stats row.
COUNT, OK_KNOWN, OK, VALUES, SUM, MIN, MAX = range(7)
N_STATS = 7


def empty_stats() -> np.ndarray:
    row = np.zeros(N_STATS)
    row[MIN], row[MAX] = np.inf, -np.inf
    return row


def merge_stats_into(target: np.ndarray, other: np.ndarray) -> None:
    target[:MIN] += other[:MIN]
    if other[VALUES]:  # a row without values (every count-only SLO row) leaves min and max alone
        target[MIN] = min(target[MIN], other[MIN])
        target[MAX] = max(target[MAX], other[MAX])


def bucket_start(ts: float, width: int) -> int:
    """Start of the bucket of ``width`` seconds that holds event time ``ts``."""
    return int(ts // width) * width


@dataclass(frozen=True)
class Resolution:
    width: int
    slots: int
    sketch_slots: int | None = None  # newest buckets that keep a quantile sketch; None: all

    @property
    def kept_sketches(self) -> int:
        return self.slots if self.sketch_slots is None else self.sketch_slots

    @property
    def retention(self) -> int:
        return self.width * self.slots


DEFAULT_RESOLUTIONS: tuple[Resolution, ...] = (
    Resolution(10, 370, sketch_slots=60),
    Resolution(60, 370),
    Resolution(600, 438, sketch_slots=0),
    Resolution(3600, 744, sketch_slots=0),
    Resolution(86400, 93, sketch_slots=0),
)


def check_resolutions(resolutions: tuple[Resolution, ...]) -> None:
    """Each level's width must divide the next one's, or rollups would straddle buckets."""
    if not resolutions:
        raise ValueError("at least one resolution is required")
    for finer, coarser in itertools.pairwise(resolutions):
        if coarser.width % finer.width or coarser.width <= finer.width:
            raise ValueError(f"width {coarser.width}s is not a multiple of {finer.width}s")
    for res in resolutions:
        if res.width <= 0 or res.slots < 2:
            raise ValueError(f"resolution {res} needs a positive width and at least 2 slots")


@dataclass(frozen=True)
class Aggregate:
    """Readable result over a span [start, end)."""

    start: int
    end: int
    stats: np.ndarray
    sketch: QuantileSketch | None
    calibration: dict | None = None  # ``core.calibration`` statistics, for a window with outcomes

    @property
    def count(self) -> int:
        return int(self.stats[COUNT])

    @property
    def ok(self) -> int:
        return int(self.stats[OK])

    @property
    def errors(self) -> int:
        return int(self.stats[OK_KNOWN] - self.stats[OK])

    @property
    def error_ratio(self) -> float | None:
        known = self.stats[OK_KNOWN]
        return None if known == 0 else float((known - self.stats[OK]) / known)

    @property
    def throughput_per_s(self) -> float:
        return float(self.stats[COUNT]) / (self.end - self.start)

    @property
    def mean(self) -> float | None:
        n = self.stats[VALUES]
        return None if n == 0 else float(self.stats[SUM] / n)

    @property
    def min(self) -> float | None:
        return None if self.stats[VALUES] == 0 else float(self.stats[MIN])

    @property
    def max(self) -> float | None:
        return None if self.stats[VALUES] == 0 else float(self.stats[MAX])

    def quantile(self, q: float) -> float | None:
        """Sketch quantile clamped to the exact min and max seen."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs) -> list[float | None]:
        """``quantile`` of each of ``qs``, in one pass over the sketch."""
        if self.sketch is None or self.stats[VALUES] == 0:
            return [None] * len(qs)
        low, high = float(self.stats[MIN]), float(self.stats[MAX])
        return [min(max(value, low), high) for value in self.sketch.quantiles(qs)]
