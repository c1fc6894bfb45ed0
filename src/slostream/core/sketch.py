"""Mergeable relative-error quantile sketch with vectorised inserts.

The bin layout and the quantile rule are DDSketch's (``ddsketch.LogarithmicMapping``
and ``BaseDDSketch.get_quantile_value``); bins live in dense numpy arrays so a
whole batch is inserted with one ``np.unique`` instead of one Python call per
value, and the state is compact enough to keep one sketch per window bucket.

>>> s = QuantileSketch()
>>> s.add_values(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
>>> s.count
5.0
>>> round(s.quantile(0.5), 1)
3.0
"""

from __future__ import annotations

import functools

import numpy as np
from ddsketch.mapping import LogarithmicMapping

STATE_VERSION = 1


class _DenseBins:
    """Counts for a contiguous key range; collapses the lowest keys past ``max_bins``."""

    __slots__ = ("offset", "counts")

    def __init__(self, offset: int = 0, counts: np.ndarray | None = None):
        self.offset = offset
        self.counts = counts

    @property
    def total(self) -> float:
        return 0.0 if self.counts is None else float(self.counts.sum())

    def add(self, keys: np.ndarray, weights: np.ndarray | None, max_bins: int) -> None:
        """Add ``weights`` (None: one each) at ``keys``; the lowest bins collapse beyond ``max_bins``.
        Counting is a bincount over the covered range: no sort, whatever the order of ``keys``."""
        lo, hi = int(keys.min()), int(keys.max())
        if self.counts is not None:
            lo = min(lo, self.offset)
            hi = max(hi, self.offset + len(self.counts) - 1)
        if hi - lo + 1 > max_bins:
            lo = hi - max_bins + 1
            keys = np.maximum(keys, lo)
        size = hi - lo + 1
        if self.counts is None:
            grown = np.zeros(size)
        elif lo != self.offset or size != len(self.counts):
            old_keys = np.arange(self.offset, self.offset + len(self.counts))
            grown = np.bincount(np.maximum(old_keys, lo) - lo, weights=self.counts, minlength=size)
        else:
            grown = self.counts
        grown += np.bincount(keys - lo, weights=weights, minlength=size)
        self.offset, self.counts = lo, grown

    def key_at_rank(self, rank: float, lower: bool) -> int:
        cumulative = np.cumsum(self.counts)
        if lower:
            index = int(np.searchsorted(cumulative, rank, side="right"))
        else:
            index = int(np.searchsorted(cumulative, rank + 1, side="left"))
        return self.offset + min(index, len(self.counts) - 1)

    def to_state(self) -> list | None:
        if self.counts is None:
            return None
        return [self.offset, self.counts.tolist()]

    @classmethod
    def from_state(cls, state: list | None) -> "_DenseBins":
        if state is None:
            return cls()
        return cls(int(state[0]), np.asarray(state[1], dtype=np.float64))

    def nbytes(self) -> int:
        return 0 if self.counts is None else self.counts.nbytes


class QuantileSketch:
    """DDSketch-compatible sketch: relative accuracy ``relative_accuracy`` on every quantile."""

    __slots__ = ("relative_accuracy", "max_bins", "_mapping", "_positive", "_negative", "zero_count")

    def __init__(self, relative_accuracy: float = 0.01, max_bins: int = 2048):
        self.relative_accuracy = relative_accuracy
        self.max_bins = max_bins
        self._mapping = _mapping(relative_accuracy)
        self._positive = _DenseBins()
        self._negative = _DenseBins()
        self.zero_count = 0.0

    @property
    def count(self) -> float:
        return self._positive.total + self._negative.total + self.zero_count

    def keys_for(self, magnitudes: np.ndarray) -> np.ndarray:
        """DDSketch keys of positive values, vectorised (``LogarithmicMapping.key``)."""
        mapping = self._mapping
        return (np.ceil(np.log2(magnitudes) * mapping._multiplier) + mapping._offset).astype(np.int64)

    def add_values(self, values: np.ndarray) -> None:
        """Insert finite values (one weight each)."""
        if values.size == 0:
            return
        floor = self._mapping.min_possible
        positive = values[values > floor]
        negative = -values[values < -floor]
        self.zero_count += float(values.size - positive.size - negative.size)
        for bins, magnitudes in ((self._positive, positive), (self._negative, negative)):
            if magnitudes.size:
                bins.add(self.keys_for(magnitudes), None, self.max_bins)

    def merge(self, other: "QuantileSketch") -> None:
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches with different relative accuracy")
        for mine, theirs in ((self._positive, other._positive), (self._negative, other._negative)):
            if theirs.counts is not None:
                keys = np.arange(theirs.offset, theirs.offset + len(theirs.counts))
                nonzero = theirs.counts > 0
                if nonzero.any():
                    mine.add(keys[nonzero], theirs.counts[nonzero], self.max_bins)
        self.zero_count += other.zero_count

    def quantile(self, q: float) -> float | None:
        """Value at quantile ``q`` (0..1), by DDSketch's rank rule; None when empty."""
        total = self.count
        if not 0.0 <= q <= 1.0 or total == 0:
            return None
        rank = q * (total - 1)
        negatives = self._negative.total
        if rank < negatives:
            key = self._negative.key_at_rank(negatives - rank - 1, lower=False)
            return -self._mapping.value(key)
        if rank < negatives + self.zero_count:
            return 0.0
        key = self._positive.key_at_rank(rank - self.zero_count - negatives, lower=True)
        return self._mapping.value(key)

    def copy(self) -> "QuantileSketch":
        return QuantileSketch.from_state(self.to_state())

    def nbytes(self) -> int:
        return self._positive.nbytes() + self._negative.nbytes() + 64

    def to_state(self) -> dict:
        return {
            "v": STATE_VERSION,
            "accuracy": self.relative_accuracy,
            "max_bins": self.max_bins,
            "pos": self._positive.to_state(),
            "neg": self._negative.to_state(),
            "zero": self.zero_count,
        }

    @classmethod
    def from_state(cls, state: dict) -> "QuantileSketch":
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported sketch state version {state.get('v')!r}")
        sketch = cls(state["accuracy"], state["max_bins"])
        sketch._positive = _DenseBins.from_state(state["pos"])
        sketch._negative = _DenseBins.from_state(state["neg"])
        sketch.zero_count = float(state["zero"])
        return sketch


@functools.lru_cache(maxsize=8)
def _mapping(relative_accuracy: float) -> LogarithmicMapping:
    # The mapping is immutable; sharing it keeps one sketch per bucket cheap.
    return LogarithmicMapping(relative_accuracy)
