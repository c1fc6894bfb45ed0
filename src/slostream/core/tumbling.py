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

from collections.abc import Mapping, Sequence

import numpy as np
import orjson

from .buckets import (
    COUNT,
    MAX,
    MIN,
    N_STATS,
    OK,
    OK_KNOWN,
    SUM,
    VALUES,
    Aggregate,
    bucket_start,
    empty_stats,
    merge_stats_into,
)
from .sketch import SPARSE_KEYS, QuantileSketch
from .windows import SeriesWindows

# Reads noted per owner (``note_reads``); more drop the oldest: the owner aligns a little later.
MAX_READS = 16
STATE_VERSION = 3  # 1: open base buckets; 2: open windows as JSON; 3: binary (``_HEAD``)
# A state of version 3: this head, then its reads awaiting alignment (pairs of noted time and newest
# event time, "<f8"), then its open windows (``_ROW``, ordered by length, then start),
# then the DDSketch keys of the logged ones in that order, then a JSON list of the sketch states of
# rows whose ``keys`` is -1 (binned sketches). Little-endian throughout.
_HEAD = np.dtype([("v", "<u2"), ("width", "<u4"), ("accuracy", "<f8"), ("closed_until", "<i8"), ("mark", "<i8"),
                  ("max_ts", "<f8"), ("watermark", "<f8"), ("aligned_ts", "<f8"), ("reads", "<u2"), ("rows", "<u4"),
                  ("keys", "<u4"), ("sketch_bytes", "<u4")])
_ROW = np.dtype([("length", "<i8"), ("start", "<i8"), ("keys", "<i4"), ("stats", "<f8", (N_STATS,))])
_START_SHIFT, _OWNER_SHIFT = 8, 40  # a window's lookup key: owner, start in base buckets, length index
STATS, QUANTILES = 1, 2  # what an owner's profile reads of a length
_OWNER_COLUMNS = ("closed_until", "mark", "due", "open_count", "profile", "changed", "emitted", "unwritten_from",
                  "in_use", "max_ts", "watermark", "last_activity", "read_at", "read_ts", "read_count", "aligned_ts")
_ROW_COLUMNS = ("stats", "row_start", "row_length", "row_owner", "row_key", "row_live", "row_quantiles", "row_log")


def _stats_from_state(stats: list) -> np.ndarray:
    """A stats row from JSON, which has no infinity: an empty min and max come back as null."""
    row = np.asarray(stats, dtype=np.float64)
    if np.isnan(row[MIN]):
        row[MIN] = np.inf
    if np.isnan(row[MAX]):
        row[MAX] = -np.inf
    return row


class Closed:
    """Windows one close completed, in columns, ordered by owner, then end, then length.

    ``quantiles[i]`` holds the clamped quantiles asked for (NaN where none: no values, or no sketch
    kept); ``aggregate(i)`` gives a window with its sketch, for readers of other quantiles.
    """

    __slots__ = ("owners", "starts", "lengths", "stats", "quantiles", "_keys", "_key_bounds", "_sketches",
                 "_accuracy")

    def __init__(self, owners, starts, lengths, stats, quantiles, keys, key_bounds, sketches, accuracy):
        self.owners, self.starts, self.lengths, self.stats, self.quantiles = owners, starts, lengths, stats, quantiles
        self._keys, self._key_bounds, self._sketches, self._accuracy = keys, key_bounds, sketches, accuracy

    def __len__(self) -> int:
        return len(self.owners)

    def aggregate(self, i: int) -> Aggregate:
        sketch = self._sketches.get(i)
        if sketch is None and self._key_bounds[i, 1] >= 0:
            sketch = QuantileSketch.from_keys(self._keys[self._key_bounds[i, 0]:self._key_bounds[i, 1]], self._accuracy)
        start = int(self.starts[i])
        return Aggregate(start, start + int(self.lengths[i]), self.stats[i], sketch)


class WindowStore:
    """The open tumbling windows of many series (owners), and their event-time clocks, in columns.

    Each owner has a profile: the window lengths its readers need, and whether each needs
    quantiles. ``add`` feeds measurements of many owners at once; ``close`` closes what their
    watermarks passed and returns the completed windows.
    """

    def __init__(self, width: int, relative_accuracy: float = 0.01):
        self.width = width
        self.relative_accuracy = relative_accuracy
        self._zero = QuantileSketch.zero_threshold(relative_accuracy)
        self.lengths: list[int] = []  # every length any profile reads; a row's length index points here
        self._profiles: dict[tuple, int] = {}
        self._reads = np.zeros((0, 0), dtype=np.int8)  # profile x length index -> 0, STATS or QUANTILES
        # Per owner.
        self.closed_until = np.zeros(0, dtype=np.int64)
        self.mark = np.zeros(0, dtype=np.int64)  # newest replay mark applied
        self.due = np.zeros(0)  # earliest end of an open window: no close completes anything before it
        self.open_count = np.zeros(0, dtype=np.int64)
        self.profile = np.zeros(0, dtype=np.int64)
        # Writing the state (``take_writes``): changed since the last call; changed in a way a replay
        # does not redo (a window completed, or the caller's judgement of one); the oldest boundary
        # since which its state holds changes not yet written (-1: none).
        self.changed = np.zeros(0, dtype=bool)
        self.emitted = np.zeros(0, dtype=bool)
        self.unwritten_from = np.zeros(0, dtype=np.int64)
        self.in_use = np.zeros(0, dtype=bool)  # not released
        # The owner's event-time clock, kept by the caller: newest event time, watermark, and the
        # wall time of its last measurement.
        self.max_ts = np.zeros(0)
        self.watermark = np.zeros(0)
        self.last_activity = np.zeros(0)
        # Reads awaiting the caller's alignment, oldest first: when each was noted, and the owner's
        # newest event time then; and the newest event time as of the reads released.
        self.read_at = np.zeros((0, MAX_READS))
        self.read_ts = np.zeros((0, MAX_READS))
        self.read_count = np.zeros(0, dtype=np.int64)
        self.aligned_ts = np.zeros(0)
        self._free_owners: list[int] = []
        self._owners = 0
        # Per row (an open window); the arrays have room for more than ``_rows``.
        self.stats = np.zeros((64, N_STATS))
        self.row_start = np.zeros(64, dtype=np.int64)
        self.row_length = np.zeros(64, dtype=np.int64)
        self.row_owner = np.zeros(64, dtype=np.int64)
        self.row_key = np.zeros(64, dtype=np.int64)  # the window's lookup key
        self.row_live = np.zeros(64, dtype=bool)
        self.row_quantiles = np.zeros(64, dtype=bool)
        self.row_log = np.zeros(64, dtype=np.int32)  # keys of the row in the log
        self._row_of: dict[int, int] = {}
        self._newest: dict[int, np.ndarray] = {}  # length -> per owner, a row to try before ``_row_of``
        self._free_rows: list[int] = []
        self._rows = 0
        self.sketches: dict[int, QuantileSketch] = {}  # rows past the log: many values, or non-positive ones
        # The key log of sparse windows.
        self._log_row = np.zeros(0, dtype=np.int32)
        self._log_key = np.zeros(0, dtype=np.int32)
        self._log_size = 0

    # --- owners -------------------------------------------------------------

    def new_owner(self, lengths: Mapping[int, bool]) -> int:
        for length in lengths:
            if length <= 0 or length % self.width:
                raise ValueError(
                    f"window length {length}s is not a positive multiple of the bucket width {self.width}s")
        if self._free_owners:
            owner = self._free_owners.pop()
        else:
            owner = self._owners
            self._owners += 1
            if owner >= len(self.closed_until):
                self._grow(_OWNER_COLUMNS, max(64, 2 * owner))
        self.closed_until[owner] = 0
        self.mark[owner] = -1
        self.due[owner] = np.inf
        self.open_count[owner] = 0
        self.changed[owner] = self.emitted[owner] = False
        self.unwritten_from[owner] = -1
        self.in_use[owner] = True
        self.read_count[owner] = 0
        self.max_ts[owner] = self.watermark[owner] = self.aligned_ts[owner] = -np.inf
        self.last_activity[owner] = 0.0
        self.profile[owner] = self._profile_of(lengths)
        return owner

    @property
    def owner_count(self) -> int:
        """Owners numbered so far (released ones included): per-owner columns are valid up to it."""
        return self._owners

    def owners(self) -> np.ndarray:
        """The owners not released, ascending."""
        return np.flatnonzero(self.in_use[:self._owners])

    def release(self, owner: int) -> None:
        """Forget an owner without open windows (evicted)."""
        if self.open_count[owner]:
            raise ValueError(f"owner {owner} still has {self.open_count[owner]} open windows")
        self.changed[owner] = self.emitted[owner] = self.in_use[owner] = False
        self.unwritten_from[owner] = -1
        self._free_owners.append(owner)

    def take_writes(self, boundary: int, stale_before: int) -> tuple[np.ndarray, int | None]:
        """The owners whose state is to be written now, ascending, and the oldest boundary whose
        changes the others still hold unwritten (None: none).

        Boundaries are the caller's numbered checkpoints; an owner changed since the last call holds
        unwritten changes from ``boundary`` on. It is written once something was emitted from its
        state (``emitted``: a replay would not emit it again), or once it has held changes since a
        boundary before ``stale_before``. The others wait: a replay from the oldest boundary they
        hold redoes their changes exactly (their replay marks skip what is written).

        >>> store = WindowStore(10)
        >>> a, b = store.new_owner({60: False}), store.new_owner({60: False})
        >>> store.add(np.array([a, b]), np.array([0, 0]), np.array([1.0, 2.0]), np.array([1, 1], dtype=np.int8))
        >>> store.take_writes(boundary=4, stale_before=0)
        (array([], dtype=int64), 4)
        >>> len(store.close(np.array([a]), np.array([60.0])))
        1
        >>> store.take_writes(boundary=5, stale_before=0)
        (array([0]), 4)
        >>> store.take_writes(boundary=6, stale_before=5)
        (array([1]), None)
        """
        used = self._owners
        changed, unwritten_from = self.changed[:used], self.unwritten_from[:used]
        unwritten_from[changed & (unwritten_from < 0)] = boundary
        changed[:] = False
        held = unwritten_from >= 0
        owners = np.flatnonzero(held & (self.emitted[:used] | (unwritten_from < stale_before)))
        unwritten_from[owners] = -1
        self.emitted[owners] = False
        still = unwritten_from[unwritten_from >= 0]
        return owners, int(still.min()) if still.size else None

    def _profile_of(self, lengths: Mapping[int, bool]) -> int:
        key = tuple(sorted((int(length), bool(q)) for length, q in lengths.items()))
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = len(self._profiles)
            for length, _ in key:
                if length not in self.lengths:
                    self.lengths.append(length)
            reads = np.zeros((len(self._profiles), len(self.lengths)), dtype=np.int8)
            reads[:self._reads.shape[0], :self._reads.shape[1]] = self._reads
            for length, quantiles in key:
                reads[profile, self.lengths.index(length)] = QUANTILES if quantiles else STATS
            self._reads = reads
        return profile

    def reads(self, owner: int) -> dict[int, bool]:
        row = self._reads[self.profile[owner]]
        return {length: bool(row[i] == QUANTILES) for i, length in enumerate(self.lengths) if row[i]}

    # --- reads awaiting alignment --------------------------------------------
    # Part of the clock the caller keeps: they do not mark an owner changed (its measurements do).

    def note_reads(self, owners: np.ndarray, at: float) -> None:
        """Note that the data of each of ``owners`` (unique) up to its newest event time was read by
        ``at``; a read noted at the same ``at`` as an owner's newest is merged into it."""
        count = self.read_count[owners]
        newest = self.read_at[owners, np.maximum(count - 1, 0)]
        same = (count > 0) & (newest == at)
        merged = owners[same]
        self.read_ts[merged, count[same] - 1] = self.max_ts[merged]
        added, count = owners[~same], count[~same]
        full = np.flatnonzero(count == MAX_READS)
        if full.size:
            shifted = added[full]
            self.read_at[shifted, :-1] = self.read_at[shifted, 1:]
            self.read_ts[shifted, :-1] = self.read_ts[shifted, 1:]
            count[full] -= 1
        self.read_at[added, count] = at
        self.read_ts[added, count] = self.max_ts[added]
        self.read_count[added] = count + 1

    def release_reads(self, owners: np.ndarray, until: float) -> np.ndarray:
        """Release each owner's oldest reads noted at or before ``until`` (up to the first noted
        later); return each owner's ``aligned_ts``: its newest event time as of the reads released."""
        count = self.read_count[owners]
        waiting = np.flatnonzero(count)
        if waiting.size:
            chosen, count = owners[waiting], count[waiting]
            at, ts = self.read_at[chosen], self.read_ts[chosen]
            slots = np.arange(MAX_READS)
            released = np.cumprod((slots < count[:, None]) & (at <= until), axis=1).astype(bool)
            n = released.sum(axis=1)
            moved = np.flatnonzero(n)
            if moved.size:
                chosen, n, released = chosen[moved], n[moved], released[moved]
                newest_released = np.where(released, ts[moved], -np.inf).max(1)
                self.aligned_ts[chosen] = np.maximum(self.aligned_ts[chosen], newest_released)
                shift = np.minimum(slots + n[:, None], MAX_READS - 1)
                self.read_at[chosen] = np.take_along_axis(at[moved], shift, axis=1)
                self.read_ts[chosen] = np.take_along_axis(ts[moved], shift, axis=1)
                self.read_count[chosen] = count[moved] - n
        return self.aligned_ts[owners]

    def put_reads(self, owner: int, reads: Sequence[Sequence[float]], aligned_ts: float) -> None:
        """Restore an owner's reads (oldest first, [noted at, newest event time then]) and ``aligned_ts``."""
        reads = list(reads)[-MAX_READS:]
        self.read_count[owner] = len(reads)
        for slot, (at, ts) in enumerate(reads):
            self.read_at[owner, slot], self.read_ts[owner, slot] = at, ts
        self.aligned_ts[owner] = aligned_ts

    # --- adding -------------------------------------------------------------

    def add(self, owners: np.ndarray, starts: np.ndarray, values: np.ndarray, oks: np.ndarray) -> None:
        """Add measurements: ``owners[i]``'s measurement in the base bucket at ``starts[i]``.

        ``values`` holds NaN where a measurement had no value; ``oks`` holds 1, 0, or -1 where a
        measurement had no ``ok``. Replays are the caller's to drop (``mark``).
        """
        if not owners.size:
            return
        closed = self.closed_until[owners]
        if (starts < closed).any():
            i = int(np.argmax(starts < closed))
            raise ValueError(f"bucket {starts[i]} is closed (closed until {closed[i]})")
        self.changed[owners] = True
        has_value = ~np.isnan(values)
        sketchable = values > self._zero  # False for NaN
        reads = self._reads[self.profile[owners]]
        columns = _stat_columns(values, oks, has_value)
        keys = None
        for index, length in enumerate(self.lengths):
            chosen = np.flatnonzero(reads[:, index])  # measurements of owners reading this length
            if not chosen.size:
                continue
            read, chosen_owners = reads[chosen, index], owners[chosen]
            window_starts = starts[chosen] - starts[chosen] % length
            lookup = (chosen_owners << _OWNER_SHIFT) | ((window_starts // self.width) << _START_SHIFT) | index
            unique, first, inverse = np.unique(lookup, return_index=True, return_inverse=True)
            rows = self._rows_for(unique, chosen_owners[first], window_starts[first], length, read[first] == QUANTILES)
            self._add_stats(rows, inverse, [column[chosen] for column in columns])
            wants = np.flatnonzero((read == QUANTILES) & has_value[chosen])
            if wants.size:
                if keys is None:
                    keys = QuantileSketch.positive_keys(np.where(sketchable, values, 1.0), self.relative_accuracy)
                at = chosen[wants]
                self._add_to_sketches(rows[inverse[wants]], values[at], keys[at], sketchable[at])

    def _rows_for(self, lookup: np.ndarray, owners: np.ndarray, starts: np.ndarray, length: int,
                  quantiles: np.ndarray) -> np.ndarray:
        """The rows of the windows ``lookup`` (unique), made where new."""
        newest = self._newest_row(length)
        rows = newest[owners]
        missed = np.flatnonzero((self.row_key[rows] != lookup) | ~self.row_live[rows])
        if missed.size:
            row_of = self._row_of
            rows[missed] = [row_of.get(k, -1) for k in lookup[missed].tolist()]
        new = np.flatnonzero(rows < 0)
        if new.size:
            made = self._allocate(new.size)
            rows[new] = made
            self.stats[made] = empty_stats()
            self.row_start[made] = starts[new]
            self.row_length[made] = length
            self.row_owner[made] = owners[new]
            self.row_key[made] = lookup[new]
            self.row_live[made] = True
            self.row_quantiles[made] = quantiles[new]
            self.row_log[made] = 0
            self._row_of.update(zip(lookup[new].tolist(), made.tolist()))
            newest[owners[new]] = made
            np.add.at(self.open_count, owners[new], 1)
            np.minimum.at(self.due, owners[new], (starts[new] + length).astype(np.float64))
        return rows

    def _grow(self, names: tuple[str, ...], size: int) -> None:
        for name in names:
            setattr(self, name, _grown(getattr(self, name), size))

    def _newest_row(self, length: int) -> np.ndarray:
        """Per owner, the row of its newest window of ``length`` (or a stale row): most measurements
        land in it, and it is found without a dict lookup."""
        newest = self._newest.get(length)
        if newest is None or len(newest) < len(self.closed_until):
            grown = np.zeros(len(self.closed_until), dtype=np.int64)
            if newest is not None:
                grown[:len(newest)] = newest
            newest = self._newest[length] = grown
        return newest

    def _allocate(self, n: int) -> np.ndarray:
        reused = [self._free_rows.pop() for _ in range(min(n, len(self._free_rows)))]
        fresh = n - len(reused)
        first = self._rows
        self._rows += fresh
        if self._rows > len(self.row_start):
            self._grow(_ROW_COLUMNS, max(64, 2 * self._rows))
        return np.concatenate([np.array(reused, dtype=np.int64), np.arange(first, first + fresh, dtype=np.int64)])

    def _add_stats(self, rows: np.ndarray, inverse: np.ndarray, columns: list[np.ndarray]) -> None:
        _, ok_known, ok, has_value, total, low, high = columns
        groups = rows.size
        stats = self.stats
        stats[rows, COUNT] += np.bincount(inverse, minlength=groups)
        stats[rows, OK_KNOWN] += np.bincount(inverse, ok_known, minlength=groups)
        stats[rows, OK] += np.bincount(inverse, ok, minlength=groups)
        stats[rows, VALUES] += np.bincount(inverse, has_value, minlength=groups)
        stats[rows, SUM] += np.bincount(inverse, total, minlength=groups)
        lowest = np.full(groups, np.inf)
        np.minimum.at(lowest, inverse, low)
        highest = np.full(groups, -np.inf)
        np.maximum.at(highest, inverse, high)
        stats[rows, MIN] = np.minimum(stats[rows, MIN], lowest)
        stats[rows, MAX] = np.maximum(stats[rows, MAX], highest)

    def _add_to_sketches(self, rows: np.ndarray, values: np.ndarray, keys: np.ndarray, sketchable: np.ndarray) -> None:
        """Values with a value, for rows whose readers need quantiles: keys into the log while a
        row has only a few positive ones, into its ``QuantileSketch`` past that."""
        held = np.fromiter((r in self.sketches for r in rows.tolist()), dtype=bool, count=rows.size) \
            if self.sketches else np.zeros(rows.size, dtype=bool)
        outgrown = np.unique(rows[~held & ~sketchable])  # a zero or negative value: bins from now on
        if outgrown.size:
            self._move_to_sketches(outgrown)
            held |= np.isin(rows, outgrown)
        logged = ~held
        if logged.any():
            self._append_log(rows[logged], keys[logged])
            counts = np.bincount(rows[logged])
            touched = np.flatnonzero(counts)
            self.row_log[touched] += counts[touched].astype(np.int32)
            full = touched[self.row_log[touched] > SPARSE_KEYS]
            if full.size:
                self._move_to_sketches(full)
        if held.any():
            order = np.argsort(rows[held], kind="stable")
            held_rows, held_values = rows[held][order], values[held][order]
            bounds = np.flatnonzero(np.diff(held_rows)) + 1
            for row, part in zip(held_rows[np.r_[0, bounds]].tolist(), np.split(held_values, bounds)):
                self.sketches[row].add_values(part)

    def _append_log(self, rows: np.ndarray, keys: np.ndarray) -> None:
        end = self._log_size + rows.size
        if end > len(self._log_row):
            size = max(1024, 2 * end)
            self._log_row = _grown(self._log_row, size)
            self._log_key = _grown(self._log_key, size)
        self._log_row[self._log_size:end] = rows
        self._log_key[self._log_size:end] = keys
        self._log_size = end

    def _log_of(self, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log entries of the flagged rows: (rows, keys), ordered by row, then arrival."""
        rows = self._log_row[:self._log_size]
        chosen = np.flatnonzero(flags[rows])
        order = np.argsort(rows[chosen], kind="stable")
        return rows[chosen][order], self._log_key[chosen][order]

    def _drop_log(self, flags: np.ndarray) -> None:
        rows = self._log_row[:self._log_size]
        keep = np.flatnonzero(~flags[rows])
        self._log_size = keep.size
        self._log_row[:keep.size] = rows[keep]
        self._log_key[:keep.size] = self._log_key[keep]

    def _flags(self, rows) -> np.ndarray:
        flags = np.zeros(len(self.row_start), dtype=bool)
        flags[rows] = True
        return flags

    def _move_to_sketches(self, rows: np.ndarray) -> None:
        flags = self._flags(rows)
        log_rows, log_keys = self._log_of(flags)
        bounds = np.searchsorted(log_rows, rows)
        ends = np.searchsorted(log_rows, rows, side="right")
        for row, a, b in zip(rows.tolist(), bounds.tolist(), ends.tolist()):
            self.sketches[row] = QuantileSketch.from_keys(log_keys[a:b], self.relative_accuracy)
        self.row_log[rows] = 0
        self._drop_log(flags)

    # --- closing ------------------------------------------------------------

    def close(self, owners: np.ndarray, watermarks: np.ndarray, levels: Sequence[float] = ()) -> Closed:
        """Close the base buckets of each owner ending at or before its watermark; return the
        windows completed, with their quantiles at ``levels``."""
        with np.errstate(invalid="ignore"):
            horizons = np.floor(watermarks / self.width) * self.width
        moved = horizons > self.closed_until[owners]
        owners, horizons = owners[moved], horizons[moved]
        if owners.size:
            np.maximum.at(self.closed_until, owners, horizons.astype(np.int64))
            self.changed[owners] = True
        if not owners.size or not (horizons >= self.due[owners]).any():
            return self._closed(np.zeros(0, dtype=np.int64), levels)
        used = self._rows
        ends = self.row_start[:used] + self.row_length[:used]
        rows = np.flatnonzero(self.row_live[:used] & (ends <= self.closed_until[self.row_owner[:used]]))
        rows = rows[np.lexsort((self.row_length[rows], ends[rows], self.row_owner[rows]))]
        closed = self._closed(rows, levels)
        flags = self._flags(rows)
        if self._log_size:
            self._drop_log(flags)
        for row in rows.tolist():
            self.sketches.pop(row, None)
        row_of = self._row_of
        for key in self.row_key[rows].tolist():
            del row_of[key]
        affected = self.row_owner[rows]
        self.row_live[rows] = False
        self._free_rows.extend(rows.tolist())
        np.subtract.at(self.open_count, affected, 1)
        touched = np.unique(affected)
        self.emitted[touched] = True
        self.due[touched] = np.inf
        still = np.flatnonzero(self.row_live[:used] & np.isin(self.row_owner[:used], touched))
        np.minimum.at(self.due, self.row_owner[still], ends[still].astype(np.float64))
        return closed

    def _closed(self, rows: np.ndarray, levels: Sequence[float]) -> Closed:
        stats = self.stats[rows]
        quantiles = np.full((rows.size, len(levels)), np.nan)
        key_bounds = np.full((rows.size, 2), -1, dtype=np.int64)
        keys = np.zeros(0, dtype=np.int32)
        sketches: dict[int, QuantileSketch] = {}
        wanted = self.row_quantiles[rows] & (stats[:, VALUES] > 0)
        if wanted.any():
            in_log = self.row_log[rows] > 0  # a row with values keeps them either in the log or in a sketch
            for i in np.flatnonzero(wanted & ~in_log).tolist():
                sketch = sketches[i] = self.sketches[int(rows[i])]
                if levels:
                    quantiles[i] = [np.nan if v is None else v for v in sketch.quantiles(levels)]
            logged = np.flatnonzero(wanted & in_log)
            if logged.size:
                log_rows, log_keys = self._log_of(self._flags(rows[logged]))
                # Sorted by row, then key: each row's keys in order, for ranks and lazy sketches.
                order = np.lexsort((log_keys, log_rows))
                log_rows, keys = log_rows[order], log_keys[order]
                first = np.searchsorted(log_rows, rows[logged])
                counts = np.searchsorted(log_rows, rows[logged], side="right") - first
                key_bounds[logged, 0], key_bounds[logged, 1] = first, first + counts
                if levels:
                    at = first[:, None] + np.floor(np.asarray(levels)[None, :] * (counts[:, None] - 1)).astype(np.int64)
                    quantiles[logged] = QuantileSketch.key_values(keys[at], self.relative_accuracy)
            with np.errstate(invalid="ignore"):
                np.clip(quantiles, stats[:, MIN, None], stats[:, MAX, None], out=quantiles)
        return Closed(self.row_owner[rows], self.row_start[rows], self.row_length[rows], stats, quantiles, keys,
                      key_bounds, sketches, self.relative_accuracy)

    # --- reading ------------------------------------------------------------

    def open_rows(self, owners: Sequence[int]) -> list[list[int]]:
        """Each owner's open rows, ordered by length, then start."""
        used = self._rows
        wanted = np.asarray(owners, dtype=np.int64)
        chosen = np.flatnonzero(self.row_live[:used] & np.isin(self.row_owner[:used], wanted))
        chosen = chosen[np.lexsort((self.row_start[chosen], self.row_length[chosen], self.row_owner[chosen]))]
        by_owner = self.row_owner[chosen]
        firsts, lasts = np.searchsorted(by_owner, wanted), np.searchsorted(by_owner, wanted, side="right")
        rows = chosen.tolist()
        return [rows[a:b] for a, b in zip(firsts.tolist(), lasts.tolist())]

    def encode(self, owners: np.ndarray) -> list[bytes]:
        """Each owner's persisted state (``STATE_VERSION``, see ``_HEAD``), built for all of them
        with a few numpy calls: a checkpoint writes thousands of series a second."""
        owners = np.asarray(owners, dtype=np.int64)
        if not owners.size:
            return []
        position = np.full(self._owners, -1, dtype=np.int64)
        position[owners] = np.arange(owners.size)
        live = np.flatnonzero(self.row_live[:self._rows])
        rows = live[position[self.row_owner[live]] >= 0]
        rows = rows[np.lexsort((self.row_start[rows], self.row_length[rows], position[self.row_owner[rows]]))]
        owner_of_row = position[self.row_owner[rows]]
        sketched = np.zeros(len(self.row_start), dtype=bool)
        sketched[list(self.sketches)] = True
        key_counts = np.where(sketched[rows], -1, self.row_log[rows])
        records = np.zeros(rows.size, dtype=_ROW)
        records["length"], records["start"] = self.row_length[rows], self.row_start[rows]
        records["keys"], records["stats"] = key_counts, self.stats[rows]
        keys = np.zeros(0, dtype="<i4")
        if self._log_size and rows.size:
            rank = np.full(len(self.row_start), -1, dtype=np.int64)
            rank[rows] = np.arange(rows.size)
            log_rank = rank[self._log_row[:self._log_size]]
            entries = np.flatnonzero(log_rank >= 0)
            keys = self._log_key[entries[np.argsort(log_rank[entries], kind="stable")]].astype("<i4")
        sketch_states: dict[int, list] = {}
        for i in np.flatnonzero(key_counts < 0).tolist():
            sketch_states.setdefault(int(owner_of_row[i]), []).append(self.sketches[int(rows[i])].to_state())
        sketch_bytes = {i: orjson.dumps(states) for i, states in sketch_states.items()}
        heads = np.zeros(owners.size, dtype=_HEAD)
        heads["v"], heads["width"], heads["accuracy"] = STATE_VERSION, self.width, self.relative_accuracy
        heads["closed_until"], heads["mark"] = self.closed_until[owners], self.mark[owners]
        heads["max_ts"], heads["watermark"] = self.max_ts[owners], self.watermark[owners]
        read_counts = self.read_count[owners]
        heads["aligned_ts"], heads["reads"] = self.aligned_ts[owners], read_counts
        held = np.arange(MAX_READS) < read_counts[:, None]
        reads = np.stack((self.read_at[owners], self.read_ts[owners]), axis=2)[held]
        read_bytes = reads.astype("<f8").tobytes()
        read_bounds = (np.r_[0, np.cumsum(read_counts)] * 16).tolist()
        row_bounds = np.searchsorted(owner_of_row, np.arange(owners.size + 1))
        key_bounds = np.r_[0, np.cumsum(np.bincount(owner_of_row, np.maximum(key_counts, 0), minlength=owners.size))]
        heads["rows"], heads["keys"] = np.diff(row_bounds), np.diff(key_bounds)
        for i, extra in sketch_bytes.items():
            heads["sketch_bytes"][i] = len(extra)
        head_bytes, row_bytes, key_bytes = heads.tobytes(), records.tobytes(), keys.tobytes()
        head_size = _HEAD.itemsize
        row_bounds = (row_bounds * _ROW.itemsize).tolist()
        key_bounds = (key_bounds.astype(np.int64) * 4).tolist()
        blobs = [b"".join((head_bytes[i * head_size:(i + 1) * head_size], read_bytes[read_bounds[i]:read_bounds[i + 1]],
                           row_bytes[row_bounds[i]:row_bounds[i + 1]], key_bytes[key_bounds[i]:key_bounds[i + 1]]))
                 for i in range(owners.size)]
        for i, extra in sketch_bytes.items():
            blobs[i] += extra
        return blobs

    def decode(self, owner: int, blob: bytes) -> None:
        """Restore an owner's state from ``encode``: its clock, horizon, mark and open windows."""
        head = _read_head(blob)
        self.closed_until[owner], self.mark[owner] = head["closed_until"], head["mark"]
        self.max_ts[owner], self.watermark[owner] = head["max_ts"], head["watermark"]
        offset = _HEAD.itemsize
        reads = np.frombuffer(blob, "<f8", count=2 * int(head["reads"]), offset=offset)
        offset += reads.nbytes
        self.put_reads(owner, reads.reshape(-1, 2).tolist(), float(head["aligned_ts"]))
        records = np.frombuffer(blob, _ROW, count=int(head["rows"]), offset=offset)
        offset += records.nbytes
        keys = np.frombuffer(blob, "<i4", count=int(head["keys"]), offset=offset)
        offset += keys.nbytes
        sketch_bytes = int(head["sketch_bytes"])
        sketch_states = iter(orjson.loads(blob[offset:offset + sketch_bytes]) if sketch_bytes else ())
        accuracy = float(head["accuracy"])
        first = 0
        for length, start, count, stats in records.tolist():
            sketch = None
            if count > 0:
                sketch = QuantileSketch.from_keys(keys[first:first + count].astype(np.int32), accuracy)
                first += count
            elif count < 0:
                sketch = QuantileSketch.from_state(next(sketch_states))
            self.put_window(owner, length, start, np.array(stats), sketch)

    def put_window(self, owner: int, length: int, start: int, stats: np.ndarray, sketch: QuantileSketch | None) -> None:
        """Merge a persisted window (or a base bucket of an older state) into the owner's open
        window holding it; dropped if the owner's readers no longer read its length."""
        reads = self.reads(owner)
        if length not in reads:
            return
        window_start = start - start % length
        index = self.lengths.index(length)
        lookup = np.array([(owner << _OWNER_SHIFT) | ((window_start // self.width) << _START_SHIFT) | index])
        row = int(self._rows_for(lookup, np.array([owner]), np.array([window_start]), length,
                                 np.array([reads[length]]))[0])
        merge_stats_into(self.stats[row], stats)
        if not reads[length] or sketch is None or not sketch.count:
            return
        if sketch.relative_accuracy != self.relative_accuracy:  # the accuracy setting changed: keys differ
            return
        keys = sketch.sparse_keys()
        if row not in self.sketches and keys is not None and self.row_log[row] + keys.size <= SPARSE_KEYS:
            self._append_log(np.full(keys.size, row, dtype=np.int32), keys)
            self.row_log[row] += keys.size
            return
        if row not in self.sketches:
            self._move_to_sketches(np.array([row]))
        self.sketches[row].merge(sketch)

    def pending_count(self, owner: int, length: int) -> int:
        used = self._rows
        rows = self.row_live[:used] & (self.row_owner[:used] == owner) & (self.row_length[:used] == length)
        return int(self.stats[:used][rows, COUNT].sum())


def _read_head(blob: bytes) -> np.void:
    version = int.from_bytes(blob[:2], "little")
    if version != STATE_VERSION or len(blob) < _HEAD.itemsize:
        raise ValueError(f"unsupported tumbling window state version {version!r}")
    return np.frombuffer(blob, _HEAD, count=1)[0]


def _stat_columns(values: np.ndarray, oks: np.ndarray, has_value: np.ndarray) -> list[np.ndarray]:
    """Per measurement, its share of each stats column (min and max: its value, or the identity)."""
    return [np.ones(values.size), (oks >= 0).astype(np.float64), (oks == 1).astype(np.float64),
            has_value.astype(np.float64), np.where(has_value, values, 0.0), np.where(has_value, values, np.inf),
            np.where(has_value, values, -np.inf)]


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    grown = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    grown[:len(array)] = array
    return grown


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
        base = ring.levels[0]
        for start in sorted(ring.open_starts):
            stats, sketch = base.bucket(start)
            for length in windows.lengths:
                windows.store.put_window(windows.owner, length, start, stats, sketch)
            windows.mark = max(windows.mark, int(base.marks[base.slot_of(start)]))
        return windows
