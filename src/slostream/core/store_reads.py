"""Reads awaiting alignment, per owner of a ``WindowStore``: when the data of each was written, and
its newest event time. They are part of the clock the caller keeps: they do not mark an owner
changed (its measurements do)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Reads noted per owner (``note_reads``); one more merges the two oldest: the owner aligns a little later.
MAX_READS = 16


class AwaitingReads:
    """The ``WindowStore`` columns ``read_at``, ``read_ts``, ``read_count`` and ``aligned_ts``, per owner.

    A read is noted with the newest event time of *its own* data, and released by itself once the
    aligned time passes when it was written, whatever the order reads came in: an owner fed by a
    source far ahead of another holds a read of the fast source's data, noted late, next to reads of
    the slow one's, noted early; the slow one's release must not carry the fast one's event time."""

    def note_reads(self, owners: np.ndarray, at: float, newest: np.ndarray) -> None:
        """Note that the data of each of ``owners`` (unique), whose newest event time is ``newest``,
        was written by ``at``; a read noted at the same ``at`` as an owner's last merges into it."""
        count = self.read_count[owners]
        last = np.maximum(count - 1, 0)
        same = (count > 0) & (self.read_at[owners, last] == at)
        merged = owners[same]
        self.read_ts[merged, last[same]] = np.maximum(self.read_ts[merged, last[same]], newest[same])
        added, newest, count = owners[~same], newest[~same], count[~same]
        full = np.flatnonzero(count == MAX_READS)
        if full.size:  # the two oldest become one, written by the later and as new as the newer of them
            shifted = added[full]
            self.read_at[shifted, 1] = np.maximum(self.read_at[shifted, 0], self.read_at[shifted, 1])
            self.read_ts[shifted, 1] = np.maximum(self.read_ts[shifted, 0], self.read_ts[shifted, 1])
            self.read_at[shifted, :-1] = self.read_at[shifted, 1:]
            self.read_ts[shifted, :-1] = self.read_ts[shifted, 1:]
            count[full] -= 1
        self.read_at[added, count] = at
        self.read_ts[added, count] = newest
        self.read_count[added] = count + 1

    def release_reads(self, owners: np.ndarray, until: float) -> np.ndarray:
        """Release each owner's reads noted at or before ``until``; return each owner's ``aligned_ts``:
        the newest event time of the reads released so far."""
        count = self.read_count[owners]
        waiting = np.flatnonzero(count)
        if waiting.size:
            chosen, count = owners[waiting], count[waiting]
            at, ts = self.read_at[chosen], self.read_ts[chosen]
            noted = np.arange(MAX_READS) < count[:, None]
            released = noted & (at <= until)
            n = released.sum(axis=1)
            moved = np.flatnonzero(n)
            if moved.size:
                chosen, n, released, noted = chosen[moved], n[moved], released[moved], noted[moved]
                newest_released = np.where(released, ts[moved], -np.inf).max(1)
                self.aligned_ts[chosen] = np.maximum(self.aligned_ts[chosen], newest_released)
                kept_first = np.argsort(~(noted & ~released), axis=1, kind="stable")  # the rest, in order
                self.read_at[chosen] = np.take_along_axis(at[moved], kept_first, axis=1)
                self.read_ts[chosen] = np.take_along_axis(ts[moved], kept_first, axis=1)
                self.read_count[chosen] = count[moved] - n
        return self.aligned_ts[owners]

    def put_reads(self, owner: int, reads: Sequence[Sequence[float]], aligned_ts: float) -> None:
        """Restore an owner's reads (oldest first, [noted at, newest event time of its data]) and ``aligned_ts``."""
        reads = list(reads)[-MAX_READS:]
        self.read_count[owner] = len(reads)
        for slot, (at, ts) in enumerate(reads):
            self.read_at[owner, slot], self.read_ts[owner, slot] = at, ts
        self.aligned_ts[owner] = aligned_ts
