"""Tumbling SLI windows of one series, holding only what their readers still need.

Measurements land in open base buckets (``width`` seconds). When the series' watermark passes a
base bucket's end the bucket *closes*: it is folded into one partial window per length that
something reads (the SLI report window; each policy's window) and dropped. A partial window whose
end the closed horizon has passed is complete: ``close_until`` hands it out and forgets it.

So a series holds its open buckets and one partial window per length (more only while its clock
jumps), whatever the SLO trackers keep: a busy latency series costs a few sketches, not a month of
buckets. Quantile sketches are kept only for lengths whose readers ask for quantiles.

Open buckets carry a replay mark (the newest source offset they hold), so a log replayed after a
crash adds nothing twice to them. The whole state is small, so it is persisted as one piece per
series: a crash between two series' checkpoints never leaves one series half-written.

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

STATE_VERSION = 1


class _Bucket:
    """Stats row and optional sketch of an open bucket or a partial window; an open bucket's replay mark."""

    __slots__ = ("stats", "sketch", "mark")

    def __init__(self, stats: np.ndarray, sketch: QuantileSketch | None, mark: int):
        self.stats = stats
        self.sketch = sketch
        self.mark = mark

    def to_state(self) -> list:
        return [self.stats.tolist(), None if self.sketch is None else self.sketch.to_state(), self.mark]

    @classmethod
    def from_state(cls, state: list) -> "_Bucket":
        stats, sketch, mark = state
        return cls(np.asarray(stats, dtype=np.float64), None if sketch is None else QuantileSketch.from_state(sketch),
                   int(mark))

    def nbytes(self) -> int:
        # The row's data and array header, the slots object, and the sketch.
        return self.stats.nbytes + 112 + 64 + (0 if self.sketch is None else self.sketch.nbytes())


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
    """Open base buckets and partial tumbling windows of one series.

    ``lengths`` maps each window length read (a multiple of ``width``) to whether its readers need
    quantiles. ``add`` feeds open buckets; ``close_until`` closes what a watermark passed and
    returns the windows it completed.
    """

    def __init__(self, width: int, lengths: Mapping[int, bool], relative_accuracy: float = 0.01):
        for length in lengths:
            if length <= 0 or length % width:
                raise ValueError(f"window length {length}s is not a positive multiple of the bucket width {width}s")
        self.width = width
        self.lengths = dict(sorted(lengths.items()))
        self.relative_accuracy = relative_accuracy
        self.closed_until = 0
        self.open: dict[int, _Bucket] = {}  # base bucket start -> bucket
        self.partial: dict[int, dict[int, _Bucket]] = {length: {} for length in self.lengths}
        # The bucket is dropped after its fold: the last length to take its sketch may take it whole.
        self._last_with_quantiles = max((n for n, quantiles in self.lengths.items() if quantiles), default=None)

    def add(self, start: int, values: np.ndarray, oks: np.ndarray, offsets: np.ndarray | None = None) -> int:
        """Add the measurements of the open base bucket at ``start``; return how many were new.

        ``values`` holds NaN where a measurement had no value; ``oks`` holds 1, 0, or -1 where a
        measurement had no ``ok``. With ``offsets`` (replay marks, ascending), measurements the
        bucket already holds are skipped.
        """
        bucket = self._open_bucket(start)
        if offsets is not None and offsets.size and bucket.mark >= offsets[0]:
            fresh = offsets > bucket.mark
            offsets, values, oks = offsets[fresh], values[fresh], oks[fresh]
        if not values.size:
            return 0
        self._merge_run(bucket, Summaries(values, oks, [0, values.size], self.relative_accuracy), 0, 0, values)
        if offsets is not None:
            bucket.mark = max(bucket.mark, int(offsets[-1]))
        return int(values.size)

    def add_run(self, start: int, summaries: Summaries, run: int, a: int, b: int, values: np.ndarray,
                oks: np.ndarray, offsets: np.ndarray) -> int:
        """``add`` of the elements [a, b) of a batch, which form run ``run`` of ``summaries``."""
        bucket = self.open.get(start)
        if bucket is not None and bucket.mark >= offsets[a]:  # a replay: ``add`` drops what is held
            return self.add(start, values[a:b], oks[a:b], offsets[a:b])
        bucket = self._open_bucket(start)
        self._merge_run(bucket, summaries, run, a, values[a:b])
        bucket.mark = max(bucket.mark, int(offsets[b - 1]))
        return b - a

    def _open_bucket(self, start: int) -> _Bucket:
        if start < self.closed_until:
            raise ValueError(f"bucket {start} is closed (closed until {self.closed_until})")
        bucket = self.open.get(start)
        if bucket is None:
            bucket = self.open[start] = _Bucket(empty_stats(), None, -1)
        return bucket

    def _merge_run(self, bucket: _Bucket, summaries: Summaries, run: int, a: int, values: np.ndarray) -> None:
        """Merge run ``run`` of ``summaries`` (its ``values``, the batch's from index ``a``) into ``bucket``."""
        merge_stats_into(bucket.stats, summaries.rows[run])
        if not summaries.rows[run, VALUES]:
            return
        if bucket.sketch is None:
            bucket.sketch = QuantileSketch(self.relative_accuracy)
        if summaries.positive[run]:
            bucket.sketch.add_keys(summaries.keys[a:a + values.size])
        else:
            bucket.sketch.add_values(values[~np.isnan(values)])

    def close_until(self, watermark: float) -> list[Aggregate]:
        """Close the base buckets ending at or before ``watermark``; return the windows completed,
        ordered by end, then length."""
        horizon = bucket_start(watermark, self.width)
        if horizon <= self.closed_until:
            return []
        for start in sorted(s for s in self.open if s < horizon):
            self._fold(start, self.open.pop(start))
        self.closed_until = horizon
        completed = []
        for length, windows in self.partial.items():
            for start in sorted(s for s in windows if s + length <= horizon):
                window = windows.pop(start)
                completed.append(Aggregate(start, start + length, window.stats, window.sketch))
        completed.sort(key=lambda agg: (agg.end, agg.end - agg.start))
        return completed

    def _fold(self, start: int, bucket: _Bucket) -> None:
        for length, quantiles in self.lengths.items():
            window_start = bucket_start(start, length)
            window = self.partial[length].get(window_start)
            if window is None:
                window = self.partial[length][window_start] = _Bucket(empty_stats(), None, -1)
            merge_stats_into(window.stats, bucket.stats)
            if quantiles and bucket.sketch is not None:
                if window.sketch is None:
                    window.sketch = bucket.sketch if length == self._last_with_quantiles else bucket.sketch.copy()
                else:
                    window.sketch.merge(bucket.sketch)

    def is_empty(self) -> bool:
        """Nothing open and nothing partial: every measurement has been handed out."""
        return not self.open and not any(self.partial.values())

    def pending_count(self, length: int) -> int:
        """Measurements not yet handed out in a complete window of ``length``: in open buckets, and in
        that length's partial windows."""
        buckets = [*self.open.values(), *self.partial[length].values()]
        return int(sum(bucket.stats[COUNT] for bucket in buckets))

    # --- state ------------------------------------------------------------

    def to_state(self) -> dict:
        return {
            "v": STATE_VERSION,
            "width": self.width,
            "accuracy": self.relative_accuracy,
            "closed_until": self.closed_until,
            "open": [[start, bucket.to_state()] for start, bucket in sorted(self.open.items())],
            "partial": [[length, start, window.to_state()] for length, windows in self.partial.items()
                        for start, window in sorted(windows.items())],
        }

    @classmethod
    def from_state(cls, state: dict, lengths: Mapping[int, bool]) -> "TumblingWindows":
        """Rebuilt for the window lengths read now: partial windows of a length no longer read are
        dropped, a length read for the first time starts empty."""
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported tumbling window state version {state.get('v')!r}")
        windows = cls(state["width"], lengths, state["accuracy"])
        windows.closed_until = state["closed_until"]
        windows.open = {int(start): _Bucket.from_state(bucket) for start, bucket in state["open"]}
        for length, start, window in state["partial"]:
            if length in windows.partial:
                windows.partial[length][int(start)] = _Bucket.from_state(window)
        return windows

    @classmethod
    def from_ring(cls, ring: SeriesWindows, lengths: Mapping[int, bool]) -> "TumblingWindows":
        """A series persisted as multi-level ring buckets (before tumbling windows): its open base
        buckets, and the closed part of each window not complete yet."""
        windows = cls(ring.base_width, lengths, ring.relative_accuracy)
        closed = windows.closed_until = ring.closed_until
        base = ring.levels[0]
        for start in sorted(ring.open_starts):
            stats, sketch = base.bucket(start)
            windows.open[start] = _Bucket(stats.copy(), sketch, int(base.marks[base.slot_of(start)]))
        for length, quantiles in windows.lengths.items():
            start = bucket_start(closed, length)
            if start < closed:
                agg = ring.aggregate(start, closed, with_sketch=quantiles)
                if agg.count:
                    windows.partial[length][start] = _Bucket(agg.stats, agg.sketch, -1)
        return windows

    def nbytes(self) -> int:
        buckets = [*self.open.values(), *(w for windows in self.partial.values() for w in windows.values())]
        return sum(bucket.nbytes() for bucket in buckets) + 64 * (len(self.open) + len(self.partial))
