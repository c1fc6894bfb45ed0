"""One resolution of ``SeriesWindows``: a ring of buckets (stats rows, sketches for the newest
few), each marked with what it absorbed, so a replay adds nothing twice."""

from __future__ import annotations

import numpy as np

from .buckets import (
    Resolution,
    empty_stats,
    merge_stats_into,
)
from .sketch import QuantileSketch


class Level:
    __slots__ = ("width", "slots", "sketch_slots", "keeps_sketches", "starts", "stats", "sketches",
                 "marks", "dirty")

    def __init__(self, resolution: Resolution):
        self.width = resolution.width
        self.slots = resolution.slots
        self.sketch_slots = resolution.kept_sketches
        self.keeps_sketches = self.sketch_slots > 0
        self.starts = np.full(self.slots, -1, dtype=np.int64)
        self.stats = np.tile(empty_stats(), (self.slots, 1))
        self.sketches: list[QuantileSketch | None] = [None] * self.slots
        # Idempotency marks, so a replay after a torn checkpoint adds nothing twice:
        # base level, the last source offset in the bucket; coarser levels, the
        # end of the last base bucket rolled in.
        self.marks = np.full(self.slots, -1, dtype=np.int64)
        self.dirty: set[int] = set()

    def slot_of(self, start: int) -> int:
        return (start // self.width) % self.slots

    def _claim(self, start: int) -> int | None:
        slot = self.slot_of(start)
        if self.starts[slot] > start:
            return None  # older than this level's retention
        if self.starts[slot] != start:
            self.starts[slot] = start
            self.stats[slot] = empty_stats()
            self.sketches[slot] = None
            self.marks[slot] = -1
            self._drop_old_sketches(start)
        self.dirty.add(slot)
        return slot

    def _drop_old_sketches(self, newest: int) -> None:
        """Keep sketches only for the newest ``sketch_slots`` buckets (they dominate memory)."""
        if not 0 < self.sketch_slots < self.slots:
            return
        horizon = newest - self.sketch_slots * self.width
        for slot in np.flatnonzero((self.starts <= horizon) & (self.starts >= 0)).tolist():
            if self.sketches[slot] is not None:
                self.sketches[slot] = None
                self.dirty.add(slot)

    def add_row(self, start: int, stats: np.ndarray, sketch: QuantileSketch | None, mark: int = -1) -> None:
        slot = self._claim(start)
        if slot is None or (mark >= 0 and self.marks[slot] >= mark):
            return
        self.marks[slot] = max(self.marks[slot], mark)
        merge_stats_into(self.stats[slot], stats)
        if sketch is not None and self.keeps_sketches:
            if self.sketches[slot] is None:
                self.sketches[slot] = sketch.copy()
            else:
                self.sketches[slot].merge(sketch)

    def bucket(self, start: int) -> tuple[np.ndarray, QuantileSketch | None] | None:
        slot = self.slot_of(start)
        if self.starts[slot] != start:
            return None
        return self.stats[slot], self.sketches[slot]

    def slot_state(self, slot: int) -> dict:
        sketch = self.sketches[slot]
        return {
            "start": int(self.starts[slot]),
            "stats": [float(x) for x in self.stats[slot]],
            "sketch": None if sketch is None else sketch.to_state(),
            "mark": int(self.marks[slot]),
        }

    def load_slot(self, slot: int, state: dict) -> None:
        self.starts[slot] = state["start"]
        self.stats[slot] = np.asarray(state["stats"], dtype=np.float64)
        sketch = state["sketch"]
        self.sketches[slot] = None if sketch is None else QuantileSketch.from_state(sketch)
        self.marks[slot] = state["mark"]

    def nbytes(self) -> int:
        sketches = sum(s.nbytes() for s in self.sketches if s is not None)
        return self.starts.nbytes + self.stats.nbytes + self.marks.nbytes + sketches + 8 * self.slots
