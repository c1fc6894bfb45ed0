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

Open base buckets are never closed early to make room. One whose ring slot still holds another open
bucket (the watermark waits for a lagging partition, or a burst spans more than the ring) is
*spilled*: kept aside, keyed by its start, until it closes, and persisted under ``SPILL_LEVEL``.
So an SLO counts whatever its series accept however far a watermark trails, at the memory of the
buckets actually holding data.
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
# The level field of a spilled open base bucket's persisted slot; its slot field is its start.
SPILL_LEVEL = -1


class Spilled:
    """An open base bucket the ring has no free slot for yet."""

    __slots__ = ("stats", "sketch", "mark")

    def __init__(self, stats: np.ndarray, sketch: QuantileSketch | None, mark: int):
        self.stats, self.sketch, self.mark = stats, sketch, mark

    def state(self, start: int) -> dict:
        return {"start": start, "stats": [float(x) for x in self.stats],
                "sketch": None if self.sketch is None else self.sketch.to_state(), "mark": self.mark}

    @classmethod
    def from_state(cls, state: dict) -> Spilled:
        sketch = state["sketch"]
        return cls(np.asarray(state["stats"], dtype=np.float64),
                   None if sketch is None else QuantileSketch.from_state(sketch), int(state["mark"]))

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
        self.open_starts: set[int] = set()  # in the base ring or spilled
        self.spilled: dict[int, Spilled] = {}  # start -> an open base bucket kept outside the ring
        self._spill_dirty: set[int] = set()  # spilled starts added, changed or gone since the last drain
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
        spilled = self.spilled.get(start) if slot is None else None
        merge_stats_into(base.stats[slot] if spilled is None else spilled.stats, row)
        if present.size:
            sketch = base.sketches[slot] if spilled is None else spilled.sketch
            if sketch is None:
                sketch = QuantileSketch(self.relative_accuracy)
                if spilled is None:
                    base.sketches[slot] = sketch
                else:
                    spilled.sketch = sketch
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
        slot = self._open_slot(start, offsets)
        row = self.spilled[start].stats if slot is None else self.levels[0].stats[slot]
        row[COUNT] += offsets.size
        row[OK_KNOWN] += judged
        row[OK] += good
        return True

    def _unheld(self, start: int, offsets: np.ndarray | None, *columns: np.ndarray):
        """Drop the measurements the base bucket already holds (a replay after a torn checkpoint)."""
        if offsets is not None and offsets.size and self._holds_some(start, offsets):
            fresh = offsets > self._mark_of(start)
            return offsets[fresh], tuple(c[fresh] for c in columns)
        return offsets, columns

    def _mark_of(self, start: int) -> int:
        """The last source offset the base bucket at ``start`` holds (-1: none, or not held)."""
        spilled = self.spilled.get(start)
        if spilled is not None:
            return spilled.mark
        base = self.levels[0]
        slot = base.slot_of(start)
        return int(base.marks[slot]) if base.starts[slot] == start else -1

    def _holds_some(self, start: int, offsets: np.ndarray) -> bool:
        """Whether the base bucket at ``start`` already holds the first of ``offsets`` (ascending)."""
        return self._mark_of(start) >= offsets[0]

    def too_old(self, start: int) -> bool:
        """Whether the base bucket at ``start`` can take nothing more: it is closed and its ring slot
        holds another bucket, newer or open (only open buckets spill: a closed one reopened
        outside its slot would lose its replay mark and be rolled up twice)."""
        base = self.levels[0]
        held = int(base.starts[base.slot_of(start)])
        return start < self.closed_until and held != start and (held > start or held in self.open_starts)

    def _open_slot(self, start: int, offsets: np.ndarray | None) -> int | None:
        """Claim the base bucket at ``start`` for new measurements and move its replay mark: its
        ring slot, or None when it is spilled (the slot holds another open bucket). Raises
        ValueError for a bucket ``too_old``."""
        if self.too_old(start):
            raise ValueError(f"bucket {start} is closed and past the base ring")
        base = self.levels[0]
        held = int(base.starts[base.slot_of(start)])
        if start < self.closed_until:
            self._closed_changed()
        mark = int(offsets[-1]) if offsets is not None and offsets.size else -1  # ascending
        self.open_starts.add(start)
        if start in self.spilled or (held != start and held in self.open_starts):
            spilled = self.spilled.setdefault(start, Spilled(empty_stats(), None, -1))
            spilled.mark = max(spilled.mark, mark)
            self._spill_dirty.add(start)
            return None
        slot = base._claim(start)
        base.marks[slot] = max(base.marks[slot], mark)
        return slot

    def open_bucket(self, start: int) -> tuple[np.ndarray, QuantileSketch | None, int]:
        """(stats, sketch, mark) of the open base bucket at ``start``."""
        spilled = self.spilled.get(start)
        if spilled is not None:
            return spilled.stats, spilled.sketch, spilled.mark
        base = self.levels[0]
        stats, sketch = base.bucket(start)
        return stats, sketch, int(base.marks[base.slot_of(start)])

    def _closed_changed(self) -> None:
        self._running = None

    def close_until(self, watermark: float) -> list[int]:
        """Close base buckets ending at or before ``watermark``; return their starts."""
        if watermark == -np.inf:  # a series still waiting for its first aligned data
            return []
        width = self.base_width
        horizon = bucket_start(watermark, width)
        if horizon <= self.closed_until:
            return []
        closing = sorted(s for s in self.open_starts if s < horizon)
        running = self._running
        self._closed_changed()
        rows = []
        for start in closing:
            self.open_starts.discard(start)
            stats, sketch, mark = self.open_bucket(start)
            if self.spilled.pop(start, None) is not None:
                self._spill_dirty.add(start)
                self._unspill(start, stats, sketch, mark)
            rows.append(stats[:MIN].copy())  # a spilled bucket closing after it may take its slot
            for level in self.levels[1:]:
                level.add_row(bucket_start(start, level.width), stats, sketch, mark=start + width)
        if running is not None:  # closing only appends to closed time: carry the running totals on
            running.advance(self.closed_until, horizon, closing, rows)
            self._running = running
        self.closed_until = horizon
        return closing

    def _unspill(self, start: int, stats: np.ndarray, sketch: QuantileSketch | None, mark: int) -> None:
        """Put a spilled bucket that just closed into its ring slot, unless an open or a newer
        bucket holds it (then the coarser levels answer for it, as for any bucket past the ring)."""
        base = self.levels[0]
        held = int(base.starts[base.slot_of(start)])
        if held > start or held in self.open_starts:
            return
        base.add_row(start, stats, sketch, mark)

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
        for start in self.open_starts:
            if lo <= start < hi:
                row += self.open_bucket(start)[0][:MIN]
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
        state = (self.closed_until, self._newest_in_ring())
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
        if level is self.levels[0]:
            newest = max(newest, self._newest_in_ring())
        return newest

    def _newest_in_ring(self) -> int:
        """The newest open bucket the base ring holds (-1 if none): spilled ones took no slot."""
        return max((s for s in self.open_starts if s not in self.spilled), default=-1)

    def drain_dirty(self) -> list[tuple[int, int, dict]]:
        """(level, slot, state) of every slot changed since the last drain."""
        changed = []
        # Coarsest first, spills last: a checkpoint torn part-way then never holds a base slot whose
        # earlier bucket's roll-up, or a spilled bucket's move into the ring, is not written yet.
        for index in range(len(self.levels) - 1, -1, -1):
            level = self.levels[index]
            for slot in sorted(level.dirty):
                changed.append((index, slot, level.slot_state(slot)))
            level.dirty.clear()
        for start in sorted(self._spill_dirty):
            spilled = self.spilled.get(start)
            changed.append((SPILL_LEVEL, start, None if spilled is None else spilled.state(start)))
        self._spill_dirty.clear()
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
        spills = []
        for index, slot, state in slots:
            if index == SPILL_LEVEL:
                spills.append(state)
            else:
                windows.levels[index].load_slot(slot, state)
        # Base buckets not closed as of the header are open, even when the slot
        # was persisted after the header (a torn checkpoint).
        base = windows.levels[0]
        windows.open_starts = {int(s) for s in base.starts[base.starts >= windows.closed_until]}
        for state in spills:
            start = int(state["start"])
            if start >= windows.closed_until and start not in windows.open_starts:
                windows.spilled[start] = Spilled.from_state(state)
                windows.open_starts.add(start)
            else:  # closed, or in the ring, before a torn checkpoint wrote its deletion
                windows._spill_dirty.add(start)
        return windows

    def to_state(self) -> dict:
        """Whole state as one dict (tests and tools; the daemon persists per slot)."""
        slots = [
            [index, slot, level.slot_state(slot)]
            for index, level in enumerate(self.levels)
            for slot in np.flatnonzero(level.starts >= 0).tolist()
        ]
        slots += [[SPILL_LEVEL, start, spilled.state(start)] for start, spilled in sorted(self.spilled.items())]
        return {"header": self.header_state(), "slots": slots}

    @classmethod
    def from_state(cls, state: dict) -> SeriesWindows:
        return cls.from_states(state["header"], [tuple(s) for s in state["slots"]])

    def nbytes(self) -> int:
        spilled = sum(b.stats.nbytes + (0 if b.sketch is None else b.sketch.nbytes()) + 64
                      for b in self.spilled.values())
        return sum(level.nbytes() for level in self.levels) + spilled
