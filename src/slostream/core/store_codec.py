"""The persisted state of a ``WindowStore`` owner (one series' windows and clock), encoded for many
owners at once."""

from __future__ import annotations

import numpy as np
import orjson

from .buckets import (
    N_STATS,
    merge_stats_into,
)
from .sketch import SPARSE_KEYS, QuantileSketch
from .store_reads import MAX_READS

# 1: open base buckets; 2: open windows as JSON; 3: binary (``_HEAD_V3``); 4: with the replay mark of
# forwarded measurements (``_HEAD``)
STATE_VERSION = 4
# A state of version 4: this head, then its reads awaiting alignment (pairs of noted time and newest
# event time, "<f8"), then its open windows (``_ROW``, ordered by length, then start),
# then the DDSketch keys of the logged ones in that order, then a JSON list of the sketch states of
# rows whose ``keys`` is -1 (binned sketches). Little-endian throughout.
_HEAD_V3 = np.dtype([("v", "<u2"), ("width", "<u4"), ("accuracy", "<f8"), ("closed_until", "<i8"), ("mark", "<i8"),
                     ("max_ts", "<f8"), ("watermark", "<f8"), ("aligned_ts", "<f8"), ("reads", "<u2"), ("rows", "<u4"),
                     ("keys", "<u4"), ("sketch_bytes", "<u4")])
_HEAD = np.dtype([*((name, _HEAD_V3.fields[name][0]) for name in _HEAD_V3.names), ("forward_mark", "<i8")])
_ROW = np.dtype([("length", "<i8"), ("start", "<i8"), ("keys", "<i4"), ("stats", "<f8", (N_STATS,))])
_START_SHIFT, _OWNER_SHIFT = 8, 40  # a window's lookup key: owner, start in base buckets, length index


class StoreCodec:
    """``encode`` and ``decode`` of a ``WindowStore``'s owners."""

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
        heads["forward_mark"] = self.forward_mark[owners]
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
        # Version 3 knew one log: what it held forwarded came through the partition's own.
        self.forward_mark[owner] = head["forward_mark"] if "forward_mark" in head.dtype.names else -1
        self.max_ts[owner], self.watermark[owner] = head["max_ts"], head["watermark"]
        offset = head.dtype.itemsize
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


def _read_head(blob: bytes) -> np.void:
    version = int.from_bytes(blob[:2], "little")
    dtype = {3: _HEAD_V3, STATE_VERSION: _HEAD}.get(version)
    if dtype is None or len(blob) < dtype.itemsize:
        raise ValueError(f"unsupported tumbling window state version {version!r}")
    return np.frombuffer(blob, dtype, count=1)[0]
