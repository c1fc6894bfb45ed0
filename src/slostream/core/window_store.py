"""The open tumbling windows of many series, in columns (see ``tumbling``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .buckets import (
    COUNT,
    MAX,
    MIN,
    N_STATS,
    OK,
    OK_KNOWN,
    SUM,
    VALUES,
    empty_stats,
)
from .closed import Closed
from .sketch import QuantileSketch
from .store_codec import _OWNER_SHIFT, _START_SHIFT, StoreCodec
from .store_reads import MAX_READS, AwaitingReads
from .store_sketches import SparseKeyLog, grown

STATS, QUANTILES = 1, 2  # what an owner's profile reads of a length
_OWNER_COLUMNS = ("closed_until", "mark", "forward_mark", "due", "open_count", "profile", "changed", "emitted",
                  "unwritten_from", "in_use", "max_ts", "watermark", "last_activity", "read_at", "read_ts",
                  "read_count", "aligned_ts")
_ROW_COLUMNS = ("stats", "row_start", "row_length", "row_owner", "row_key", "row_live", "row_quantiles", "row_log")




class WindowStore(AwaitingReads, SparseKeyLog, StoreCodec):
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
        # Newest replay marks applied: of what was read from the partition's own log, and of what
        # other partitions forwarded (a log of its own: its offsets are not comparable).
        self.mark = np.zeros(0, dtype=np.int64)
        self.forward_mark = np.zeros(0, dtype=np.int64)
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
        self.mark[owner] = self.forward_mark[owner] = -1
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

    def discard(self, owner: int) -> None:
        """Forget an owner whatever it holds (a restore that failed half-way): its open windows are
        dropped unreported."""
        ends = self.open_ends(owner)
        if ends.size:
            self.closed_until[owner] = np.iinfo(np.int64).min // 2
            self.due[owner] = -np.inf
            self.close(np.array([owner]), np.array([float(ends.max() + self.width)]))
        self.release(owner)

    def open_ends(self, owner: int) -> np.ndarray:
        """The end of each open window of ``owner``."""
        used = self._rows
        rows = np.flatnonzero(self.row_live[:used] & (self.row_owner[:used] == owner))
        return self.row_start[rows] + self.row_length[rows]

    def take_writes(self, boundary: int, stale_before: int,
                    too_large: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, int | None]:
        """The owners whose state is to be written now, ascending, and the oldest boundary whose
        changes the others still hold unwritten (None: none).

        Boundaries are the caller's numbered checkpoints; an owner changed since the last call holds
        unwritten changes from ``boundary`` on. It is written once something was emitted from its
        state (``emitted``: a replay would not emit it again), or once it has held changes since a
        boundary before ``stale_before``, unless ``too_large`` (a mask of the owners due) says its
        record is more than the changelog takes. The others wait: a replay from the oldest boundary
        they hold redoes their changes exactly (their replay marks skip what is written).

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
        if too_large is not None and owners.size:
            owners = owners[~too_large(owners)]
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
            setattr(self, name, grown(getattr(self, name), size))

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
        # A left fold in arrival order, not a sum of partial sums: however a log is cut into
        # batches, a window's sum (and so its mean) comes out the same to the last bit.
        sums = stats[rows, SUM]
        np.add.at(sums, inverse, total)
        stats[rows, SUM] = sums
        lowest = np.full(groups, np.inf)
        np.minimum.at(lowest, inverse, low)
        highest = np.full(groups, -np.inf)
        np.maximum.at(highest, inverse, high)
        stats[rows, MIN] = np.minimum(stats[rows, MIN], lowest)
        stats[rows, MAX] = np.maximum(stats[rows, MAX], highest)

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

    def pending_count(self, owner: int, length: int) -> int:
        used = self._rows
        rows = self.row_live[:used] & (self.row_owner[:used] == owner) & (self.row_length[:used] == length)
        return int(self.stats[:used][rows, COUNT].sum())


def _stat_columns(values: np.ndarray, oks: np.ndarray, has_value: np.ndarray) -> list[np.ndarray]:
    """Per measurement, its share of each stats column (min and max: its value, or the identity)."""
    return [np.ones(values.size), (oks >= 0).astype(np.float64), (oks == 1).astype(np.float64),
            has_value.astype(np.float64), np.where(has_value, values, 0.0), np.where(has_value, values, np.inf),
            np.where(has_value, values, -np.inf)]
