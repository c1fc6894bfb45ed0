"""What a partition reads: decoding producers' records, numbering their series, and sending each
measurement that belongs to another partition's series on to its owner through the repartition
topic (``ownership``); taking in what other partitions forwarded here, less what a replaying source
sent before and what no source could have sent."""

from __future__ import annotations

import operator

import numpy as np

from slostream.core.measurement import Columns, MeasurementDecoder, Reason, Rejection
from slostream.pipeline import rows
from slostream.pipeline.alignment import written_by
from slostream.pipeline.envelopes import deadletter_event
from slostream.pipeline.ownership import (
    MAX_FORWARD_BYTES,
    MAX_FORWARD_SERIES,
    Owners,
    decode_forwarded,
    encode_forwarded,
    forward_header,
)
from slostream.pipeline.types import Forward, Output, PipelineConfig, SourceRecord

_ID, _VALUE, _TIMESTAMP = (operator.attrgetter(name) for name in ("id", "value", "timestamp"))
_SERIES_KEY = operator.attrgetter("service", "metric")
# Forwarded records are cut to hold at most this many bytes' worth of measurements each.
FORWARD_BYTES_PER_MEASUREMENT = 40


class Intake:
    """Decoding, series numbering and forwarding of one partition."""

    def __init__(self, partition: int, config: PipelineConfig):
        self.partition = partition
        self.config = config
        self.decoder = MeasurementDecoder(config.max_record_bytes, config.max_future_skew_s, config.max_name_bytes,
                                          config.max_labels)
        self.owners = Owners(config.partitions)
        self.forward_marks: dict[int, int] = {}  # source partition -> highest forwarded element applied
        self.now = 0.0  # wall time of the batch being read

    def read(self, records: list[SourceRecord], chosen: list[int], record_offsets: np.ndarray,
              record_times: np.ndarray, out: Output) -> list[rows.Rows]:
        """Decode the records read from producers; window what this partition takes directly and
        forward the rest to its owner.

        Records keyed by their service and read on its owner are windowed directly (the fast path).
        Every other measurement goes to its owner through the topic, this partition included: then
        all of a series' measurements reach the owner in the order their source partitions read
        them, interleaved as they are read, so an owner catching up on a long backlog of its own
        partition does not run ahead of the other partitions' share of the same series."""
        whole = len(chosen) == len(records)
        chosen_records = records if whole else [records[i] for i in chosen]
        batch = self.decoder.decode(list(map(_VALUE, chosen_records)), list(map(_TIMESTAMP, chosen_records)),
                                    self.now)
        cols = batch.columns
        if not whole:  # record numbers of the batch, not of the decoded subset
            index = np.asarray(chosen, dtype=np.int64)
            cols.record = index[cols.record]
        for rejection in batch.rejections:
            record = chosen[rejection.record]
            out.deadletter.append(deadletter_event(self.config, records[record], rejection))
        if not len(cols):
            return []
        ids, keys = self.number(cols.measurements)
        if self.config.partitions > 1:
            owners = np.fromiter((self.owners(key[0]) for key in keys), dtype=np.int64, count=len(keys))[ids]
            direct = (owners == self.partition) & self._keyed_by_service(records, cols, ids, keys)
            if not direct.all():
                self._forward(cols, record_offsets, record_times, owners, ~direct, ids, keys, out)
                cols = cols.select(direct)
                if not len(cols):
                    return []
                used, ids = np.unique(ids[direct], return_inverse=True)
                ids, keys = ids.reshape(-1), [keys[i] for i in used.tolist()]
        return [rows.from_columns(cols, np.full(len(cols), rows.DIRECT, dtype=np.int64), ids, keys, record_offsets)]

    def receive(self, record: SourceRecord, number: int, source: int, source_end: int,
                 out: Output) -> tuple[list[rows.Rows], float | None]:
        """The measurements another partition (or this one) forwarded, less those already applied
        (the source replayed after a crash), and when their source records were written. A forward
        naming a position at or past ``source_end`` (the next offset of the source partition) is
        refused whole."""
        try:
            forwarded = decode_forwarded(record.value)
        except ValueError as exc:
            self.unreadable(record, f"forwarded from partition {source}", exc, out)
            return [], None
        columns = forwarded.columns()
        positions = columns["positions"]
        if positions.size and int(positions.max()) >= source_end * rows.ELEMENTS_PER_RECORD:
            named = int(positions.max()) // rows.ELEMENTS_PER_RECORD
            message = (f"forward from partition {source} names offset {named}, but that partition ends at "
                       f"{source_end}: no worker forwards what it has not read")
            out.deadletter.append(deadletter_event(self.config, record,
                                                   Rejection(0, None, Reason.FORWARD_BEYOND_SOURCE, message)))
            return [], None
        mark = self.forward_marks.get(source, -1)
        fresh = positions > mark
        out.forward_duplicates += int(positions.size - fresh.sum())
        if positions.size:
            self.forward_marks[source] = max(mark, int(positions.max()))
        if not fresh.any():
            return [], None
        return ([rows.from_forwarded(forwarded, columns, fresh, number, record.offset, source, self.config.label_keys)],
                forwarded.written)

    @staticmethod
    def _keyed_by_service(records: list[SourceRecord], cols: Columns, ids: np.ndarray,
                          series_keys: list[tuple]) -> np.ndarray:
        """Whether each measurement came in a record keyed by its own service (the services come
        from the batch's series numbering, not from another pass over the measurements)."""
        if all(r.key is None for r in records):
            return np.zeros(len(cols), dtype=bool)
        keys = np.array([None if r.key is None else r.key.decode("utf-8", "replace") for r in records], dtype=object)
        services = np.array([key[0] for key in series_keys], dtype=object)[ids]
        return keys[cols.record] == services

    def _forward(self, cols: Columns, record_offsets: np.ndarray, record_times: np.ndarray, owners: np.ndarray,
                 routed: np.ndarray, ids: np.ndarray, keys: list[tuple], out: Output) -> None:
        """Records of columns per owner (split when large), in source order. Event times and when
        the source records were written are explicit: the forwarded record's own timestamp is not
        the original's."""
        per_record = max(1, min(MAX_FORWARD_BYTES, self.config.max_record_bytes) // FORWARD_BYTES_PER_MEASUREMENT)
        label_keys = self.config.label_keys
        # Outcome and id are rare: each is read once for the batch.
        outcomes = rows.outcome_column(cols.measurements)
        names = list(map(_ID, cols.measurements))
        with_names = names.count(None) < len(names)
        for owner in np.unique(owners[routed]).tolist():
            every = np.flatnonzero(routed & (owners == owner))
            opened = np.zeros(every.size, dtype=np.int64)
            opened[np.unique(ids[every], return_index=True)[1]] = 1
            series_seen = np.cumsum(opened)  # series first seen up to each measurement
            first = 0
            while first < every.size:
                before = int(series_seen[first - 1]) if first else 0
                stop = min(first + per_record, int(np.searchsorted(series_seen, before + MAX_FORWARD_SERIES, "right")))
                idx = every[first:stop]
                first = stop
                used, local = np.unique(ids[idx], return_inverse=True)
                table = [(keys[i][0], keys[i][1], list(keys[i][2]) if label_keys else []) for i in used.tolist()]
                positions = (record_offsets[cols.record[idx]] * rows.ELEMENTS_PER_RECORD
                             + np.maximum(cols.position[idx], 0))
                value = encode_forwarded(table, local.reshape(-1), cols.ts[idx], cols.values[idx], cols.oks[idx],
                                         outcomes[idx], positions,
                                         [names[i] for i in idx.tolist()] if with_names else None,
                                         written_by(float(record_times[cols.record[idx]].max()), self.now))
                out.forwards.append(Forward(owner, value, [forward_header(self.partition)], idx.size))
            out.forwarded += every.size

    def number(self, ms: list) -> tuple[np.ndarray, list[tuple]]:
        """A dense series number per measurement (in order of first occurrence), and each number's
        series key.

        Each element maps to the position of the first occurrence of its key, all in C (``map``
        over ``dict.setdefault``); the dict's values, in insertion order, are then the first
        occurrences, so a scatter renumbers them densely without sorting. Done once per batch,
        however the batch is cut.
        """
        n = len(ms)
        label_keys = self.config.label_keys
        if label_keys:
            keys = [(m.service, m.metric, tuple((m.labels or {}).get(k, "") for k in label_keys)) for m in ms]
        else:
            keys = map(_SERIES_KEY, ms)
        first_of: dict[tuple, int] = {}
        codes = np.fromiter(map(first_of.setdefault, keys, range(n)), dtype=np.int64, count=n)
        dense = np.empty(n, dtype=np.int64)
        dense[np.fromiter(first_of.values(), dtype=np.int64, count=len(first_of))] = np.arange(len(first_of))
        return dense[codes], list(first_of)

    def unreadable(self, record: SourceRecord, marked_as: str, exc: ValueError, out: Output) -> None:
        """Dead-letter a record of the repartition log that slostream cannot use."""
        message = f"record marked as {marked_as} cannot be read: {exc}"
        out.deadletter.append(deadletter_event(self.config, record, Rejection(0, None, Reason.INVALID_JSON, message)))
