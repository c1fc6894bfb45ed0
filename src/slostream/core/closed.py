"""What a close of a ``WindowStore`` hands out."""

from __future__ import annotations

import numpy as np

from .buckets import VALUES, Aggregate
from .sketch import QuantileSketch


class Closed:
    """Windows one close completed, in columns, ordered by owner, then end, then length.

    ``quantiles[i]`` holds the clamped quantiles asked for (NaN where none: no values, or no sketch
    kept); ``aggregate(i)`` gives a window with its sketch, for readers of other quantiles.
    """

    __slots__ = ("owners", "starts", "lengths", "stats", "quantiles", "calibration", "_keys", "_key_bounds",
                 "_sketches", "_accuracy")

    def __init__(self, owners, starts, lengths, stats, quantiles, keys, key_bounds, sketches, accuracy):
        self.owners, self.starts, self.lengths, self.stats, self.quantiles = owners, starts, lengths, stats, quantiles
        self._keys, self._key_bounds, self._sketches, self._accuracy = keys, key_bounds, sketches, accuracy
        # Window i's calibration: its statistics and its row of sums (``core.calibration``), when its
        # series sent outcomes in it; the caller fills it in.
        self.calibration: dict[int, tuple[dict, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.owners)

    def rows_of(self, owner: int) -> np.ndarray:
        """The rows of one owner's windows: a binary search, the columns being ordered by owner (a
        close of many series reads each one's rows without a pass over all of them)."""
        return np.arange(np.searchsorted(self.owners, owner, "left"), np.searchsorted(self.owners, owner, "right"))

    def value_histogram(self, i: int, edges: np.ndarray) -> np.ndarray:
        """Window ``i``'s values counted by bin: at or below ``edges[0]`` (zero and negative values
        too), in each ``(edges[k-1], edges[k]]``, above ``edges[-1]``; each value as its sketch key
        stands for it (to the sketch's relative accuracy). Zeros when the window kept no values."""
        counts = np.zeros(len(edges) + 1)
        sketch = self._sketches.get(i)
        if sketch is not None:
            keys, weights = sketch.positive_counts()
        elif self._key_bounds[i, 1] >= 0:
            keys, weights = self._keys[self._key_bounds[i, 0]:self._key_bounds[i, 1]], None
        else:
            return counts
        values = QuantileSketch.key_values(np.asarray(keys), self._accuracy)
        counts += np.bincount(np.searchsorted(edges, values, side="left"), weights, minlength=len(edges) + 1)
        counts[0] += self.stats[i, VALUES] - counts.sum()
        return counts

    def aggregate(self, i: int) -> Aggregate:
        sketch = self._sketches.get(i)
        if sketch is None and self._key_bounds[i, 1] >= 0:
            sketch = QuantileSketch.from_keys(self._keys[self._key_bounds[i, 0]:self._key_bounds[i, 1]], self._accuracy)
        start = int(self.starts[i])
        calibration = self.calibration.get(i)
        return Aggregate(start, start + int(self.lengths[i]), self.stats[i], sketch,
                         None if calibration is None else calibration[0])
