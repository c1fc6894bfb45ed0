"""Reads awaiting alignment, per owner of a ``WindowStore``: when each was noted, and the owner's
newest event time then. They are part of the clock the caller keeps: they do not mark an owner
changed (its measurements do)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Reads noted per owner (``note_reads``); more drop the oldest: the owner aligns a little later.
MAX_READS = 16


class AwaitingReads:
    """The ``WindowStore`` columns ``read_at``, ``read_ts``, ``read_count``, ``aligned_ts`` and
    ``max_ts``, per owner."""

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
