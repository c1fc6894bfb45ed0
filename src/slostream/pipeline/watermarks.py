"""Where each series' watermark goes: with a batch of its measurements, and when time passes.

A series' watermark trails its newest event time by the grace, but only as far as every partition
has read (``alignment``): data written before the aligned time counts, newer data waits, however
long that is (its open windows and SLO buckets hold it; ``core.windows`` spills what an SLO's ring
cannot). Only a partition whose reading has stalled is waited for no longer. Workers read no further
than their read-ahead limits (``alignment.read_ahead_limits``), which bounds the data held open
where record time follows event time. A quiet series' watermark runs on at wall speed
(``core.watermark``).
"""

from __future__ import annotations

import numpy as np

from slostream.core.watermark import idle_watermark, running_max_before
from slostream.core.window_store import WindowStore
from slostream.pipeline.types import PipelineConfig


def per_key(column: np.ndarray, owners: np.ndarray, default) -> np.ndarray:
    """A store column per key of a batch; ``default`` for a key without a series (owner -1)."""
    values = np.full(owners.size, default, dtype=column.dtype)
    held = owners >= 0
    values[held] = column[owners[held]]
    return values


def of_batch(config: PipelineConfig, store: WindowStore, aligned_until: float, ids: np.ndarray, owners: np.ndarray,
             ts: np.ndarray, written: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The watermark of each element's series before and after it, and the series' newest event
    time before it (elements ``ts`` of series ``ids``, held by window ``owners``, -1 if new); the
    batch was written by ``written``."""
    grace = config.grace_s
    mark0 = per_key(store.watermark, owners, -np.inf)[ids]
    newest0 = per_key(store.max_ts, owners, -np.inf)
    newest_before, _ = running_max_before(ids, ts, newest0)
    if aligned_until >= written:
        # The batch is aligned; a series still holding data that another source's reading has not
        # aligned yet (a faster source's, written later) follows only the data that is: the reads
        # released, and this batch.
        base = newest0.copy()
        awaiting = np.flatnonzero(owners >= 0)
        awaiting = awaiting[store.read_count[owners[awaiting]] > 0]
        if awaiting.size:
            released = store.release_reads(owners[awaiting], aligned_until)
            still = store.read_count[owners[awaiting]] > 0
            base[awaiting[still]] = released[still]
        safe_before, _ = running_max_before(ids, ts, base)
        safe_after = np.maximum(safe_before, ts)
    else:
        aligned = np.full(owners.size, -np.inf)
        held = np.flatnonzero(owners >= 0)
        aligned[held] = store.release_reads(owners[held], aligned_until)
        safe_before = safe_after = aligned[ids]

    return np.maximum(mark0, safe_before - grace), np.maximum(mark0, safe_after - grace), newest_before


def advance(config: PipelineConfig, store: WindowStore, owners: np.ndarray, now: float, idle: bool,
            aligned_until: float) -> np.ndarray:
    """Move the watermarks of window ``owners`` as far as alignment (and, with ``idle``, quiet at
    wall time ``now``) allows; the indices into ``owners`` of those that moved."""
    watermark, max_ts = store.watermark[owners], store.max_ts[owners]
    marks = np.maximum(watermark, max_ts - config.grace_s)
    if idle:
        marks = idle_watermark(max_ts, marks, now - store.last_activity[owners], config.grace_s, config.idle_after_s)
    awaiting = np.flatnonzero(store.read_count[owners])
    if awaiting.size:
        aligned = store.release_reads(owners[awaiting], aligned_until)
        still = store.read_count[owners[awaiting]] > 0  # data not every partition has read past yet
        held_back = awaiting[still]  # as far as the aligned data
        marks[held_back] = np.maximum(watermark[held_back], aligned[still] - config.grace_s)
    moved = np.flatnonzero(marks > watermark)
    store.watermark[owners[moved]] = marks[moved]
    return moved
