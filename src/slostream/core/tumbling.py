"""Tumbling SLI windows of many series, held in columns, holding only what their readers still need.

Measurements go straight into the open window of each length that something reads (the SLI report
window; each policy's window), so a sparse series keeps one row per length, not one per base
bucket. Lateness is still judged per base bucket (``width`` seconds): once a series' watermark
passes a base bucket's end the bucket is *closed* and takes nothing more, and a window whose end
that closed horizon has passed is complete: ``close`` hands it out and forgets it.

Every series of a partition shares one ``WindowStore``: one stats row per open window in one array,
so a batch of thousands of series is windowed and closed with a few numpy calls, not a Python call
per series. Quantile sketches are kept only for lengths whose readers ask for quantiles. A window
of at most ``SPARSE_KEYS`` positive values keeps their DDSketch keys in a log shared by all windows
(a few measurements a minute is the common case); its quantiles are read from the sorted keys for
every closing window at once, exactly what the sketch's bins would give. Past that, or at the first
zero or negative value, the window holds a ``QuantileSketch``.

Each series carries one replay mark, the newest source mark it applied. Its state is persisted as
one piece, always as of a prefix of its log, so after a crash every replayed measurement at or below
the mark is held already and is skipped (the pipeline drops them for a whole batch at once).

``TumblingWindows`` is one series' handle on a store (its own, when none is given):

>>> w = TumblingWindows(10, {60: True})
>>> w.add(0, np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0], dtype=np.int8))
3
>>> w.close_until(30)
[]
>>> [(a.start, a.end, a.count, a.errors, a.max) for a in w.close_until(60)]
[(0, 60, 3, 1, 3.0)]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .buckets import (
    MAX,
    MIN,
    Aggregate,
    bucket_start,
)
from .sketch import QuantileSketch
from .store_codec import _read_head
from .window_store import WindowStore
from .windows import SeriesWindows


def _stats_from_state(stats: list) -> np.ndarray:
    """A stats row from JSON, which has no infinity: an empty min and max come back as null."""
    row = np.asarray(stats, dtype=np.float64)
    if np.isnan(row[MIN]):
        row[MIN] = np.inf
    if np.isnan(row[MAX]):
        row[MAX] = -np.inf
    return row


class TumblingWindows:
    """One series' open windows: a handle on its ``WindowStore`` (its own, when none is given).

    ``lengths`` maps each window length read (a multiple of ``width``) to whether its readers need
    quantiles.
    """

    __slots__ = ("store", "owner")

    def __init__(self, width: int, lengths: Mapping[int, bool], relative_accuracy: float = 0.01,
                 store: WindowStore | None = None):
        self.store = WindowStore(width, relative_accuracy) if store is None else store
        self.owner = self.store.new_owner(lengths)

    @property
    def lengths(self) -> dict[int, bool]:
        """The window lengths read, and whether each needs quantiles."""
        return self.store.reads(self.owner)

    @property
    def closed_until(self) -> int:
        return int(self.store.closed_until[self.owner])

    @property
    def mark(self) -> int:
        return int(self.store.mark[self.owner])

    @mark.setter
    def mark(self, value: int) -> None:
        self.store.mark[self.owner] = value

    @property
    def due(self) -> float:
        return float(self.store.due[self.owner])

    def add(self, start: int, values: np.ndarray, oks: np.ndarray, offsets: np.ndarray | None = None) -> int:
        """Add measurements of the base bucket at ``start``; return how many were new. With
        ``offsets`` (replay marks, ascending), measurements at or below the series' mark are held
        already and skipped."""
        if offsets is not None:
            fresh = offsets > self.mark
            offsets, values, oks = offsets[fresh], values[fresh], oks[fresh]
        if not values.size:
            return 0
        self.store.add(np.full(values.size, self.owner, dtype=np.int64), np.full(values.size, start, dtype=np.int64),
                       values, oks)
        if offsets is not None:
            self.mark = max(self.mark, int(offsets[-1]))
        return int(values.size)

    def close_until(self, watermark: float) -> list[Aggregate]:
        """Close the base buckets ending at or before ``watermark``; return the windows completed,
        ordered by end, then length."""
        closed = self.store.close(np.array([self.owner]), np.array([float(watermark)]))
        return [closed.aggregate(i) for i in range(len(closed))]

    def is_empty(self) -> bool:
        """No open window: every measurement has been handed out."""
        return not self.store.open_count[self.owner]

    def pending_count(self, length: int) -> int:
        """Measurements not yet handed out in a complete window of ``length``."""
        return self.store.pending_count(self.owner, length)

    def to_state(self) -> bytes:
        return self.store.encode(np.array([self.owner]))[0]

    @classmethod
    def from_state(cls, state: bytes | dict, lengths: Mapping[int, bool],
                   store: WindowStore | None = None) -> TumblingWindows:
        """Rebuilt for the window lengths read now: windows of a length no longer read are dropped,
        a length read for the first time starts empty (so does a window not needing quantiles any
        more lose its sketch, and every window its sketch if the store's accuracy changed: its
        quantiles then come from what arrives after the restore). A state of version 1 or 2 is a
        dict (JSON); they held no clock."""
        if isinstance(state, bytes):
            head = _read_head(state)
            windows = cls(int(head["width"]), lengths, float(head["accuracy"]), store)
            windows.store.decode(windows.owner, state)
            return windows
        version = state.get("v")
        if version not in (1, 2):
            raise ValueError(f"unsupported tumbling window state version {version!r}")
        windows = cls(state["width"], lengths, state["accuracy"], store)
        windows.store.closed_until[windows.owner] = state["closed_until"]
        if version == 1:
            windows._restore_v1(state)
        else:
            windows.mark = int(state["mark"])
            for length, start, stats, sketch in state["open"]:
                windows._restore_window(length, start, stats, sketch)
        return windows

    def _restore_window(self, length: int, start: int, stats: list, sketch: dict | None) -> None:
        restored = None if sketch is None else QuantileSketch.from_state(sketch)
        self.store.put_window(self.owner, int(length), int(start), _stats_from_state(stats), restored)

    def _restore_v1(self, state: dict) -> None:
        """Version 1 kept open base buckets, each with its replay mark, apart from partial windows:
        the buckets fold into the windows, the newest bucket mark is the series' mark (the state
        was a prefix of the log, so it holds everything up to it)."""
        for length, start, (stats, sketch, _) in state["partial"]:
            self._restore_window(length, start, stats, sketch)
        for start, (stats, sketch, mark) in state["open"]:
            for length in self.lengths:
                self._restore_window(length, start, stats, sketch)
            self.mark = max(self.mark, int(mark))

    @classmethod
    def from_ring(cls, ring: SeriesWindows, lengths: Mapping[int, bool],
                  store: WindowStore | None = None) -> TumblingWindows:
        """A series persisted as multi-level ring buckets (before tumbling windows): the closed part
        of each window not complete yet, and its open base buckets."""
        windows = cls(ring.base_width, lengths, ring.relative_accuracy, store)
        closed = ring.closed_until
        windows.store.closed_until[windows.owner] = closed
        for length, quantiles in windows.lengths.items():
            start = bucket_start(closed, length)
            if start < closed:
                agg = ring.aggregate(start, closed, with_sketch=quantiles)
                if agg.count:
                    windows.store.put_window(windows.owner, length, start, agg.stats, agg.sketch)
        for start in sorted(ring.open_starts):
            stats, sketch, mark = ring.open_bucket(start)
            for length in windows.lengths:
                windows.store.put_window(windows.owner, length, start, stats, sketch)
            windows.mark = max(windows.mark, mark)
        return windows
