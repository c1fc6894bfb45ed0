"""Running totals of ``SeriesWindows``' closed time, so a span up to the newest close costs O(1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .buckets import (
    MIN,
    bucket_start,
)
from .levels import Level

if TYPE_CHECKING:
    from .windows import SeriesWindows


class RunningTotals:
    """The additive columns summed over all closed time, and that running total as it stood at
    every bucket boundary each level still holds: closed time since a boundary is ``now`` minus
    its mark, O(1), and a close only appends. Counts stay exact (integers in float64); SUM may
    differ from a fresh sum in its last bits."""

    __slots__ = ("now", "widths", "boundaries", "values")

    def __init__(self, levels: list[Level]):
        self.now = np.zeros(MIN)
        self.widths = [level.width for level in levels]
        # One slot more than the level holds: the boundary at the newest close is kept too.
        self.boundaries = [np.full(level.slots + 1, -1, dtype=np.int64) for level in levels]
        self.values = [np.zeros((level.slots + 1, MIN)) for level in levels]

    @classmethod
    def of(cls, windows: SeriesWindows) -> RunningTotals:
        """Rebuilt from the levels. Data reaches a coarser level only when its base bucket closes,
        so a level's closed buckets from a boundary on sum to all closed time since it."""
        running = cls(windows.levels)
        closed = windows.closed_until
        for index, level in enumerate(windows.levels):
            width = level.width
            newest = bucket_start(max(closed - 1, 0), width)
            held = (level.starts >= 0) & (level.starts < closed)
            order = np.argsort(level.starts[held])
            starts = level.starts[held][order]
            suffix = np.zeros((starts.size + 1, MIN))
            suffix[:-1] = np.cumsum(level.stats[held][order, :MIN][::-1], axis=0)[::-1]
            marks = np.arange(newest - (level.slots - 1) * width, bucket_start(closed, width) + 1, width)
            running._record(index, marks, -suffix[np.searchsorted(starts, marks)])
        return running

    def _record(self, index: int, marks: np.ndarray | int, values: np.ndarray) -> None:
        slots = (marks // self.widths[index]) % len(self.boundaries[index])
        self.boundaries[index][slots] = marks
        self.values[index][slots] = values

    def advance(self, old: int, new: int, closing: list[int], rows: list[np.ndarray]) -> None:
        """Closed time moved from ``old`` to ``new``, closing the base buckets ``closing`` (ascending)."""
        base_width = self.widths[0]
        if not rows:
            after = self.now
        else:  # one row is the usual close; np.sum over a list of one costs more than the add
            after = self.now + (rows[0] if len(rows) == 1 else np.sum(rows, axis=0))
        cumulative = None
        for index, width in enumerate(self.widths):
            last = bucket_start(new, width)
            first = max(bucket_start(old, width) + width, last - (len(self.boundaries[index]) - 1) * width)
            if first > last:
                continue
            if first == last and (not closing or closing[-1] + base_width <= last):
                self._record(index, last, after)  # the usual close: one new boundary, after every bucket
                continue
            if cumulative is None:
                cumulative = np.zeros((len(rows) + 1, MIN))
                if rows:
                    np.cumsum(rows, axis=0, out=cumulative[1:])
                ends = np.asarray(closing, dtype=np.int64) + base_width
            marks = np.arange(first, last + 1, width)
            self._record(index, marks, self.now + cumulative[np.searchsorted(ends, marks, side="right")])
        self.now = after

    def since(self, index: int, boundary: int) -> np.ndarray | None:
        """Closed time from ``boundary`` (a bucket start of level ``index``) on; None if not marked."""
        slot = (boundary // self.widths[index]) % len(self.boundaries[index])
        if self.boundaries[index][slot] != boundary:
            return None
        return self.now - self.values[index][slot]
