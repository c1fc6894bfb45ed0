"""Tumbling SLI windows of one series, holding only what their readers still need.

Measurements go straight into the open window of each length that something reads (the SLI report
window; each policy's window), so a sparse series keeps one row and one sketch per length, not one
per base bucket. Lateness is still judged per base bucket (``width`` seconds): once the series'
watermark passes a base bucket's end the bucket is *closed* and takes nothing more, and a window
whose end that closed horizon has passed is complete: ``close_until`` hands it out and forgets it.
Quantile sketches are kept only for lengths whose readers ask for quantiles.

The series carries one replay mark, the newest source mark it applied. Its state is persisted as
one piece, always as of a prefix of its log, so after a crash every replayed measurement at or below
the mark is held already and is skipped (the pipeline drops them for a whole batch at once).

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

from .sketch import QuantileSketch
from .windows import COUNT, MAX, MIN, N_STATS, OK, OK_KNOWN, SUM, VALUES, Aggregate, SeriesWindows, bucket_start, \
    empty_stats, merge_stats_into

STATE_VERSION = 2


def _stats_from_state(stats: list) -> np.ndarray:
    """A stats row from JSON, which has no infinity: an empty min and max come back as null."""
    row = np.asarray(stats, dtype=np.float64)
    if np.isnan(row[MIN]):
        row[MIN] = np.inf
    if np.isnan(row[MAX]):
        row[MAX] = -np.inf
    return row


class _Window:
    """Stats row and optional quantile sketch of an open window."""

    __slots__ = ("stats", "sketch")

    def __init__(self, stats: np.ndarray, sketch: QuantileSketch | None):
        self.stats = stats
        self.sketch = sketch

    def nbytes(self) -> int:
        # The row's data and array header, the slots object, and the sketch.
        return self.stats.nbytes + 112 + 56 + (0 if self.sketch is None else self.sketch.nbytes())


class Summaries:
    """Stats rows and sketch keys of the runs of a batch, computed once for all runs: the
    per-run cost of a sparse series (a few measurements per bucket) is then a few scalar updates,
    not a dozen numpy calls.

    ``bounds`` are the run boundaries (0, ..., len(values)); ``rows[i]`` is run i's stats row;
    ``keys`` the sketch keys of every value, valid in the runs flagged ``positive`` (all values
    present and above the sketch's zero threshold).
    """

    __slots__ = ("rows", "keys", "positive")

    def __init__(self, values: np.ndarray, oks: np.ndarray, bounds: list[int], relative_accuracy: float):
        firsts = bounds[:-1]
        has_value = ~np.isnan(values)
        rows = np.empty((len(firsts), N_STATS))
        rows[:, COUNT] = np.diff(bounds)
        rows[:, OK_KNOWN] = np.add.reduceat(oks >= 0, firsts)
        rows[:, OK] = np.add.reduceat(oks == 1, firsts)
        rows[:, VALUES] = np.add.reduceat(has_value, firsts)
        rows[:, SUM] = np.add.reduceat(np.where(has_value, values, 0.0), firsts)
        rows[:, MIN] = np.minimum.reduceat(np.where(has_value, values, np.inf), firsts)
        rows[:, MAX] = np.maximum.reduceat(np.where(has_value, values, -np.inf), firsts)
        self.rows = rows
        sketchable = values > QuantileSketch.zero_threshold(relative_accuracy)  # False for NaN
        self.positive = np.add.reduceat(sketchable, firsts) == rows[:, COUNT]
        self.keys = QuantileSketch.positive_keys(np.where(sketchable, values, 1.0), relative_accuracy)


class TumblingWindows:
    """Open tumbling windows of one series, one set per length read.

    ``lengths`` maps each window length read (a multiple of ``width``) to whether its readers need
    quantiles. ``add_run`` feeds the open windows; ``close_until`` closes what a watermark passed
    and returns the windows it completed.
    """

    def __init__(self, width: int, lengths: Mapping[int, bool], relative_accuracy: float = 0.01):
        for length in lengths:
            if length <= 0 or length % width:
                raise ValueError(f"window length {length}s is not a positive multiple of the bucket width {width}s")
        self.width = width
        self.lengths = dict(sorted(lengths.items()))
        self.relative_accuracy = relative_accuracy
        self.closed_until = 0
        self.mark = -1  # newest replay mark applied
        self.open: dict[int, dict[int, _Window]] = {length: {} for length in self.lengths}
        self.due = np.inf  # the earliest end of an open window: no close completes anything before it

    def add(self, start: int, values: np.ndarray, oks: np.ndarray, offsets: np.ndarray | None = None) -> int:
        """Add measurements of the base bucket at ``start``; return how many were new.

        ``values`` holds NaN where a measurement had no value; ``oks`` holds 1, 0, or -1 where a
        measurement had no ``ok``. With ``offsets`` (replay marks, ascending), measurements at or
        below the series' mark are held already and skipped.
        """
        if offsets is not None:
            fresh = offsets > self.mark
            offsets, values, oks = offsets[fresh], values[fresh], oks[fresh]
        if not values.size:
            return 0
        self.add_run(start, Summaries(values, oks, [0, values.size], self.relative_accuracy), 0, 0, values)
        if offsets is not None:
            self.mark = max(self.mark, int(offsets[-1]))
        return int(values.size)

    def add_run(self, start: int, summaries: Summaries, run: int, a: int, values: np.ndarray) -> None:
        """Add run ``run`` of ``summaries``, the batch's ``values`` from index ``a``, all in the base
        bucket at ``start``. Replays are the caller's to drop (``mark``)."""
        if start < self.closed_until:
            raise ValueError(f"bucket {start} is closed (closed until {self.closed_until})")
        row = summaries.rows[run]
        sketched = row[VALUES] > 0
        for length, quantiles in self.lengths.items():
            window = self._window_at(length, start)
            merge_stats_into(window.stats, row)
            if quantiles and sketched:
                if window.sketch is None:
                    window.sketch = QuantileSketch(self.relative_accuracy)
                if summaries.positive[run]:
                    window.sketch.add_keys(summaries.keys[a:a + values.size])
                else:
                    window.sketch.add_values(values[~np.isnan(values)])

    def _window_at(self, length: int, start: int) -> _Window:
        """The open window of ``length`` holding the base bucket at ``start``, made if new."""
        windows = self.open[length]
        window_start = start - start % length
        window = windows.get(window_start)
        if window is None:
            window = windows[window_start] = _Window(empty_stats(), None)
            self.due = min(self.due, window_start + length)
        return window

    def close_until(self, watermark: float) -> list[Aggregate]:
        """Close the base buckets ending at or before ``watermark``; return the windows completed,
        ordered by end, then length."""
        horizon = bucket_start(watermark, self.width)
        if horizon <= self.closed_until:
            return []
        self.closed_until = horizon
        if horizon < self.due:
            return []
        completed = []
        for length, windows in self.open.items():
            for start in sorted(s for s in windows if s + length <= horizon):
                window = windows.pop(start)
                completed.append(Aggregate(start, start + length, window.stats, window.sketch))
        if len(self.open) > 1:
            completed.sort(key=lambda agg: (agg.end, agg.end - agg.start))
        self._find_due()
        return completed

    def _find_due(self) -> None:
        self.due = min((start + length for length, windows in self.open.items() for start in windows),
                       default=np.inf)

    def is_empty(self) -> bool:
        """No open window: every measurement has been handed out."""
        return not any(self.open.values())

    def pending_count(self, length: int) -> int:
        """Measurements not yet handed out in a complete window of ``length``."""
        return int(sum(window.stats[COUNT] for window in self.open[length].values()))

    def _merge_bucket(self, start: int, stats: np.ndarray, sketch: QuantileSketch | None) -> None:
        """Fold a whole base bucket (persisted by an older state) into the windows holding it."""
        for length, quantiles in self.lengths.items():
            window = self._window_at(length, start)
            merge_stats_into(window.stats, stats)
            if quantiles and sketch is not None:
                if window.sketch is None:
                    window.sketch = sketch.copy()
                else:
                    window.sketch.merge(sketch)

    # --- state ------------------------------------------------------------

    def to_state(self) -> dict:
        return {
            "v": STATE_VERSION,
            "width": self.width,
            "accuracy": self.relative_accuracy,
            "closed_until": self.closed_until,
            "mark": self.mark,
            "open": [[length, start, window.stats.tolist(), None if window.sketch is None else window.sketch.to_state()]
                     for length, windows in self.open.items() for start, window in sorted(windows.items())],
        }

    @classmethod
    def from_state(cls, state: dict, lengths: Mapping[int, bool]) -> "TumblingWindows":
        """Rebuilt for the window lengths read now: windows of a length no longer read are dropped,
        a length read for the first time starts empty (so does a window not needing quantiles any
        more lose its sketch)."""
        version = state.get("v")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"unsupported tumbling window state version {version!r}")
        windows = cls(state["width"], lengths, state["accuracy"])
        windows.closed_until = state["closed_until"]
        if version == 1:
            windows._restore_v1(state)
        else:
            windows.mark = int(state["mark"])
            for length, start, stats, sketch in state["open"]:
                windows._restore_window(length, start, stats, sketch)
        windows._find_due()
        return windows

    def _restore_window(self, length: int, start: int, stats: list, sketch: dict | None) -> None:
        """An open window from its state: dropped if its length is no longer read, its sketch
        dropped if no reader of the length needs quantiles any more."""
        if length in self.open:
            self.open[length][int(start)] = _Window(
                _stats_from_state(stats),
                QuantileSketch.from_state(sketch) if sketch is not None and self.lengths[length] else None)

    def _restore_v1(self, state: dict) -> None:
        """Version 1 kept open base buckets, each with its replay mark, apart from partial windows:
        the buckets fold into the windows, the newest bucket mark is the series' mark (the state
        was a prefix of the log, so it holds everything up to it)."""
        for length, start, (stats, sketch, _) in state["partial"]:
            self._restore_window(length, start, stats, sketch)
        for start, (stats, sketch, mark) in state["open"]:
            self._merge_bucket(int(start), _stats_from_state(stats),
                               None if sketch is None else QuantileSketch.from_state(sketch))
            self.mark = max(self.mark, int(mark))

    @classmethod
    def from_ring(cls, ring: SeriesWindows, lengths: Mapping[int, bool]) -> "TumblingWindows":
        """A series persisted as multi-level ring buckets (before tumbling windows): the closed part
        of each window not complete yet, and its open base buckets."""
        windows = cls(ring.base_width, lengths, ring.relative_accuracy)
        closed = windows.closed_until = ring.closed_until
        for length, quantiles in windows.lengths.items():
            start = bucket_start(closed, length)
            if start < closed:
                agg = ring.aggregate(start, closed, with_sketch=quantiles)
                if agg.count:
                    windows.open[length][start] = _Window(agg.stats, agg.sketch)
        base = ring.levels[0]
        for start in sorted(ring.open_starts):
            stats, sketch = base.bucket(start)
            windows._merge_bucket(start, stats, sketch)
            windows.mark = max(windows.mark, int(base.marks[base.slot_of(start)]))
        windows._find_due()
        return windows

    def nbytes(self) -> int:
        return sum(window.nbytes() for windows in self.open.values() for window in windows.values()) + \
            64 * len(self.open)
