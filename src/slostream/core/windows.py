"""Event-time windows kept at several resolutions: the counts of SLO trackers, which read sliding
spans up to 30 days (series windows are ``tumbling``; this layout also restores series state of
version 3 and before).

Measurements land in base buckets (10 s by default). When the watermark passes a
base bucket's end the bucket *closes* and is rolled into every coarser level, so a
span of any length is answered by merging a bounded number of buckets:

=========  ======  ==========  ===================================  ===============
level      width   slots       answers exactly                      sketches
=========  ======  ==========  ===================================  ===============
0          10 s    370 (1h1m)  5m, 30m, 1h (to 10 s)                newest 60 (10m)
1          1 m     370 (6h10m) 2h, 6h (to 1 min)                    all
2          10 m    438 (3d1h)  1d, 3d (to 10 min)                   none
3          1 h     744 (31 d)  7d, 28d, 30d (to 1 h)                none
4          1 d     93          calendar quarters                    none
=========  ======  ==========  ===================================  ===============

Each level keeps a little more than the spans it answers, so a span ending at
any base boundary is exact to the width of the level that answers it; the 10 s
level reaches back over an hour, so the page tier's 1h and 5m windows are exact
to one base bucket. An edge
older than every finer level's retention is rounded out to the coarser bucket
that holds it (an error of at most one bucket of that level).
Counts are kept at every level; quantile sketches (about 8 bytes per occupied
bin, ~200 bins for a typical latency spread) only for the newest ``sketch_slots``
buckets of a level, so a series stays under a megabyte. A span that needs a
bucket without a sketch reports no quantiles rather than partial ones.

>>> w = SeriesWindows()
>>> w.add(0, np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0], dtype=np.int8))
3
>>> w.close_until(10)
[0]
>>> agg = w.aggregate(0, 10)
>>> (agg.count, agg.ok, agg.errors, agg.max)
(3, 2, 1, 3.0)
"""

from __future__ import annotations

import numpy as np

from .buckets import (
    COUNT,
    DEFAULT_RESOLUTIONS,
    MAX,
    MIN,
    OK,
    OK_KNOWN,
    SUM,
    VALUES,
    Aggregate,
    Resolution,
    bucket_start,
    check_resolutions,
    empty_stats,
    merge_stats_into,
)
from .levels import Level
from .running_totals import RunningTotals
from .sketch import QuantileSketch

STATE_VERSION = 1

class SeriesWindows:
    """Multi-resolution event-time buckets of one series.

    ``add`` feeds the open base buckets; ``close_until`` closes every base bucket
    that ends at or before a watermark and rolls it up; ``aggregate`` answers any
    span of closed time.
    """

    def __init__(
        self,
        resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS,
        relative_accuracy: float = 0.01,
    ):
        check_resolutions(resolutions)
        self.resolutions = resolutions
        self.relative_accuracy = relative_accuracy
        self.levels = [Level(r) for r in resolutions]
        self.closed_until = 0
        self.open_starts: set[int] = set()
        self._running: RunningTotals | None = None  # made by the first ``closed_totals`` up to now
        # ((closed_until, newest open start), oldest bucket each level holds)
        self._oldest_held: tuple[tuple[int, int], list[int]] = ((-1, -1), [])

    @property
    def base_width(self) -> int:
        return self.resolutions[0].width

    def add(self, start: int, values: np.ndarray, oks: np.ndarray, offsets: np.ndarray | None = None) -> int:
        """Add the measurements of one base bucket; return how many were new.

        ``values`` holds NaN where a measurement had no value; ``oks`` holds 1, 0,
        or -1 where a measurement had no ``ok``. With ``offsets`` (source offsets,
        ascending), measurements the bucket already holds are skipped.
        """
        offsets, (values, oks) = self._unheld(start, offsets, values, oks)
        if not values.size:
            return 0
        has_value = ~np.isnan(values)
        present = values[has_value]
        row = empty_stats()
        row[COUNT] = values.size
        row[OK_KNOWN] = np.count_nonzero(oks >= 0)
        row[OK] = np.count_nonzero(oks == 1)
        row[VALUES] = present.size
        if present.size:
            row[SUM] = present.sum()
            row[MIN] = present.min()
            row[MAX] = present.max()
        base = self.levels[0]
        slot = self._open_slot(start, offsets)
        merge_stats_into(base.stats[slot], row)
        if present.size:
            sketch = base.sketches[slot]
            if sketch is None:
                sketch = base.sketches[slot] = QuantileSketch(self.relative_accuracy)
            sketch.add_values(present)
        return int(values.size)

    def add_flags(self, start: int, flags: np.ndarray, offsets: np.ndarray) -> int:
        """Count-only ``add`` for judged events (1 good, 0 bad, -1 not judged); no values, no sketch."""
        offsets, (flags,) = self._unheld(start, offsets, flags)
        if not flags.size:
            return 0
        self.add_counts(start, offsets, int(np.count_nonzero(flags == 1)), int(np.count_nonzero(flags >= 0)))
        return int(flags.size)

    def add_counts(self, start: int, offsets: np.ndarray, good: int, judged: int) -> bool:
        """``add_flags`` with the counting done by the caller: False, adding nothing, when the
        bucket already holds some of ``offsets`` (a replay), which only ``add_flags`` can sort out."""
        if self._holds_some(start, offsets):
            return False
        row = self.levels[0].stats[self._open_slot(start, offsets)]
        row[COUNT] += offsets.size
        row[OK_KNOWN] += judged
        row[OK] += good
        return True

    def _unheld(self, start: int, offsets: np.ndarray | None, *columns: np.ndarray):
        """Drop the measurements the base bucket already holds (a replay after a torn checkpoint)."""
        if offsets is not None and offsets.size and self._holds_some(start, offsets):
            fresh = offsets > self.levels[0].marks[self.levels[0].slot_of(start)]
            return offsets[fresh], tuple(c[fresh] for c in columns)
        return offsets, columns

    def _holds_some(self, start: int, offsets: np.ndarray) -> bool:
        """Whether the base bucket at ``start`` already holds the first of ``offsets`` (ascending)."""
        base = self.levels[0]
        slot = base.slot_of(start)
        return bool(base.starts[slot] == start and base.marks[slot] >= offsets[0])

    def _open_slot(self, start: int, offsets: np.ndarray | None) -> int:
        """Claim the base slot of ``start`` for new measurements and move its replay mark."""
        base = self.levels[0]
        held = int(base.starts[base.slot_of(start)])
        if held in self.open_starts and held < start:
            # A whole ring ahead of a bucket still open: close it (and all before it) rather than
            # overwrite it. The pipeline closes as it goes, so this is a last resort, never silent loss.
            self.close_until(held + base.width)
        slot = base._claim(start)
        if slot is None:
            raise ValueError(f"bucket {start} is older than the base retention")
        if start < self.closed_until:
            self._closed_changed()
        if offsets is not None and offsets.size:
            base.marks[slot] = max(base.marks[slot], int(offsets[-1]))  # ascending
        self.open_starts.add(start)
        return slot

    def _closed_changed(self) -> None:
        self._running = None

    def close_until(self, watermark: float) -> list[int]:
        """Close base buckets ending at or before ``watermark``; return their starts."""
        width = self.base_width
        horizon = bucket_start(watermark, width)
        if horizon <= self.closed_until:
            return []
        closing = sorted(s for s in self.open_starts if s < horizon)
        running = self._running
        self._closed_changed()
        base = self.levels[0]
        rows = []
        for start in closing:
            self.open_starts.discard(start)
            stats, sketch = base.bucket(start)
            rows.append(stats[:MIN])
            for level in self.levels[1:]:
                level.add_row(bucket_start(start, level.width), stats, sketch, mark=start + width)
        if running is not None:  # closing only appends to closed time: carry the running totals on
            running.advance(self.closed_until, horizon, closing, rows)
            self._running = running
        self.closed_until = horizon
        return closing

    def aggregate(self, start: int, end: int, with_sketch: bool = True) -> Aggregate:
        """Merge closed buckets covering [start, end); both on base-width boundaries."""
        stats = empty_stats()
        sketch = QuantileSketch(self.relative_accuracy) if with_sketch else None
        top = len(self.levels) - 1
        if with_sketch:
            # Prefer the levels that keep sketches when they still hold the span.
            for index in range(top, -1, -1):
                level = self.levels[index]
                if level.keeps_sketches and self._retained(level, start, sketches=True):
                    top = index
                    break
        for level, bucket in self._cover(start, end, top):
            held = level.bucket(bucket)
            if held is None:
                continue
            merge_stats_into(stats, held[0])
            if sketch is None:
                continue
            if held[1] is not None:
                sketch.merge(held[1])
            elif held[0][VALUES] > 0:
                sketch = None  # this bucket kept no sketch: no honest quantile for the span
        return Aggregate(start, end, stats, sketch)

    def totals(self, lo: int, hi: int) -> np.ndarray:
        """Additive columns (COUNT to SUM) over [lo, hi), open base buckets included.

        For closed time, the start is rounded out at the finest level that still
        holds it (exact within the base level's hour, to a minute within 6 hours,
        and so on), and each level's run is summed in numpy, so a 30-day span
        costs a few masks, not a loop over 720 buckets. Both ends on base-width
        boundaries.
        """
        row = np.zeros(MIN)
        closed = min(hi, self.closed_until)
        if lo < closed:
            row += self.closed_totals(lo, closed)
        if hi > self.closed_until:
            row += self.open_totals(lo, hi)
        return row

    def open_totals(self, lo: int, hi: int) -> np.ndarray:
        """Additive columns of the open base buckets starting in [lo, hi) (a handful, not a ring scan)."""
        row = np.zeros(MIN)
        base = self.levels[0]
        for start in self.open_starts:
            if lo <= start < hi:
                row += base.stats[base.slot_of(start), :MIN]
        return row

    def closed_totals(self, lo: int, hi: int) -> np.ndarray:
        """``totals`` of closed time: the difference of the running totals at its two ends, O(1).
        The start is rounded out (down) at the finest level that still holds it, the end (up) at
        the finest level that still holds its last bucket."""
        running = self._running
        if running is None:
            running = self._running = RunningTotals.of(self)
        since_start = running.since(*self._answering_level(lo))
        if hi == self.closed_until:  # what every SLO window asks: nothing is closed after it
            return since_start
        return since_start - running.since(*self._answering_end(hi))

    def _answering_level(self, lo: int) -> tuple[int, int]:
        """The finest level that still holds ``lo``'s bucket (the coarsest if none), and that bucket."""
        state = (self.closed_until, max(self.open_starts, default=-1))
        if self._oldest_held[0] != state:
            self._oldest_held = (state, [self._newest_held(level) - (level.slots - 1) * level.width
                                         for level in self.levels[:-1]])
        for index, oldest in enumerate(self._oldest_held[1]):  # what _retained says, per level
            width = self.levels[index].width
            start = int(lo // width) * width
            if start >= oldest:
                return index, start
        return len(self.levels) - 1, bucket_start(lo, self.levels[-1].width)

    def _answering_end(self, hi: int) -> tuple[int, int]:
        """The finest level that still holds the bucket ending at or after ``hi`` that contains its
        last second (the coarsest if none), and that bucket's end."""
        self._answering_level(hi)  # brings the oldest held buckets up to date
        for index, oldest in enumerate(self._oldest_held[1]):
            width = self.levels[index].width
            end = -(-hi // width) * width
            if end - width >= oldest:
                return index, end
        width = self.levels[-1].width
        return len(self.levels) - 1, -(-hi // width) * width

    def _cover(self, lo: int, hi: int, top: int) -> list[tuple[Level, int]]:
        """Buckets that tile [lo, hi), coarsest first, finer levels for the edges."""
        if lo >= hi:
            return []
        for index in range(top, -1, -1):
            level = self.levels[index]
            w = level.width
            first = -(-lo // w) * w
            last = (hi // w) * w
            if first >= last:
                continue
            inner = [(level, s) for s in range(first, last, w)]
            return self._edge(lo, first, index) + inner + self._edge(last, hi, index)
        base = self.levels[0]
        return [(base, s) for s in range(bucket_start(lo, base.width), hi, base.width)]

    def _edge(self, lo: int, hi: int, index: int) -> list[tuple[Level, int]]:
        if lo >= hi:
            return []
        finer = self._cover(lo, hi, index - 1) if index > 0 else []
        # The first bucket of a cover is its oldest, at the finest level used on the left,
        # which has the shortest retention: if it is held, every other bucket is.
        if finer and self._retained(*finer[0]):
            return finer
        # The edge is older than the finest levels: round it out at the finest
        # level that still holds it (1 minute, rather than a whole hour).
        for level in self.levels[:index + 1]:
            start = bucket_start(lo, level.width)
            if level is self.levels[index] or self._retained(level, start):
                return [(level, s) for s in range(start, hi, level.width)]
        raise AssertionError("unreachable: the edge's own level always answers")

    def _retained(self, level: Level, start: int, sketches: bool = False) -> bool:
        """Whether ``level`` still holds the bucket at ``start`` (held or empty, not expired)."""
        newest = self._newest_held(level)
        kept = level.sketch_slots if sketches else level.slots
        return start > newest - kept * level.width

    def _newest_held(self, level: Level) -> int:
        """The newest bucket ``level`` holds: the one before closed time, or on the base ring an open
        bucket past it (which may have taken the slot of the oldest closed one)."""
        newest = bucket_start(max(self.closed_until - 1, 0), level.width)
        if level is self.levels[0] and self.open_starts:
            newest = max(newest, max(self.open_starts))
        return newest

    def drain_dirty(self) -> list[tuple[int, int, dict]]:
        """(level, slot, state) of every slot changed since the last drain."""
        changed = []
        for index, level in enumerate(self.levels):
            for slot in sorted(level.dirty):
                changed.append((index, slot, level.slot_state(slot)))
            level.dirty.clear()
        return changed

    def header_state(self) -> dict:
        return {
            "v": STATE_VERSION,
            "resolutions": [[r.width, r.slots, r.sketch_slots] for r in self.resolutions],
            "accuracy": self.relative_accuracy,
            "closed_until": self.closed_until,
        }

    @classmethod
    def from_states(cls, header: dict, slots: list[tuple[int, int, dict]]) -> SeriesWindows:
        if header.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported window state version {header.get('v')!r}")
        resolutions = tuple(Resolution(w, n, k) for w, n, k in header["resolutions"])
        windows = cls(resolutions, header["accuracy"])
        windows.closed_until = header["closed_until"]
        for index, slot, state in slots:
            windows.levels[index].load_slot(slot, state)
        # Base buckets not closed as of the header are open, even when the slot
        # was persisted after the header (a torn checkpoint).
        base = windows.levels[0]
        windows.open_starts = {int(s) for s in base.starts[base.starts >= windows.closed_until]}
        return windows

    def to_state(self) -> dict:
        """Whole state as one dict (tests and tools; the daemon persists per slot)."""
        slots = [
            [index, slot, level.slot_state(slot)]
            for index, level in enumerate(self.levels)
            for slot in np.flatnonzero(level.starts >= 0).tolist()
        ]
        return {"header": self.header_state(), "slots": slots}

    @classmethod
    def from_state(cls, state: dict) -> SeriesWindows:
        return cls.from_states(state["header"], [tuple(s) for s in state["slots"]])

    def merge(self, other: SeriesWindows) -> None:
        """Fold another series' buckets into this one (same resolutions)."""
        if other.resolutions != self.resolutions:
            raise ValueError("cannot merge windows with different resolutions")
        for mine, theirs in zip(self.levels, other.levels):
            for slot in np.flatnonzero(theirs.starts >= 0).tolist():
                mine.add_row(int(theirs.starts[slot]), theirs.stats[slot], theirs.sketches[slot])
        self.open_starts |= other.open_starts
        self.closed_until = min(self.closed_until, other.closed_until)
        self._closed_changed()

    def nbytes(self) -> int:
        return sum(level.nbytes() for level in self.levels)
