"""Per-partition orchestration: records in, SLI, alert, breach, dead-letter and forwarded records out. No I/O.

Each series has its own event-time clock (``core.watermark``): lateness and window closing follow
the series' own newest event time, never that of other services sharing the partition. Each
series and SLO is owned by one partition (``ownership``); measurements read elsewhere are
forwarded to their owner, and a series closes only what every partition has read past
(``alignment``).

Effectively-once state: every base bucket remembers the last source offset it
holds and every coarser bucket the last base bucket it absorbed; the partition
checkpoint, written last, remembers the offset up to which everything was
persisted. After a crash the consumer resumes at the committed offset (never
past the checkpoint) and each bucket skips what it already holds, so counts come
out exact even when the crash tore a checkpoint in half.
"""

from __future__ import annotations

import base64
import operator
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import orjson

from slostream.core.alerts import AlertBook, AlertEvent, Condition
from slostream.core.control import Command, CommandError
from slostream.core.events import cloud_event, event_id, event_id_of_text
from slostream.core.measurement import Columns, MeasurementDecoder, Reason, Rejection
from slostream.core.objectives import GoodRule, Policy, Slo, Tally
from slostream.core.policy import PolicyWatch, aggregate_value
from slostream.core.tracker import SloTracker
from slostream.core.tumbling import Closed, TumblingWindows, WindowStore
from slostream.core.watermark import idle_watermark, running_max_before
from slostream.core.windows import (
    COUNT,
    MAX,
    MIN,
    OK,
    OK_KNOWN,
    SUM,
    VALUES,
    Aggregate,
    SeriesWindows,
    bucket_start,
)
from slostream.pipeline import rows, state_keys
from slostream.pipeline.alignment import (
    PROGRESS_HEADER,
    Alignment,
    decode_progress,
    encode_progress,
    note_time,
    progress_header,
    read_until_claim,
    written_by,
)
from slostream.pipeline.drift import SeriesDrift, drift_event
from slostream.pipeline.ownership import (
    FORWARD_HEADER,
    MAX_FORWARD_BYTES,
    MAX_FORWARD_SERIES,
    Owners,
    decode_forwarded,
    encode_forwarded,
    forward_header,
    header_partition,
)
from slostream.pipeline.types import (
    EVALUATION_INTERVAL_S,
    RELATIVE_ACCURACY,
    Forward,
    Output,
    PipelineConfig,
    SourceRecord,
)

_OUTCOME, _ID, _VALUE, _TIMESTAMP = (operator.attrgetter(name) for name in ("outcome", "id", "value", "timestamp"))
_SERIES_KEY = operator.attrgetter("service", "metric")
# 3: reads awaiting alignment per series, progress per partition; 4: tumbling windows in the header;
# 5: a series' record is binary (``_series_record``); 6: with its drift state as bytes of its own.
STATE_VERSION = 6
_RECORD_VERSION = bytes((STATE_VERSION,))
# Forwarded records are cut to hold at most this many bytes' worth of measurements each.
FORWARD_BYTES_PER_MEASUREMENT = 40
# Series a tick advances between yields to the worker's event loop (0.1-0.2 s of closes at most).
TICK_SLICE_SERIES = 2000
# A series' changes wait unwritten for at most this many report windows of wall time (``checkpoint``).
UNWRITTEN_REPORT_WINDOWS = 2
QUANTILE_NAMES, QUANTILE_LEVELS = ("p50", "p90", "p95", "p99"), (0.5, 0.9, 0.95, 0.99)


class _Clock:
    """A series' clock field, kept in the column of the same name of its window store."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, series: Series, owner=None) -> float:
        windows = series.windows
        return float(getattr(windows.store, self.name)[windows.owner])

    def __set__(self, series: Series, value: float) -> None:
        windows = series.windows
        getattr(windows.store, self.name)[windows.owner] = value


class Series:
    """A series held by a partition. Its event-time clock lives in its window store's columns, so a
    batch or a tick moves thousands of clocks with a few numpy calls."""

    __slots__ = ("ident", "key", "service", "metric", "labels", "windows", "last_report", "trackers", "watches",
                 "drift")

    def __init__(self, ident: tuple, key: str, service: str, metric: str, labels: dict,
                 windows: TumblingWindows):
        self.ident = ident  # the in-memory lookup key
        self.key = key
        self.service = service
        self.metric = metric
        self.labels = labels
        self.windows = windows
        # The newest SLI report as JSON: a scrape reads it, a checkpoint writes it as it is.
        self.last_report: bytes | None = None
        self.trackers: list[SloTracker] = []  # SLOs this series feeds
        self.watches: list[PolicyWatch] = []  # policies watching this series
        self.drift: SeriesDrift | None = None  # its drift watches, unless drift is off for it

    max_ts = _Clock()  # newest event time seen
    watermark = _Clock()  # max_ts - grace, or later when idle
    last_activity = _Clock()  # wall time of the last measurement

    def header(self) -> dict:
        """The persisted state apart from the windows and clock (the window store's: reads awaiting
        alignment included)."""
        return {
            "service": self.service,
            "metric": self.metric,
            "labels": self.labels,
            "last_report": None if self.last_report is None else orjson.Fragment(self.last_report),
            "watches": {w.policy.name: w.to_state() for w in self.watches},
        }


class IdleClock:
    """The event-time clock of an SLO none of whose series is held any more (all evicted): it runs
    on at wall speed like an idle series', so the SLO is still judged and its no-data alert fires."""

    __slots__ = ("max_ts", "watermark", "last_activity")

    def __init__(self, max_ts: float, watermark: float, last_activity: float):
        self.max_ts = max_ts
        self.watermark = watermark
        self.last_activity = last_activity


class PartitionProcessor:
    """The series and SLOs one measurement partition owns, their clocks, and the offsets applied."""

    def __init__(self, partition: int, config: PipelineConfig, now: float):
        if config.report_window_s % config.resolutions[0].width:
            raise ValueError("report_window_s must be a multiple of the base bucket width")
        self.partition = partition
        self.config = config
        self.decoder = MeasurementDecoder(config.max_record_bytes, config.max_future_skew_s)
        self.owners = Owners(config.partitions)
        self.series: dict[tuple, Series] = {}
        self.store = WindowStore(config.resolutions[0].width, RELATIVE_ACCURACY)  # every series' windows
        self._series_of_owner: dict[int, Series] = {}
        self.applied_offset = -1  # last source offset fully processed
        self.forward_marks: dict[int, int] = {}  # source partition -> highest forwarded element applied
        self.alignment = Alignment(config.partitions)  # every partition's progress, as read here
        self.read_through = -np.inf  # every record appended to this partition before it is read (alignment)
        self._aligned_applied = -np.inf  # the aligned time align_parts last closed the waiting series up to
        self.newest_event_ts = -np.inf  # newest event time of any series here (control commands, metrics)
        self.now = now  # wall time of the last batch or tick
        self.slos_for: dict[tuple[str, str], list[Slo]] = {}
        for slo in config.slos:
            self.slos_for.setdefault((slo.service, slo.metric), []).append(slo)
        self.policies_for: dict[tuple[str, str], list[Policy]] = {}
        for policy in config.policies:
            self.policies_for.setdefault((policy.service, policy.metric), []).append(policy)
        self.trackers: dict[str, SloTracker] = {}
        self.slo_sources: dict[tuple[str, str], list[Series]] = {}  # (service, metric) -> series feeding SLOs
        self.book = AlertBook(config.alert_cooldown_s, config.escalate_after_s)
        self.control_offset = -1  # last control command applied
        self._book_dirty = False
        self._touched: set[str] = set()  # trackers with news since their last evaluation
        self._deleted_keys: list[str] = []  # state keys to delete at the next checkpoint (evicted, old layout)
        self.idle_clocks: dict[tuple[str, str], IdleClock] = {}  # SLOs whose series were all evicted
        self._last_evaluation = -np.inf  # wall time
        # Checkpoints are numbered; each boundary keeps when it was taken and what a replay from it
        # starts with, from the oldest whose changes some series holds unwritten on.
        self._checkpoint_number = 0
        self._boundaries: dict[int, tuple[float, dict]] = {0: (now, self._replay_state())}

    # --- processing -------------------------------------------------------

    def process(self, records: list[SourceRecord], now: float) -> Output:
        out = Output()
        fresh = [r for r in records if r.offset > self.applied_offset]
        if not fresh:
            return out
        self.now = now
        # Cut at progress records: what follows one is judged with it applied, however the log is
        # cut into batches.
        start = 0
        for i, record in enumerate(fresh):
            source = header_partition(record.headers, PROGRESS_HEADER) if record.headers else None
            if source is not None:
                self._measurements(fresh[start:i], out, now)
                self._progress(record, source, out)
                start = i + 1
        self._measurements(fresh[start:], out, now)
        self.applied_offset = fresh[-1].offset
        self.read_through = max(self.read_through, written_by(max(r.timestamp for r in fresh), now))
        if self._touched and now - self._last_evaluation >= EVALUATION_INTERVAL_S:
            self._evaluate(out, self._touched)
            self._last_evaluation = now
        return out

    def _measurements(self, records: list[SourceRecord], out: Output, now: float) -> None:
        if not records:
            return
        record_offsets = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
        record_times = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=len(records))
        origins = [header_partition(r.headers, FORWARD_HEADER) if r.headers else None for r in records]
        parts = []
        read_here = [i for i, origin in enumerate(origins) if origin is None]
        written = -np.inf  # when the data read here was written, for alignment
        if read_here:
            parts += self._read(records, read_here, record_offsets, record_times, out)
            written = written_by(float(record_times[read_here].max()), now)
        for i, origin in enumerate(origins):
            if origin is not None:
                received, forwarded_written = self._receive(records[i], i, origin, out)
                parts += received
                written = max(written, now if forwarded_written is None else written_by(forwarded_written, now))
        if parts:
            self._window(records, rows.merge(parts), out, now, written)

    def _progress(self, record: SourceRecord, source: int, out: Output) -> None:
        """Another partition's (or this one's) progress. A series in the batch after it is judged
        with it; the others close what it aligns in ``align_parts``."""
        try:
            progress = decode_progress(record.value)
        except ValueError as exc:
            self._unreadable(record, f"progress of partition {source}", exc, out)
            return
        self.alignment.report(source, progress)

    def align_parts(self) -> Iterator[Output]:
        """Close what the progress read so far has aligned for the series waiting on it, a slice
        of them at a time (a worker yields to its event loop between them, and reads them all
        before this processor takes anything else)."""
        aligned_until = self.alignment.aligned_until
        if aligned_until <= self._aligned_applied:
            return
        self._aligned_applied = aligned_until
        yield from self._advance_in_slices(np.flatnonzero(self.store.read_count[:self.store.owner_count]), self.now,
                                           idle=False)

    def _unreadable(self, record: SourceRecord, marked_as: str, exc: ValueError, out: Output) -> None:
        """Dead-letter a record whose header marks it as slostream's own but whose value is not."""
        message = f"record marked as {marked_as} cannot be read: {exc}"
        out.deadletter.append(self._deadletter(record, Rejection(0, None, Reason.INVALID_JSON, message)))

    def progress(self, end_known_at: float | None) -> Output:
        """Progress records of this partition for every partition (itself included): how far it has
        read (``alignment``), its log's end having been at or before its read position at
        ``end_known_at`` (None: not known); the forwards of what it read were sent before these."""
        out = Output()
        if self.config.partitions > 1:
            value = encode_progress(read_until_claim(end_known_at, self.read_through))
            header = [progress_header(self.partition)]
            out.forwards = [Forward(p, value, header, 0) for p in range(self.config.partitions)]
        return out

    def _read(self, records: list[SourceRecord], chosen: list[int], record_offsets: np.ndarray,
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
        batch = self.decoder.decode(list(map(_VALUE, chosen_records)), list(map(_TIMESTAMP, chosen_records)))
        cols = batch.columns
        if not whole:  # record numbers of the batch, not of the decoded subset
            index = np.asarray(chosen, dtype=np.int64)
            cols.record = index[cols.record]
        for rejection in batch.rejections:
            record = chosen[rejection.record]
            out.deadletter.append(self._deadletter(records[record], rejection))
        if not len(cols):
            return []
        ids, keys = self._number(cols.measurements)
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

    def _receive(self, record: SourceRecord, number: int, source: int,
                 out: Output) -> tuple[list[rows.Rows], float | None]:
        """The measurements another partition (or this one) forwarded, less those already applied
        (the source replayed after a crash), and when their source records were written."""
        try:
            forwarded = decode_forwarded(record.value)
        except ValueError as exc:
            self._unreadable(record, f"forwarded from partition {source}", exc, out)
            return [], None
        columns = forwarded.columns()
        positions = columns["positions"]
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
        # Outcome and id are rare: each is read once for the batch, and sent only when present.
        outcomes = list(map(_OUTCOME, cols.measurements))
        outcome_column = np.full(len(cols), -1, dtype=np.int8) if outcomes.count(None) == len(outcomes) else \
            np.array([-1 if o is None else o for o in outcomes], dtype=np.int8)
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
                                         outcome_column[idx], positions,
                                         [names[i] for i in idx.tolist()] if with_names else None,
                                         written_by(float(record_times[cols.record[idx]].max()), self.now))
                out.forwards.append(Forward(owner, value, [forward_header(self.partition)], idx.size))
            out.forwarded += every.size

    def _window(self, records: list[SourceRecord], batch: rows.Rows, out: Output, now: float, written: float) -> None:
        """Judge lateness per series, then window the batch part by part (cut where an SLO's clock
        enters a new base bucket, so it is judged there as a live run would). Its records were
        written by ``written`` (alignment)."""
        width = self.config.resolutions[0].width
        grace = self.config.grace_s
        ids, keys = batch.ids, batch.keys
        known = [self.series.get(key) for key in keys]
        owners = np.array([-1 if s is None else s.windows.owner for s in known], dtype=np.int64)
        before, after, newest = self._marks(ids, known, owners, batch.ts, written)
        # Held already (the source replayed after a crash): skipped before lateness is judged.
        replayed = batch.marks <= self._per_key(self.store.mark, owners, -1)[ids]
        out.skipped_replay += int(replayed.sum())
        with np.errstate(invalid="ignore"):
            horizon = np.floor(before / width) * width
        late = (batch.ts < horizon) & ~replayed
        for i in np.flatnonzero(late).tolist():
            element = batch.element(i)
            rejection = Rejection(
                int(batch.record[i]), None if batch.position[i] < 0 else int(batch.position[i]), Reason.TOO_LATE,
                f"ts {batch.ts[i]:.3f} is before its series' closed horizon {horizon[i]:.0f} "
                f"(newest event time of the series {newest[i]:.3f}, grace {grace:g}s)",
                element,
            )
            record = records[rejection.record]
            if batch.sources[i] != rows.DIRECT:  # a forwarded record holds many measurements: letter this one
                record = msgspec.structs.replace(record, value=orjson.dumps(element))
            out.deadletter.append(self._deadletter(record, rejection))
        self.newest_event_ts = max(self.newest_event_ts, float(batch.ts.max()))
        for start, stop, crossings in self._slices(ids, keys, batch.ts):
            for key, slo_now in crossings:  # this SLO's clock enters a new bucket: judge the one before
                self._evaluate(out, [t.slo.name for t in self._trackers_of(key)], slo_now)
            accepted = np.flatnonzero(~(late[start:stop] | replayed[start:stop])) + start
            if accepted.size:
                self._ingest(accepted, batch, known, after, out, now, written)

    @staticmethod
    def _per_key(column: np.ndarray, owners: np.ndarray, default) -> np.ndarray:
        """A store column per key of a batch; ``default`` for a key without a series (owner -1)."""
        values = np.full(owners.size, default, dtype=column.dtype)
        held = owners >= 0
        values[held] = column[owners[held]]
        return values

    def _marks(self, ids: np.ndarray, known: list, owners: np.ndarray, ts: np.ndarray,
               written: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The watermark of each element's series before and after it, and the series' newest event
        time before it.

        A series' watermark trails its newest event time by the grace, but only as far as every
        partition has read (``alignment``): data written before the aligned time counts, newer data
        waits. The wait is capped (``max_source_skew_s``): a source partition that far behind the
        series' newest data has its share of it judged late.
        """
        grace, skew = self.config.grace_s, self.config.max_source_skew_s
        mark0 = self._per_key(self.store.watermark, owners, -np.inf)[ids]
        newest0 = self._per_key(self.store.max_ts, owners, -np.inf)
        newest_before, _ = running_max_before(ids, ts, newest0)
        newest_after = np.maximum(newest_before, ts)
        aligned_until = self.alignment.aligned_until
        if aligned_until >= written:
            safe_before, safe_after = newest_before, newest_after
        else:
            aligned = np.full(owners.size, -np.inf)
            held = np.flatnonzero(owners >= 0)
            aligned[held] = self.store.release_reads(owners[held], aligned_until)
            safe_before = safe_after = aligned[ids]

        def mark(safe: np.ndarray, newest: np.ndarray) -> np.ndarray:
            return np.maximum(np.maximum(mark0, safe - grace), newest - skew)

        return mark(safe_before, newest_before), mark(safe_after, newest_after), newest_before

    def _slices(self, ids: np.ndarray, keys: list[tuple], ts: np.ndarray):
        """(start, stop, crossings) parts of a batch: a part starts where the clocks of SLOs (the
        newest event time of the series they read) enter a new base bucket; ``crossings`` are
        those SLOs' (service, metric) with their clock before the part."""
        n = ts.size
        if not self.slos_for:
            yield 0, n, []
            return
        groups = {key[:2] for key in keys if key[:2] in self.slos_for}
        if not groups:
            yield 0, n, []
            return
        group_keys = sorted(groups)
        number = {key: g for g, key in enumerate(group_keys)}
        group_of_id = np.array([number.get(key[:2], -1) for key in keys], dtype=np.int64)
        members = np.flatnonzero(group_of_id[ids] >= 0)
        initial = np.array([self._slo_now(key) for key in group_keys])
        member_groups = group_of_id[ids[members]]
        before, _ = running_max_before(member_groups, ts[members], initial)
        after = np.maximum(before, ts[members])
        width = self.config.resolutions[0].width
        with np.errstate(invalid="ignore"):
            crossing = (before > -np.inf) & (np.floor(after / width) > np.floor(before / width))
        cuts: dict[int, list] = {}
        for i in np.flatnonzero(crossing).tolist():
            cuts.setdefault(int(members[i]), []).append((group_keys[member_groups[i]], float(before[i])))
        bounds = sorted(cuts)
        if not bounds or bounds[0] != 0:
            bounds = [0, *bounds]
        for start, stop in zip(bounds, [*bounds[1:], n]):
            yield start, stop, cuts.get(start, [])

    def _ingest(self, idx: np.ndarray, batch: rows.Rows, known: list[Series | None], marks_after: np.ndarray,
                out: Output, now: float, written: float) -> None:
        """Window the accepted measurements ``idx`` (ascending) of one part of a batch; ``known`` holds
        each key's series as held before the batch."""
        width = self.config.resolutions[0].width
        sids = batch.ids[idx]
        # Series are made only for accepted measurements: a late-only key creates none.
        keys = batch.keys
        series_of = {i: known[i] or self._get_series(keys[i]) for i in np.unique(sids).tolist()}
        starts = (np.floor(batch.ts[idx] / width) * width).astype(np.int64)
        order = np.lexsort((batch.marks[idx], starts, sids))
        sids, starts, idx = sids[order], starts[order], idx[order]
        values, oks, run_offsets, ts = batch.values[idx], batch.oks[idx], batch.marks[idx], batch.ts[idx]
        # Per series of this part: its newest event time, the watermark it will have after the part,
        # and its newest replay mark.
        series_firsts = np.r_[0, np.flatnonzero(np.diff(sids)) + 1]
        touched = [series_of[sid] for sid in sids[series_firsts].tolist()]
        owners = np.array([series.windows.owner for series in touched], dtype=np.int64)
        self.store.add(np.repeat(owners, np.diff(np.r_[series_firsts, sids.size])), starts, values, oks)
        newest_ts = np.maximum.reduceat(ts, series_firsts)
        newest_marks = np.maximum.reduceat(marks_after[idx], series_firsts)
        np.maximum.at(self.store.mark, owners, np.maximum.reduceat(run_offsets, series_firsts))
        closes: dict[int, list[int]] = {}
        if (self.slos_for or self.policies_for) and any(series.trackers or series.watches for series in touched):
            closes = self._feed_runs(sids, starts, idx, values, oks, run_offsets, ts, series_of,
                                     newest_marks.tolist(), series_firsts, batch)
        out.accepted += len(idx)
        store = self.store
        store.max_ts[owners] = np.maximum(store.max_ts[owners], newest_ts)
        store.last_activity[owners] = now
        if self.config.partitions > 1:  # data of this series up to its newest event time was written by then
            store.note_reads(owners, note_time(written))
        store.watermark[owners] = np.maximum(store.watermark[owners], newest_marks)
        self._close(touched, owners, out, closes)
        slo_keys = {(series.service, series.metric) for series in touched if series.trackers}
        for key in slo_keys:
            self._close_slos(key)

    def _feed_runs(self, sids, starts, idx, values, oks, run_offsets, ts, series_of, newest_marks, series_firsts,
                   batch: rows.Rows) -> dict[int, list[int]]:
        """Feed each run (a series' measurements in one base bucket) of the series that feed SLOs,
        in order; return, for each series watched by policies, the horizons at which a live run
        would have closed it within the part (``_close`` judges its windows in those steps)."""
        bounds = [0, *(np.flatnonzero((np.diff(sids) != 0) | (np.diff(starts) != 0)) + 1).tolist(), len(idx)]
        target_of = dict(zip(sids[series_firsts].tolist(), newest_marks))
        newest = np.maximum.reduceat(ts, bounds[:-1])
        tallies: dict[GoodRule, Tally] = {}  # each SLO rule judges the whole part once
        slo_members: dict[str, list[np.ndarray]] = {}
        closes: dict[int, list[int]] = {}
        for number, (sid, start, a, b) in enumerate(zip(sids[bounds[:-1]].tolist(), starts[bounds[:-1]].tolist(),
                                                        bounds, bounds[1:])):
            series = series_of[sid]
            target = max(series.watermark, target_of[sid])
            if series.watches:
                horizon = bucket_start(min(start, target), self.config.resolutions[0].width)
                closes.setdefault(series.windows.owner, []).append(horizon)
            for tracker in series.trackers:
                if tracker.sources == 1:
                    self._close_slo_before(tracker, start, target)
                    rule = tracker.slo.good
                    tally = tallies.get(rule) or tallies.setdefault(rule, Tally(rule.flags(values, oks)))
                    tracker.feed(start, values[a:b], oks[a:b], run_offsets[a:b], float(newest[number]),
                                 tally.counts(a, b))
                    self._touched.add(tracker.slo.name)
                else:
                    slo_members.setdefault(tracker.slo.name, []).append(idx[a:b])
        for name, parts in slo_members.items():
            self._feed(self.trackers[name], np.concatenate(parts), batch)
        return closes

    def _feed(self, tracker: SloTracker, members: np.ndarray, batch: rows.Rows) -> None:
        """One SLO gathers every series it covers; each base bucket is fed once, in offset order,
        so its replay mark stays exact."""
        width = self.config.resolutions[0].width
        starts = (np.floor(batch.ts[members] / width) * width).astype(np.int64)
        order = np.lexsort((batch.marks[members], starts))
        members, starts = members[order], starts[order]
        until = min(s.watermark for s in self._slo_clocks((tracker.slo.service, tracker.slo.metric)))
        for group in np.split(np.arange(len(members)), np.flatnonzero(np.diff(starts)) + 1):
            chosen = members[group]
            self._close_slo_before(tracker, int(starts[group[0]]), until)
            tracker.feed(int(starts[group[0]]), batch.values[chosen], batch.oks[chosen], batch.marks[chosen],
                         float(batch.ts[chosen].max()))
        self._touched.add(tracker.slo.name)

    def _number(self, ms: list) -> tuple[np.ndarray, list[tuple]]:
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

    def _close(self, series_list: list[Series], owners: np.ndarray, out: Output,
               steps: dict[int, list[int]] | None = None) -> None:
        """Close what the watermarks of ``series_list`` (their window ``owners``) passed; report the
        SLI windows completed and judge their policies (the windows are handed out only once).

        ``steps`` holds, for a series watched by policies, the horizons at which a live run would
        have closed it before its final one: its windows are judged in those steps, so a backlog
        read in one batch judges (and alerts) window by window as a live run does.
        """
        if not series_list:
            return
        store = self.store
        before = store.closed_until[owners].copy()
        closed = store.close(owners, store.watermark[owners], QUANTILE_LEVELS)
        if len(closed):
            self._report(closed, out)
        if self.policies_for:
            for i in np.flatnonzero(store.closed_until[owners] != before).tolist():
                series = series_list[i]
                if series.watches:
                    self._judge_in_steps(series, closed, int(before[i]), (steps or {}).get(int(owners[i]), []), out)

    def _report(self, closed: Closed, out: Output) -> None:
        """The SLI event of each completed report window."""
        report = self.config.report_window_s
        chosen = np.flatnonzero(closed.lengths == report)
        if not chosen.size:
            return
        stats, quantiles = closed.stats[chosen], closed.quantiles[chosen]
        count, ok_known, ok, n_values = (stats[:, column] for column in (COUNT, OK_KNOWN, OK, VALUES))
        with np.errstate(invalid="ignore", divide="ignore"):
            error_ratio = np.where(ok_known > 0, (ok_known - ok) / ok_known, np.nan)
            mean = np.where(n_values > 0, stats[:, SUM] / n_values, np.nan)
        no_values = n_values == 0
        low, high = np.where(no_values, np.nan, stats[:, MIN]), np.where(no_values, np.nan, stats[:, MAX])
        columns = zip(closed.owners[chosen].tolist(), closed.starts[chosen].tolist(), count.astype(np.int64).tolist(),
                      ok.astype(np.int64).tolist(), (ok_known - ok).astype(np.int64).tolist(), _nullable(error_ratio),
                      (count / report).tolist(), _nullable(mean), _nullable(low), _nullable(high),
                      n_values.astype(np.int64).tolist(), stats[:, SUM].tolist(), *map(_nullable, quantiles.T))
        series_of, source = self._series_of_owner, self.config.source
        p50, p90, p95, p99 = QUANTILE_NAMES
        for owner, start, n, good, bad, ratio, throughput, avg, lowest, highest, value_count, value_sum, q50, q90, \
                q95, q99 in columns:
            series = series_of[owner]
            end = start + report
            data = {"service": series.service, "metric": series.metric, "labels": series.labels,
                    "window_start": start, "window_end": end, "count": n, "ok": good, "errors": bad,
                    "error_ratio": ratio, "throughput_per_s": throughput, "mean": avg, "min": lowest, "max": highest,
                    p50: q50, p90: q90, p95: q95, p99: q99}
            # The summary on /metrics needs the value count and sum, not part of the event.
            series.last_report = _held_json({**data, "value_count": value_count, "value_sum": value_sum})
            event = cloud_event("slostream.sli.window", source,
                                event_id_of_text(f"sli\x1f{series.key}\x1f{start}"), end,
                                data, subject=series.key)
            out.sli.append((series.service.encode(), event))
            if series.drift is not None:
                self._drift(series, data, out)

    def _drift(self, series: Series, window: dict, out: Output) -> None:
        for aggregate, detection in series.drift.update(window):
            detector = series.drift.watches[aggregate].detector_name
            out.drift.append(drift_event(self.config.source, series.key, series.service, series.metric,
                                         series.labels, aggregate, detector, detection))

    def _judge_in_steps(self, series: Series, closed: Closed, before: int, steps: list[int], out: Output) -> None:
        """Judge the series' policies on its windows in ``closed``: first at each step that completed
        a window, then at its final horizon (moved from ``before``)."""
        mine = np.flatnonzero(closed.owners == series.windows.owner).tolist()
        ends = [int(closed.starts[i] + closed.lengths[i]) for i in mine]
        aggregates = [closed.aggregate(i) for i in mine]
        final = series.windows.closed_until
        taken, last = 0, before
        for horizon in steps:
            upto = taken
            while upto < len(ends) and ends[upto] <= horizon:
                upto += 1
            if upto > taken:
                self._judge_policies(series, aggregates[taken:upto], horizon, out)
                taken, last = upto, horizon
        if final > last:
            self._judge_policies(series, aggregates[taken:], final, out)

    def _close_slos(self, key: tuple[str, str]) -> None:
        """An SLO's counts close when every series it reads has passed them (the slowest watermark),
        so whatever a series accepts its SLOs can still count."""
        until = min(s.watermark for s in self._slo_clocks(key))
        for tracker in self._trackers_of(key):
            before = tracker.events.closed_until
            tracker.close_until(until)
            if tracker.events.closed_until != before:
                self._touched.add(tracker.slo.name)  # time passed: burn windows slide, slices judged

    def _close_slo_before(self, tracker: SloTracker, start: int, until: float) -> None:
        """Before counting into the bucket at ``start``, close what the sources' watermark ``until``
        passed below it: an SLO whose clock jumps hours ahead never laps its base ring."""
        closed = tracker.events.closed_until
        if start > closed and until > closed:
            tracker.close_until(min(start, until))
            if tracker.events.closed_until != closed:
                self._touched.add(tracker.slo.name)

    def _trackers_of(self, key: tuple[str, str]) -> list[SloTracker]:
        return [self.trackers[slo.name] for slo in self.slos_for.get(key, ()) if slo.name in self.trackers]

    def _slo_now(self, key: tuple[str, str]) -> float:
        """An SLO's clock: the newest event time of the series it reads (or their idle-advanced time)."""
        return max((self._event_now(s) for s in self._slo_clocks(key)), default=-np.inf)

    def _slo_clocks(self, key: tuple[str, str]) -> list:
        """The clocks an SLO follows: its held series, or the idle clock they left when evicted."""
        clock = self.idle_clocks.get(key)
        return self.slo_sources.get(key, []) if clock is None else [clock]

    def _event_now(self, series: Series | IdleClock) -> float:
        return max(series.max_ts, series.watermark + self.config.grace_s)

    def _get_series(self, key: tuple) -> Series:
        series = self.series.get(key)
        if series is None:
            service, metric = key[0], key[1]
            labels = dict(zip(self.config.label_keys, key[2])) if len(key) > 2 else {}
            windows = TumblingWindows(self.config.resolutions[0].width, self._window_lengths(service, metric),
                                      RELATIVE_ACCURACY, self.store)
            series = Series(key, _series_key(service, metric, labels), service, metric, labels, windows)
            self._hold(series)
        return series

    def _hold(self, series: Series) -> None:
        self._attach(series)
        self.series[series.ident] = series
        self._series_of_owner[series.windows.owner] = series

    def _window_lengths(self, service: str, metric: str) -> dict[int, bool]:
        """The tumbling window lengths a series' readers need, and whether each needs quantiles: the
        SLI report window (it reports quantiles), and each policy watching the series."""
        lengths = {self.config.report_window_s: True}
        for policy in self.policies_for.get((service, metric), ()):
            lengths[policy.window_s] = lengths.get(policy.window_s, False) or policy.aggregate.startswith("p")
        return lengths

    def _attach(self, series: Series) -> None:
        """Wire a series to the SLOs it feeds and the policies that watch it."""
        slos = self.slos_for.get((series.service, series.metric), ())
        for slo in slos:
            tracker = self.trackers.get(slo.name)
            if tracker is None:
                tracker = self.trackers[slo.name] = SloTracker(slo, self.config.resolutions)
            tracker.sources += 1
            series.trackers.append(tracker)
        if slos:
            self.slo_sources.setdefault((series.service, series.metric), []).append(series)
            self.idle_clocks.pop((series.service, series.metric), None)
        series.watches = [PolicyWatch(p) for p in self.policies_for.get((series.service, series.metric), ())]
        rule = self.config.drift.for_series(series.service, series.metric)
        series.drift = None if rule is None else SeriesDrift.of_rule(rule)

    def tick(self, now: float) -> Output:
        """Let event time run on for series that have gone quiet, close what is due, judge their SLOs."""
        out = Output()
        for part in self.tick_parts(now):
            out.extend(part)
        return out

    def tick_parts(self, now: float) -> Iterator[Output]:
        """``tick`` a slice of the series at a time (a worker yields to its event loop between
        them): read them all before this processor takes anything else."""
        self.now = now
        yield from self._advance_in_slices(self.store.owners(), now, idle=True)
        out = Output()
        self._advance_idle_clocks(now)
        self._evict_quiet(now, out)
        if self._touched:
            self._evaluate(out, self._touched)
            self._last_evaluation = now
        yield out

    def _advance_in_slices(self, owners: np.ndarray, now: float, idle: bool) -> Iterator[Output]:
        for first in range(0, owners.size, TICK_SLICE_SERIES):
            out = Output()
            self._advance(owners[first:first + TICK_SLICE_SERIES], out, now, idle)
            yield out

    def _advance(self, owners: np.ndarray, out: Output, now: float, idle: bool) -> None:
        """Move the watermarks of the series of window ``owners`` as far as alignment (and, with
        ``idle``, quiet) allows; close what they pass."""
        if not owners.size:
            return
        config, store, series_of = self.config, self.store, self._series_of_owner
        watermark, max_ts = store.watermark[owners], store.max_ts[owners]
        marks = np.maximum(watermark, max_ts - config.grace_s)
        if idle:
            marks = idle_watermark(max_ts, marks, now - store.last_activity[owners], config.grace_s,
                                   config.idle_after_s)
        awaiting = np.flatnonzero(store.read_count[owners])
        if awaiting.size:
            aligned = store.release_reads(owners[awaiting], self.alignment.aligned_until)
            still = store.read_count[owners[awaiting]] > 0  # data not every partition has read past yet
            held_back = awaiting[still]  # as far as the aligned data
            marks[held_back] = np.maximum(np.maximum(watermark[held_back], aligned[still] - config.grace_s),
                                          max_ts[held_back] - config.max_source_skew_s)
        moved = np.flatnonzero(marks > watermark)
        store.watermark[owners[moved]] = marks[moved]
        moved_series = [series_of[owner] for owner in owners[moved].tolist()]
        self._close(moved_series, owners[moved], out)
        for key in {(series.service, series.metric) for series in moved_series if series.trackers}:
            self._close_slos(key)
            self._touched.update(t.slo.name for t in self._trackers_of(key))

    def _advance_idle_clocks(self, now: float) -> None:
        config = self.config
        for key, clock in self.idle_clocks.items():
            mark = float(idle_watermark(clock.max_ts, clock.watermark, now - clock.last_activity, config.grace_s,
                                        config.idle_after_s))
            if mark > clock.watermark:
                clock.watermark = mark
                self._close_slos(key)
                self._touched.update(t.slo.name for t in self._trackers_of(key))

    def _evict_quiet(self, now: float, out: Output) -> None:
        """Drop the series quiet for ``series_ttl_s`` of wall time whose every window is reported
        (a tombstone deletes its state); an SLO left without series keeps its clock running."""
        store, held = self.store, self._series_of_owner
        used = store.owner_count
        quiet = np.flatnonzero((now - store.last_activity[:used] >= self.config.series_ttl_s) &
                               (store.open_count[:used] == 0))
        evicted = [held[owner] for owner in quiet.tolist() if owner in held]
        for series in evicted:
            del self.series[series.ident]
            del held[series.windows.owner]
            self._deleted_keys.append(state_keys.series_key(self.partition, series.key))
            out.evicted += 1
            if not series.trackers:
                continue
            key = (series.service, series.metric)
            for tracker in series.trackers:
                tracker.sources -= 1
            sources = self.slo_sources[key]
            sources.remove(series)
            if not sources:
                del self.slo_sources[key]
                self.idle_clocks[key] = IdleClock(series.max_ts, series.watermark, series.last_activity)
        for series in evicted:
            store.release(series.windows.owner)

    def evaluate_pending(self, now: float) -> Output:
        """Judge SLOs the wall-clock limiter held back, once the interval has passed."""
        out = Output()
        if self._touched and now - self._last_evaluation >= EVALUATION_INTERVAL_S:
            self._evaluate(out, self._touched)
            self._last_evaluation = now
        return out

    def _judge_policies(self, series: Series, completed: list[Aggregate], closed_until: int, out: Output) -> None:
        """Judge every policy window a close up to ``closed_until`` completed (a window without data,
        too: no value, or throughput 0), at most the newest ten per policy after a jump."""
        aggregates = {(agg.start, agg.end): agg for agg in completed}
        conditions: list[Condition] = []
        for watch in series.watches:
            policy = watch.policy
            window = policy.window_s
            if closed_until < watch.evaluated_until + window:
                continue  # no new window closed
            last = (closed_until // window) * window
            first = max(watch.evaluated_until + window, last - 10 * window) if watch.evaluated_until else last
            changed = False
            for end in range(first, last + 1, window):
                if end <= watch.evaluated_until:
                    continue
                agg = aggregates.get((end - window, end))
                value = aggregate_value(agg, policy.aggregate) if agg is not None and agg.count else (
                    0.0 if policy.aggregate == "throughput" else None)
                transition = watch.observe(value)
                watch.evaluated_until = end
                changed = True
                if transition is not None:
                    out.breaches.append(self._breach_event(series, watch, transition, end))
            if changed:  # a replay would not judge it again: written at the next checkpoint
                owner = series.windows.owner
                self.store.changed[owner] = self.store.emitted[owner] = True
                conditions.extend(watch.conditions(series.labels))
        if conditions:
            self._alert_events(self.book.evaluate(closed_until, conditions), out)

    def _breach_event(self, series: Series, watch: PolicyWatch, transition: tuple[str, str],
                      end: int) -> tuple[bytes, dict]:
        policy = watch.policy
        previous, level = transition
        kind = "recovered" if level == "ok" else "started"
        data = {
            "policy": policy.name,
            "service": series.service,
            "metric": series.metric,
            "labels": series.labels,
            "aggregate": policy.aggregate,
            "direction": policy.direction,
            "warning": policy.warning,
            "critical": policy.critical,
            "consecutive": policy.consecutive,
            "level": level,
            "previous_level": previous,
            "value": watch.last_value,
            "window_start": end - policy.window_s,
            "window_end": end,
        }
        event = cloud_event(f"slostream.breach.{kind}", self.config.source,
                            event_id("breach", policy.name, series.key, end, level), end, data, subject=series.key)
        return series.service.encode(), event

    def _evaluate(self, out: Output, names, now: float | None = None) -> None:
        """Budgets, burn rates and alert conditions of the named SLOs, each at its own clock (or at
        ``now``, the clock before the part of a batch that moves it into a new bucket)."""
        for name in list(names):
            tracker = self.trackers[name]
            self._touched.discard(name)
            at = self._slo_now((tracker.slo.service, tracker.slo.metric)) if now is None else now
            if at == -np.inf:
                continue
            self._alert_events(self.book.evaluate(at, tracker.judge(at)), out)

    def _alert_events(self, events: list[AlertEvent], out: Output) -> None:
        for alert_event in events:
            alert = alert_event.alert
            # Named by base bucket: a replay after a crash, batched differently, may judge a few
            # seconds apart within the bucket but repeats the same id.
            width = self.config.resolutions[0].width
            id_ = event_id("alert", alert_event.type, alert["fingerprint"],
                           bucket_start(alert_event.alert_start, width), bucket_start(alert_event.time, width))
            event = cloud_event(f"slostream.alert.{alert_event.type}", self.config.source, id_,
                                alert_event.time, alert, subject=alert["fingerprint"])
            out.alerts.append((alert["labels"].get("service", "").encode(), event))
        if events:
            self._book_dirty = True

    # --- operator commands --------------------------------------------------

    def apply_control(self, record: SourceRecord, command: Command | CommandError) -> Output:
        """Apply one control command once (its offset is persisted with the state).

        Every partition applies every command; only partition 0 dead-letters a
        malformed one, so it is reported once.
        """
        out = Output()
        if record.offset <= self.control_offset:
            return out
        self.control_offset = record.offset
        self._book_dirty = True
        if isinstance(command, CommandError):
            if self.partition == 0:
                rejection = Rejection(0, None, Reason.BAD_COMMAND, command.message, None)
                out.deadletter.append(self._deadletter(record, rejection))
            return out
        now = self.newest_event_ts if self.newest_event_ts > -np.inf else command.time
        if command.kind == "silence":
            events = self.book.silence(now, command.silence)
        elif command.kind == "unsilence":
            events = self.book.unsilence(now, command.silence_id)
        else:
            events = self.book.acknowledge_matching(now, command.fingerprint, command.matchers, command.by)
        self._alert_events(events, out)
        return out

    def _deadletter(self, record: SourceRecord, rejection: Rejection) -> tuple[bytes, dict]:
        return deadletter_event(self.config, record, rejection)

    # --- state ------------------------------------------------------------

    def checkpoint(self, final: bool = False) -> tuple[Iterator[tuple[str, bytes | None]], int]:
        """Changed state as (key, value) writes (None: delete the key), and the offset they make safe.

        Everything up to and including the returned offset is in the writes, so
        the consumer may commit ``offset + 1`` once they are durable. A series is written once
        something was emitted from its state (a window completed, or a policy judged one), or once
        its changes have waited ``UNWRITTEN_REPORT_WINDOWS`` report windows of wall time; until
        then the offset stays at the checkpoint before its first unwritten change, and a replay
        from there redoes those changes exactly (each series' replay mark skips what is written).
        Kafka Streams' record caches defer writes the same way. ``final`` writes every series
        (a revoke or a stop: the next owner replays nothing), as does an eviction (a replay must not
        bring an evicted series back). The series' states are serialised as the writes are read (a
        worker yields to its event loop between them): read them all before this processor takes
        anything else.
        """
        deleted, self._deleted_keys = self._deleted_keys, []
        number = self._checkpoint_number
        stale_before = number + 1 if final or deleted else self._stale_before()
        dirty, oldest = self.store.take_writes(number, stale_before)
        self._checkpoint_number = number + 1
        self._boundaries[number + 1] = (self.now, self._replay_state())
        replay_from = number + 1 if oldest is None else oldest
        for boundary in [b for b in self._boundaries if b < replay_from]:
            del self._boundaries[boundary]
        replay = self._boundaries[replay_from][1]
        return self._checkpoint_writes(deleted, dirty, replay), replay["applied_offset"]

    @property
    def unwritten_due(self) -> bool:
        """Whether some series' changes have waited long enough to be written at the next checkpoint
        even if nothing else happens here (others wait for news: a checkpoint with nothing new to
        commit only costs the consumer a commit)."""
        return len(self._boundaries) > 1 and self._stale_before() > next(iter(self._boundaries))

    def _stale_before(self) -> int:
        """The oldest checkpoint whose changes may still wait (``UNWRITTEN_REPORT_WINDOWS``)."""
        limit = UNWRITTEN_REPORT_WINDOWS * self.config.report_window_s
        return next((b for b, (at, _) in self._boundaries.items() if self.now - at < limit),
                    self._checkpoint_number + 1)

    def _replay_state(self) -> dict:
        """What a replay from the offset applied now starts with: the rest of the partition's state
        only grows, or is kept with replay marks of its own."""
        return {
            "applied_offset": self.applied_offset,
            "forward_marks": {str(p): o for p, o in self.forward_marks.items()},
            "alignment": self.alignment.to_state(),
            "read_through": _finite_or_none(self.read_through),
        }

    def _checkpoint_writes(self, deleted: list[str], dirty: np.ndarray,
                           replay: dict) -> Iterator[tuple[str, bytes | None]]:
        p = self.partition
        for key in deleted:
            yield key, None
        # Every written series' windows at once (a few numpy calls); the JSON part as they are read.
        for owner, windows in zip(dirty.tolist(), self.store.encode(dirty)):
            series = self._series_of_owner[owner]
            drift = b"" if series.drift is None else series.drift.to_state()
            yield state_keys.series_key(p, series.key), _series_record(series.header(), drift, windows)
        writes: list[tuple[str, bytes | None]] = []
        for name, tracker in self.trackers.items():
            if not tracker.dirty:
                continue
            for kind, level, slot, state in tracker.drain_dirty():
                writes.append((state_keys.slo_slot_key(p, kind, level, slot, name), _held_json(state)))
            writes.append((state_keys.slo_header_key(p, name), _held_json(tracker.header_state())))
        if self._book_dirty:
            writes.append((state_keys.book_key(p), _held_json(self.book.to_state())))
            self._book_dirty = False
        partition_state = {
            "v": STATE_VERSION,
            **replay,
            "control_offset": self.control_offset,
            "newest_event_ts": _finite_or_none(self.newest_event_ts),
            "idle_clocks": [[service, metric, _finite_or_none(clock.max_ts), _finite_or_none(clock.watermark)]
                            for (service, metric), clock in sorted(self.idle_clocks.items())],
        }
        writes.append((state_keys.partition_key(p), _held_json(partition_state)))
        yield from writes

    @classmethod
    def restore(cls, partition: int, config: PipelineConfig, items, now: float) -> PartitionProcessor:
        """Rebuild from persisted (key, value) pairs of this partition."""
        proc = cls(partition, config, now)
        partition_clock = [None, None]
        headers: dict[str, dict] = {}
        slots: dict[str, list] = {}
        tracker_headers: dict[str, dict] = {}
        tracker_slots: dict[str, list] = {}
        for key, value in items:
            parsed = None if value is None else state_keys.parse_key(partition, key)  # None: deleted, not compacted yet
            if parsed is None:
                continue
            kind, fields = parsed
            if kind == state_keys.PARTITION:
                state = orjson.loads(value)
                proc.applied_offset = state["applied_offset"]
                proc.control_offset = state.get("control_offset", -1)
                proc.forward_marks = {int(p): o for p, o in state.get("forward_marks", {}).items()}
                proc.alignment = Alignment.from_state(config.partitions, state.get("alignment"))
                proc.read_through = _from_finite(state.get("read_through"))
                proc.idle_clocks = {(service, metric): IdleClock(_from_finite(max_ts), _from_finite(watermark), now)
                                    for service, metric, max_ts, watermark in state.get("idle_clocks", [])}
                if state.get("v") == 1:  # one clock for the whole partition: every series starts from it
                    old = state["watermark"]
                    partition_clock = [old["max_event_ts"], old["value"]]
                    proc.newest_event_ts = _from_finite(old["max_event_ts"])
                else:
                    proc.newest_event_ts = _from_finite(state["newest_event_ts"])
            elif kind == state_keys.SERIES:
                headers[fields[0]] = value
            elif kind == state_keys.OLD_SERIES_SLOT:
                level, slot, series_key = fields
                slots.setdefault(series_key, []).append((int(level), int(slot), orjson.loads(value)))
                proc._deleted_keys.append(key)
            elif kind == state_keys.SLO_HEADER:
                tracker_headers[fields[0]] = orjson.loads(value)
            elif kind == state_keys.SLO_SLOT:
                windows_kind, level, slot, name = fields
                tracker_slots.setdefault(name, []).append((windows_kind, int(level), int(slot), orjson.loads(value)))
            elif kind == state_keys.BOOK:
                proc.book = AlertBook.from_state(orjson.loads(value), config.alert_cooldown_s,
                                                 config.escalate_after_s)
        for slo in config.slos:
            header = tracker_headers.get(slo.name)
            if header is None:
                continue
            tracker = SloTracker.restore(slo, config.resolutions, header, tracker_slots.get(slo.name, []))
            if tracker is not None:
                proc.trackers[slo.name] = tracker
        for series_key, record in headers.items():
            header, drift_state, windows_state = _read_series_record(record)
            lengths = proc._window_lengths(header["service"], header["metric"])
            if isinstance(windows_state, bytes):
                windows = TumblingWindows.from_state(windows_state, lengths, proc.store)
            elif "resolutions" in windows_state:
                ring = SeriesWindows.from_states(windows_state, slots.get(series_key, []))
                windows = TumblingWindows.from_ring(ring, lengths, proc.store)
            else:
                windows = TumblingWindows.from_state(windows_state, lengths, proc.store)
            labels = tuple(header["labels"].get(k, "") for k in config.label_keys)
            ident = (header["service"], header["metric"], labels) if config.label_keys else (
                header["service"], header["metric"])
            series = Series(ident, series_key, header["service"], header["metric"], header["labels"], windows)
            if not isinstance(windows_state, bytes):  # version 4 and before: the clock is the header's
                max_ts, watermark = header.get("clock", partition_clock)
                series.max_ts, series.watermark = _from_finite(max_ts), _from_finite(watermark)
            if not isinstance(windows_state, bytes):  # version 4 and before: the reads are the header's
                proc.store.put_reads(windows.owner, header.get("reads", []), _from_finite(header.get("aligned_ts")))
            series.last_activity = now
            series.last_report = None if header["last_report"] is None else _held_json(header["last_report"])
            proc._hold(series)
            watched = header.get("watches", {})
            series.watches = [PolicyWatch.from_state(w.policy, watched[w.policy.name])
                              if w.policy.name in watched else w for w in series.watches]
            if series.drift is not None and drift_state:
                series.drift = SeriesDrift.from_state(drift_state,
                                                      config.drift.for_series(series.service, series.metric))
        return proc


def deadletter_event(config: PipelineConfig, record: SourceRecord, rejection: Rejection) -> tuple[bytes, dict]:
    """The dead-letter event of a rejected record or array element, keyed by the reason. A record's
    letter carries the record's bytes; an element's carries that element alone, encoded as JSON
    (a record of a thousand rejected elements must not become a thousand copies of itself). Either
    is cut at ``max_deadletter_bytes``."""
    element, element_bytes = _element_json(rejection.element)
    raw = (record.value or b"") if rejection.index is None else element_bytes
    limit = config.max_deadletter_bytes
    data = {
        "reason": rejection.reason.value,
        "message": rejection.message,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "index": rejection.index,
        "timestamp": record.timestamp,
        "key_b64": None if record.key is None else base64.b64encode(record.key).decode(),
        "value_b64": base64.b64encode(raw[:limit]).decode(),
        "value_size": len(raw),
        "value_truncated": len(raw) > limit,
        "element": element,
    }
    event = cloud_event(
        "slostream.deadletter", config.source,
        event_id("deadletter", record.topic, record.partition, record.offset, rejection.index),
        record.timestamp, data,
    )
    return rejection.reason.value.encode(), event


def _series_record(header: dict, drift: bytes, windows: bytes) -> bytes:
    """A series' persisted record: ``STATE_VERSION`` in a byte, the length of its JSON header in
    four (little-endian), the header, the length of its drift state in four, that state, then its
    windows and clock (the ``TumblingWindows`` state). The windows change with every measurement,
    the header seldom: only they are columns, encoded for many series at once. A record of version
    4 or before is one JSON object: it starts with ``{``."""
    encoded = orjson.dumps(header)
    return b"".join((_RECORD_VERSION, len(encoded).to_bytes(4, "little"), encoded, len(drift).to_bytes(4, "little"),
                     drift, windows))


def _held_json(value) -> bytes:
    """JSON to be kept in memory (a series' last report; state in the worker's table copy), in bytes
    of their own size: orjson's result keeps an allocation of 4-8 kB (tracemalloc: 8,150 bytes for
    a 324-byte report)."""
    return bytes(memoryview(orjson.dumps(value)))


def _read_series_record(record: bytes) -> tuple[dict, bytes, bytes | dict]:
    """A series' header, its drift state (empty: none, or not kept before version 6) and its
    windows' state (bytes; a dict from version 4 and before)."""
    if record[:1] == b"{":
        header = orjson.loads(record)
        return header, b"", header["windows"]
    if record[0] not in (5, STATE_VERSION):
        raise ValueError(f"unsupported series state version {record[0]}")
    size = int.from_bytes(record[1:5], "little")
    header, at = orjson.loads(record[5:5 + size]), 5 + size
    if record[0] == 5:
        return header, b"", record[at:]
    drift_size = int.from_bytes(record[at:at + 4], "little")
    return header, record[at + 4:at + 4 + drift_size], record[at + 4 + drift_size:]


def _series_key(service: str, metric: str, labels: dict) -> str:
    return orjson.dumps([service, metric, labels], option=orjson.OPT_SORT_KEYS).decode()


def _nullable(column: np.ndarray) -> list[float | None]:
    """A float column as JSON values: NaN (no value) as null."""
    return [None if x != x else x for x in column.tolist()]


def _finite_or_none(x: float) -> float | None:
    return None if x == -np.inf else float(x)


def _from_finite(x: float | None) -> float:
    return -np.inf if x is None else x


def _element_json(element) -> tuple[Any, bytes]:
    """A rejected element as JSON-safe data and as JSON bytes (its repr where it is not JSON)."""
    if element is None:
        return None, b"null"
    try:
        encoded = orjson.dumps(element)
    except (TypeError, orjson.JSONEncodeError):
        encoded = orjson.dumps(repr(element))
    return orjson.loads(encoded), encoded
