"""Mergeable relative-error quantile sketch with vectorised inserts.

The bin layout and the quantile rule are DDSketch's (``ddsketch.LogarithmicMapping``
and ``BaseDDSketch.get_quantile_value``); bins live in dense numpy arrays so a
whole batch is inserted with one ``np.unique`` instead of one Python call per
value, and the state is compact enough to keep one sketch per window.

A sketch of a few positive values (a sparse series' window: a handful of latencies) keeps just
their keys, up to ``SPARSE_KEYS``: appending a key is cheaper than growing bins, and the quantile
is the key at the same rank of the sorted keys, exactly what the bins would give. Past that, or
at the first zero or negative value, it turns into bins.

>>> s = QuantileSketch()
>>> s.add_values(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
>>> s.count
5.0
>>> round(s.quantile(0.5), 1)
3.0
"""

from __future__ import annotations

import functools
from array import array

import numpy as np
from ddsketch.mapping import LogarithmicMapping

STATE_VERSION = 2  # 2: the keys of a sparse sketch
SPARSE_KEYS = 128  # a sketch keeps at most this many keys before it turns into bins
MAX_BINS = 2048  # bins kept per sign before the lowest collapse
SMALL_ADD = 16  # values added one by one (below numpy's per-call cost) when they fit the held bins


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
        if weights is None and keys.size <= SMALL_ADD:
            # A few values (a sparse series): element by element beats numpy's per-call cost.
            few = keys.tolist()
            if self._cover(min(few), max(few), max_bins):
                offset, counts = self.offset, self.counts
                for key in few:
                    counts[key - offset] += 1
                return
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

    def _cover(self, lo: int, hi: int, max_bins: int) -> bool:
        """Grow the bins to hold keys ``lo``..``hi``; False (nothing done) when that needs a collapse."""
        if self.counts is None:
            if hi - lo + 1 > max_bins:
                return False
            self.offset, self.counts = lo, np.zeros(hi - lo + 1)
            return True
        held_hi = self.offset + len(self.counts) - 1
        if lo >= self.offset and hi <= held_hi:
            return True
        lo, hi = min(lo, self.offset), max(hi, held_hi)
        if hi - lo + 1 > max_bins:
            return False
        grown = np.zeros(hi - lo + 1)
        start = self.offset - lo
        grown[start:start + len(self.counts)] = self.counts
        self.offset, self.counts = lo, grown
        return True

    def merge(self, other: _DenseBins, max_bins: int) -> None:
        if other.counts is None:
            return
        if self._cover(other.offset, other.offset + len(other.counts) - 1, max_bins):  # one slice add
            start = other.offset - self.offset
            self.counts[start:start + len(other.counts)] += other.counts
            return
        keys = np.arange(other.offset, other.offset + len(other.counts))
        nonzero = other.counts > 0
        if nonzero.any():
            self.add(keys[nonzero], other.counts[nonzero], max_bins)

    def copy(self) -> _DenseBins:
        return _DenseBins(self.offset, None if self.counts is None else self.counts.copy())

    def key_of_upper_rank(self, rank: float) -> int:
        """The key holding the value of ``rank`` counted from the top (negative values' magnitudes)."""
        index = int(np.searchsorted(np.cumsum(self.counts), rank + 1, side="left"))
        return self.offset + min(index, len(self.counts) - 1)

    def to_state(self) -> list | None:
        if self.counts is None:
            return None
        return [self.offset, self.counts.tolist()]

    @classmethod
    def from_state(cls, state: list | None) -> _DenseBins:
        if state is None:
            return cls()
        return cls(int(state[0]), np.asarray(state[1], dtype=np.float64))

    def nbytes(self) -> int:
        return 0 if self.counts is None else self.counts.nbytes


class QuantileSketch:
    """DDSketch-compatible sketch: relative accuracy ``relative_accuracy`` on every quantile."""

    __slots__ = ("relative_accuracy", "max_bins", "_mapping", "_keys", "_positive", "_negative", "zero_count")

    def __init__(self, relative_accuracy: float = 0.01, max_bins: int = MAX_BINS):
        self.relative_accuracy = relative_accuracy
        self.max_bins = max_bins
        self._mapping = _mapping(relative_accuracy)
        self._keys: array | None = array("i")  # the keys of positive values while sparse; None once binned
        self._positive = _DenseBins()
        self._negative = _DenseBins()
        self.zero_count = 0.0

    @property
    def count(self) -> float:
        if self._keys is not None:
            return float(len(self._keys))
        return self._positive.total + self._negative.total + self.zero_count

    def keys_for(self, magnitudes: np.ndarray) -> np.ndarray:
        """DDSketch keys of positive values, vectorised (``LogarithmicMapping.key``)."""
        return QuantileSketch.positive_keys(magnitudes, self.relative_accuracy)

    @staticmethod
    def positive_keys(magnitudes: np.ndarray, relative_accuracy: float) -> np.ndarray:
        mapping = _mapping(relative_accuracy)
        return (np.ceil(np.log2(magnitudes) * mapping._multiplier) + mapping._offset).astype(np.int64)

    @staticmethod
    def key_values(keys: np.ndarray, relative_accuracy: float) -> np.ndarray:
        """The value each key stands for (``LogarithmicMapping.value``), vectorised."""
        mapping = _mapping(relative_accuracy)
        return np.power(2.0, (keys - mapping._offset) / mapping._multiplier) * (2.0 / (1 + mapping.gamma))

    @classmethod
    def from_keys(cls, keys: np.ndarray, relative_accuracy: float) -> QuantileSketch:
        """A sketch of the positive values given by their ``keys``."""
        sketch = cls(relative_accuracy)
        sketch.add_keys(keys)
        return sketch

    def sparse_keys(self) -> np.ndarray | None:
        """The keys of a sparse sketch's values; None once binned."""
        return None if self._keys is None else np.frombuffer(self._keys, dtype=np.int32).copy()

    @staticmethod
    def zero_threshold(relative_accuracy: float) -> float:
        """Values at or below this magnitude count as zero."""
        return _mapping(relative_accuracy).min_possible

    def add_keys(self, keys: np.ndarray) -> None:
        """Insert positive values given by their ``keys`` (``positive_keys``), one weight each."""
        if not keys.size:
            return
        if self._keys is not None:
            if len(self._keys) + keys.size <= SPARSE_KEYS:
                self._keys.extend(keys.tolist())
                return
            self._bin()
        self._positive.add(keys, None, self.max_bins)

    def add_values(self, values: np.ndarray) -> None:
        """Insert finite values (one weight each)."""
        if values.size == 0:
            return
        floor = self._mapping.min_possible
        positive = values[values > floor]
        if positive.size == values.size:
            self.add_keys(self.keys_for(positive))
            return
        self._bin()
        negative = -values[values < -floor]
        self.zero_count += float(values.size - positive.size - negative.size)
        for bins, magnitudes in ((self._positive, positive), (self._negative, negative)):
            if magnitudes.size:
                bins.add(self.keys_for(magnitudes), None, self.max_bins)

    def _bin(self) -> None:
        """Turn the sparse keys into bins (no-op once binned)."""
        if self._keys is not None:
            keys, self._keys = self._keys, None
            if keys:
                self._positive.add(np.frombuffer(keys, dtype=np.int32).astype(np.int64), None, self.max_bins)

    def merge(self, other: QuantileSketch) -> None:
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches with different relative accuracy")
        if other._keys is not None:
            self.add_keys(np.frombuffer(other._keys, dtype=np.int32))
            return
        self._bin()
        self._positive.merge(other._positive, self.max_bins)
        self._negative.merge(other._negative, self.max_bins)
        self.zero_count += other.zero_count

    def quantile(self, q: float) -> float | None:
        """Value at quantile ``q`` (0..1), by DDSketch's rank rule; None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs) -> list[float | None]:
        """``quantile`` of each of ``qs``, sharing one pass over the bins."""
        if self._keys is not None:
            return self._sparse_quantiles(qs)
        positive = self._positive.counts
        if self._negative.counts is None and not self.zero_count and positive is not None and \
                all(0.0 <= q <= 1.0 for q in qs):
            # Only positive values (every latency): one search and one vectorised key-to-value map.
            cumulative = np.cumsum(positive)
            index = np.searchsorted(cumulative, np.asarray(qs) * (cumulative[-1] - 1), side="right")
            keys = self._positive.offset + np.minimum(index, len(positive) - 1)
            return QuantileSketch.key_values(keys, self.relative_accuracy).tolist()
        total = self.count
        negatives = self._negative.total
        found: list[float | None] = []
        positive_at: list[int] = []  # positions in ``found`` answered by the positive bins, in one search
        positive_ranks: list[float] = []
        for q in qs:
            if not 0.0 <= q <= 1.0 or total == 0:
                found.append(None)
                continue
            rank = q * (total - 1)
            if rank < negatives:
                key = self._negative.key_of_upper_rank(negatives - rank - 1)
                found.append(-self._mapping.value(key))
            elif rank < negatives + self.zero_count:
                found.append(0.0)
            else:
                positive_at.append(len(found))
                positive_ranks.append(rank - self.zero_count - negatives)
                found.append(None)
        if positive_at:
            bins = self._positive
            index = np.searchsorted(np.cumsum(bins.counts), positive_ranks, side="right")
            last = len(bins.counts) - 1
            for position, i in zip(positive_at, index.tolist()):
                found[position] = self._mapping.value(bins.offset + min(i, last))
        return found

    def _sparse_quantiles(self, qs) -> list[float | None]:
        """The bins' rule on the sorted keys: the bin whose running count first passes rank
        ``q * (n - 1)`` holds the element at index ``floor(rank)``."""
        n = len(self._keys)
        if not n:
            return [None] * len(qs)
        ordered = np.sort(np.frombuffer(self._keys, dtype=np.int32))
        ranks = [int(q * (n - 1)) if 0.0 <= q <= 1.0 else 0 for q in qs]
        values = QuantileSketch.key_values(ordered[ranks], self.relative_accuracy).tolist()
        return [value if 0.0 <= q <= 1.0 else None for q, value in zip(qs, values)]

    def positive_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys of its positive values and the count at each (zero and negative values are
        ``count`` less these)."""
        if self._keys is not None:
            keys, counts = np.unique(np.frombuffer(self._keys, dtype=np.int32), return_counts=True)
            return keys.astype(np.int64), counts.astype(np.float64)
        bins = self._positive
        if bins.counts is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return bins.offset + np.arange(len(bins.counts)), np.asarray(bins.counts, dtype=np.float64)

    def copy(self) -> QuantileSketch:
        sketch = QuantileSketch(self.relative_accuracy, self.max_bins)
        sketch._keys = None if self._keys is None else array("i", self._keys)
        sketch._positive, sketch._negative = self._positive.copy(), self._negative.copy()
        sketch.zero_count = self.zero_count
        return sketch

    def nbytes(self) -> int:
        keys = 0 if self._keys is None else 64 + self._keys.buffer_info()[1] * self._keys.itemsize
        return keys + self._positive.nbytes() + self._negative.nbytes() + 64

    @staticmethod
    def sparse_state(keys: list[int], relative_accuracy: float, max_bins: int = MAX_BINS) -> dict:
        """The state of a sparse sketch holding ``keys``."""
        return {"v": STATE_VERSION, "accuracy": relative_accuracy, "max_bins": max_bins, "keys": keys}

    def to_state(self) -> dict:
        if self._keys is not None:
            return QuantileSketch.sparse_state(self._keys.tolist(), self.relative_accuracy, self.max_bins)
        state = {"v": STATE_VERSION, "accuracy": self.relative_accuracy, "max_bins": self.max_bins}
        state.update(pos=self._positive.to_state(), neg=self._negative.to_state(), zero=self.zero_count)
        return state

    @classmethod
    def from_state(cls, state: dict) -> QuantileSketch:
        if state.get("v") not in (1, STATE_VERSION):
            raise ValueError(f"unsupported sketch state version {state.get('v')!r}")
        sketch = cls(state["accuracy"], state["max_bins"])
        if "keys" in state:
            sketch._keys.extend(state["keys"])
            return sketch
        sketch._keys = None  # version 1 was always binned
        sketch._positive = _DenseBins.from_state(state["pos"])
        sketch._negative = _DenseBins.from_state(state["neg"])
        sketch.zero_count = float(state["zero"])
        return sketch


@functools.lru_cache(maxsize=8)
def _mapping(relative_accuracy: float) -> LogarithmicMapping:
    # The mapping is immutable; sharing it keeps one sketch per bucket cheap.
    return LogarithmicMapping(relative_accuracy)
