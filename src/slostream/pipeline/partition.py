"""Per-partition orchestration: records in; SLI, alert, breach, drift, dead-letter and forwarded
records out. No I/O. The data path walks one way: intake (decoding, series numbering, forwarding:
``intake``) -> series windows (``core.tumbling``) -> evaluators (``evaluators``: SLOs, policies,
drift) -> event envelopes (``envelopes``) -> the output; state goes through ``state``.

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

import functools
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import msgspec
import numpy as np
import orjson

from slostream.core.alerts import fingerprint
from slostream.core.control import (
    MAX_FIELD_CHARS,
    Command,
    CommandError,
    ControlAuth,
    ControlLimits,
    Refusal,
    judge,
    parse_command,
    read_audit,
    remember,
)
from slostream.core.measurement import Reason, Rejection
from slostream.core.tumbling import TumblingWindows
from slostream.core.window_store import WindowStore
from slostream.pipeline import rows, state, state_keys, watermarks
from slostream.pipeline.alerting import Alerting
from slostream.pipeline.alignment import (
    PROGRESS_HEADER,
    STALLED_AFTER_S,
    Alignment,
    decode_progress,
    encode_progress,
    note_time,
    progress_header,
    read_ahead_limits,
    read_until_claim,
    written_by,
)
from slostream.pipeline.calibration import Calibration
from slostream.pipeline.envelopes import QUANTILE_LEVELS, audit_event, cut_text, deadletter_event, sli_windows
from slostream.pipeline.evaluators import Closes, Evaluator, Runs
from slostream.pipeline.evaluators.drift import DriftEvaluator
from slostream.pipeline.evaluators.policy import PolicyEvaluator
from slostream.pipeline.evaluators.slo import SloEvaluator
from slostream.pipeline.evaluators.slo_thresholds import SloThresholdEvaluator
from slostream.pipeline.evaluators.thresholds import ThresholdEvaluator
from slostream.pipeline.intake import Intake
from slostream.pipeline.ownership import FORWARD_HEADER, header_partition
from slostream.pipeline.series import Series, finite_or_none, series_key
from slostream.pipeline.types import RELATIVE_ACCURACY, Forward, Output, PipelineConfig, Snapshot, SourceRecord

log = logging.getLogger("slostream")


class SafeOffsets(NamedTuple):
    """The last offsets of a partition's two logs that a checkpoint's writes hold (-1: none)."""

    measurements: int
    repartition: int


# Series a tick advances between yields to the worker's event loop (0.1-0.2 s of closes at most).
TICK_SLICE_SERIES = 2000


class PartitionProcessor:
    """The series and SLOs one measurement partition owns, their clocks, and the offsets applied."""

    def __init__(self, partition: int, config: PipelineConfig, now: float):
        if config.report_window_s % config.resolutions[0].width:
            raise ValueError("report_window_s must be a multiple of the base bucket width")
        self.partition = partition
        self.config = config
        self.intake = Intake(partition, config)
        self.series: dict[tuple, Series] = {}
        self.store = WindowStore(config.resolutions[0].width, RELATIVE_ACCURACY)  # every series' windows
        self._series_of_owner: dict[int, Series] = {}
        self._held_of_group: Counter[tuple[str, str]] = Counter()  # series held per (service, metric)
        self.applied_offset = -1  # last offset of the measurement log fully processed
        self.repartition_offset = -1  # and of the repartition log
        self.alignment = Alignment(config.partitions, now)  # every partition's progress, as read here
        self.read_through = -np.inf  # every record appended to this partition before it is read (alignment)
        self._aligned_applied = -np.inf  # the aligned time align_parts last closed the waiting series up to
        self.newest_event_ts = -np.inf  # newest event time of any series here (control commands, metrics)
        self.now = now  # wall time of the last batch or tick
        self.alerting = Alerting(config, partition)
        self.alerting.now = now
        self.slos = SloEvaluator(config, self.alerting)
        # Every evaluator, in the order each is called.
        self.thresholds = ThresholdEvaluator(config, self.alerting)
        self.slo_thresholds = SloThresholdEvaluator(config, self.alerting)
        self.evaluators: tuple[Evaluator, ...] = (self.slos, PolicyEvaluator(config, self.alerting),
                                                  DriftEvaluator(config, self.alerting), self.thresholds,
                                                  self.slo_thresholds)
        self.calibration = Calibration(config)
        # What keeps state per series, each in a section of the series' record (``state``).
        self.series_keepers = (*self.evaluators, self.calibration)
        # The audit topic's offset, and the control topic's, of the last command applied; the
        # ids of recent signed commands (replays), by when each was issued.
        self.audit_offset = -1
        self.control_offset = -1
        self.seen_commands: dict[str, float] = {}
        self._deleted_keys: list[str] = []  # state keys to delete at the next checkpoint (evicted, old layout)
        self.pending = Output()  # what a restore emits (alerts of what is no longer configured), at the next tick
        self.unreadable_state = 0  # state records a restore could not read (each part started afresh)
        self.checkpoints = state.Checkpoints(now, self._replay_state(), config.report_window_s)
        self.series_records = state.SeriesRecords()

    # --- processing -------------------------------------------------------

    def process(self, records: list[SourceRecord], now: float) -> Output:
        """Records of this partition of the measurement topic, as producers wrote them: their headers
        carry no authority (forwards and progress come through the repartition log: ``receive``)."""
        return self._guarded(self._process, records, now, "applied_offset")

    def receive(self, records: list[SourceRecord], now: float, source_ends: dict[int, int]) -> Output:
        """Records of this partition of the repartition topic, which only workers write: the
        measurements other partitions (and this one) forwarded here, and their progress. A forward
        naming a position at or past its source partition's end in ``source_ends`` (the next offset
        of each partition of the measurement topic, as known after the records were read) is refused:
        no worker forwards what it has not read."""
        return self._guarded(functools.partial(self._receive, source_ends=source_ends), records, now,
                             "repartition_offset")

    def _guarded(self, step, records: list[SourceRecord], now: float, offset_of_log: str) -> Output:
        """``step`` over ``records``; if it raises (a bug that some record reaches: fuzzing found none
        left), each record again alone, and one that still raises is dead-lettered as
        ``internal_error`` and passed, so no record stops this worker, nor its successor replaying it.
        What the failed attempt counted already is skipped on the second by the series' replay marks."""
        try:
            return step(records, now)
        except Exception:
            log.exception("partition %d: processing a batch of %d records failed; retrying them one by one",
                          self.partition, len(records))
        out = Output()
        for record in records:
            try:
                out.extend(step([record], now))
            except Exception as exc:
                log.exception("partition %d: record at offset %d of %s failed; dead-lettered", self.partition,
                              record.offset, record.topic)
                message = f"processing the record failed: {type(exc).__name__}: {exc}"
                out.deadletter.append(deadletter_event(self.config, record,
                                                       Rejection(0, None, Reason.INTERNAL_ERROR, message)))
                setattr(self, offset_of_log, max(getattr(self, offset_of_log), record.offset))
        return out

    def _process(self, records: list[SourceRecord], now: float) -> Output:
        out = Output()
        fresh = _after(records, self.applied_offset)
        if not fresh:
            return out
        self.now = self.intake.now = self.alerting.now = now
        self.alerting.offset, self.alerting.repartition_offset = fresh[-1].offset, self.repartition_offset
        record_offsets = np.fromiter((r.offset for r in fresh), dtype=np.int64, count=len(fresh))
        record_times = np.fromiter((r.timestamp for r in fresh), dtype=np.float64, count=len(fresh))
        parts = self.intake.read(fresh, list(range(len(fresh))), record_offsets, record_times, out)
        if parts:  # when the data read here was written, for alignment
            self._window(fresh, rows.merge(parts), out, now, written_by(float(record_times.max()), now),
                         "mark")
        self.applied_offset = fresh[-1].offset
        self.read_through = max(self.read_through, written_by(max(r.timestamp for r in fresh), now))
        self.slos.evaluate_due(now, out)
        return out

    def _receive(self, records: list[SourceRecord], now: float, source_ends: dict[int, int]) -> Output:
        out = Output()
        fresh = _after(records, self.repartition_offset)
        if not fresh:
            return out
        self.now = self.intake.now = self.alerting.now = now
        self.alerting.offset, self.alerting.repartition_offset = self.applied_offset, fresh[-1].offset
        # Cut at progress records: what follows one is judged with it applied, however the log is
        # cut into batches.
        start = 0
        for i, record in enumerate(fresh):
            source = header_partition(record.headers, PROGRESS_HEADER)
            if source is not None:
                self._forwards(fresh[start:i], out, now, source_ends)
                self._progress(record, source, out)
                start = i + 1
        self._forwards(fresh[start:], out, now, source_ends)
        self.repartition_offset = fresh[-1].offset
        self.slos.evaluate_due(now, out)
        return out

    def _forwards(self, records: list[SourceRecord], out: Output, now: float, source_ends: dict[int, int]) -> None:
        if not records:
            return
        parts = []
        written = -np.inf  # when the data forwarded was written, for alignment
        for i, record in enumerate(records):
            origin = header_partition(record.headers, FORWARD_HEADER)
            if origin is None or not 0 <= origin < self.config.partitions:
                self.intake.unreadable(record, "repartitioned", ValueError("it names no source partition"), out)
                continue
            received, forwarded_written = self.intake.receive(record, i, origin, source_ends.get(origin, 0), out)
            parts += received
            written = max(written, now if forwarded_written is None else written_by(forwarded_written, now))
        if parts:
            self._window(records, rows.merge(parts), out, now, written, "forward_mark")

    def _progress(self, record: SourceRecord, source: int, out: Output) -> None:
        """Another partition's (or this one's) progress. A series in the batch after it is judged
        with it; the others close what it aligns in ``align_parts``."""
        if not 0 <= source < self.config.partitions:
            self.intake.unreadable(record, "progress", ValueError(f"there is no partition {source}"), out)
            return
        try:
            progress = decode_progress(record.value)
        except ValueError as exc:
            self.intake.unreadable(record, f"progress of partition {source}", exc, out)
            return
        self.alignment.report(source, progress, self.now)

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

    def read_claim(self, end_known_at: float | None) -> float | None:
        """What this partition claims to have read (``alignment.read_until_claim``)."""
        return read_until_claim(end_known_at, self.read_through)

    def progress(self, end_known_at: float | None) -> Output:
        """Progress records of this partition for every partition (itself included): how far it has
        read (``alignment``), its log's end having been at or before its read position at
        ``end_known_at`` (None: not known); the forwards of what it read were sent before these."""
        out = Output()
        if self.config.partitions > 1:
            value = encode_progress(self.read_claim(end_known_at))
            header = [progress_header(self.partition)]
            out.forwards = [Forward(p, value, header, 0) for p in range(self.config.partitions)]
        return out

    def _window(self, records: list[SourceRecord], batch: rows.Rows, out: Output, now: float, written: float,
                replay_marks: str) -> None:
        """Judge lateness per series, then window the batch part by part (cut where an SLO's clock
        enters a new base bucket, so it is judged there as a live run would). Its records were
        written by ``written`` (alignment); ``replay_marks``: the store's column of replay marks of
        the log they were read from (``WindowStore.mark`` or ``forward_mark``)."""
        width = self.config.resolutions[0].width
        grace = self.config.grace_s
        ids, keys = batch.ids, batch.keys
        known = [self.series.get(key) for key in keys]
        owners = np.array([-1 if s is None else s.windows.owner for s in known], dtype=np.int64)
        before, after, newest = watermarks.of_batch(self.config, self.store, self.alignment.aligned_until, ids,
                                                    owners, batch.ts, written)
        # Held already (the source replayed after a crash): skipped before lateness is judged.
        replayed = batch.marks <= watermarks.per_key(getattr(self.store, replay_marks), owners, -1)[ids]
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
            out.deadletter.append(deadletter_event(self.config, record, rejection))
        self.newest_event_ts = max(self.newest_event_ts, float(batch.ts.max()))
        for start, stop, crossings in self.slos.slices(ids, keys, batch.ts):
            for group, clock in crossings:  # this SLO's clock enters a new bucket: judge the one before
                self.slos.judge_crossing(group, clock, out)
            accepted = np.flatnonzero(~(late[start:stop] | replayed[start:stop])) + start
            if accepted.size:
                self._ingest(accepted, batch, known, after, out, now, written, replay_marks)

    def _ingest(self, idx: np.ndarray, batch: rows.Rows, known: list[Series | None], marks_after: np.ndarray,
                out: Output, now: float, written: float, replay_marks: str) -> None:
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
        self.calibration.add(series_of, sids, ts, values, batch.outcomes[idx])
        newest_ts = np.maximum.reduceat(ts, series_firsts)
        newest_marks = np.maximum.reduceat(marks_after[idx], series_firsts)
        np.maximum.at(getattr(self.store, replay_marks), owners, np.maximum.reduceat(run_offsets, series_firsts))
        runs = Runs(touched, sids, starts, idx, values, oks, run_offsets, ts, series_of, newest_marks, series_firsts,
                    batch)
        for evaluator in self.evaluators:
            evaluator.ingested(runs)
        out.accepted += len(idx)
        store = self.store
        store.max_ts[owners] = np.maximum(store.max_ts[owners], newest_ts)
        store.last_activity[owners] = now
        if self.config.partitions > 1:  # data of this series up to its newest event time was written by then
            store.note_reads(owners, note_time(written), newest_ts)
        store.watermark[owners] = np.maximum(store.watermark[owners], newest_marks)
        self._close(touched, owners, out)

    def _close(self, series_list: list[Series], owners: np.ndarray, out: Output, advanced: bool = False) -> None:
        """Close what the watermarks of ``series_list`` (their window ``owners``) passed; report the
        SLI windows completed and hand the close to every evaluator (the windows are handed out only
        once). ``advanced``: moved by a tick or alignment, not by measurements."""
        if not series_list:
            return
        store = self.store
        before = store.closed_until[owners].copy()
        closed = store.close(owners, store.watermark[owners], QUANTILE_LEVELS)
        self.calibration.take(closed, self._series_of_owner)
        reports = []
        if len(closed):
            for series, data, event, calibration in sli_windows(closed, self.config.report_window_s,
                                                                 self._series_of_owner,
                                                   self.config.source):
                out.sli.append(event)
                reports.append((series, data, calibration))
        moved = np.flatnonzero(store.closed_until[owners] != before).tolist()
        closes = Closes(series_list, owners, before, moved, closed, reports, advanced)
        for evaluator in self.evaluators:
            evaluator.closed(closes, out)

    def _get_series(self, key: tuple) -> Series:
        series = self.series.get(key)
        if series is None:
            service, metric = key[0], key[1]
            labels = dict(zip(self.config.label_keys, key[2])) if len(key) > 2 else {}
            windows = TumblingWindows(self.config.resolutions[0].width, self.window_lengths(service, metric),
                                      RELATIVE_ACCURACY, self.store)
            series = Series(key, series_key(service, metric, labels), service, metric, labels, windows)
            self.hold(series)
        return series

    def hold(self, series: Series) -> None:
        for evaluator in self.evaluators:
            evaluator.watch(series)
        self.series[series.ident] = series
        self._series_of_owner[series.windows.owner] = series
        self._held_of_group[series.group] += 1

    def window_lengths(self, service: str, metric: str) -> dict[int, bool]:
        """The tumbling window lengths a series' readers need, and whether each needs quantiles: the
        SLI report window (it reports quantiles), and what each evaluator reads."""
        lengths = {self.config.report_window_s: True}
        for evaluator in self.evaluators:
            for length, quantiles in evaluator.window_lengths((service, metric)).items():
                lengths[length] = lengths.get(length, False) or quantiles
        return lengths

    def tick(self, now: float) -> Output:
        """Let event time run on for series that have gone quiet, close what is due, judge their SLOs."""
        out = Output()
        for part in self.tick_parts(now):
            out.extend(part)
        return out

    def tick_parts(self, now: float) -> Iterator[Output]:
        """``tick`` a slice of the series at a time (a worker yields to its event loop between
        them): read them all before this processor takes anything else."""
        self.now = self.alerting.now = now
        self.alerting.offset, self.alerting.repartition_offset = self.applied_offset, self.repartition_offset
        yield from self._advance_in_slices(self.store.owners(), now, idle=True)
        out, self.pending = self.pending, Output()
        self.slos.advance_idle_clocks(now)
        self._evict_quiet(now, out)
        self.slos.evaluate_due(now, out, force=True)
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
        moved = watermarks.advance(self.config, self.store, owners, now, idle, self.alignment.aligned_until)
        series_of = self._series_of_owner
        self._close([series_of[owner] for owner in owners[moved].tolist()], owners[moved], out, advanced=True)

    def _evict_quiet(self, now: float, out: Output) -> None:
        """Drop the series quiet for ``series_ttl_s`` of wall time whose every window is reported
        (a tombstone deletes its state); an SLO left without series keeps its clock running."""
        store, held = self.store, self._series_of_owner
        used = store.owner_count
        quiet = np.flatnonzero((now - store.last_activity[:used] >= self.config.series_ttl_s) &
                               (store.open_count[:used] == 0))
        evicted = [held[owner] for owner in quiet.tolist() if owner in held]
        self.evict(evicted, out)
        out.evicted += len(evicted)

    def evict(self, evicted: list[Series], out: Output) -> None:
        """Drop ``evicted`` with their state (tombstones), their open windows unreported (none, for a
        quiet series), and the alerts raised about each alone (resolved, if firing, at the series'
        own event time)."""
        store = self.store
        for series in evicted:
            keys = [fingerprint(labels) for evaluator in self.evaluators for labels in evaluator.alert_labels(series)]
            self.alerting.retire(max(series.max_ts, series.watermark + self.config.grace_s), keys, out)
            self._held_of_group[series.group] -= 1
            if not self._held_of_group[series.group]:
                del self._held_of_group[series.group]
                out.retired_groups.append(series.group)
            self.forget(series)
        for series in evicted:
            store.discard(series.windows.owner)

    def forget(self, series: Series) -> None:
        """Let go of a held series (its window owner is the caller's to release); its state is
        deleted at the next checkpoint."""
        del self.series[series.ident]
        del self._series_of_owner[series.windows.owner]
        self._deleted_keys.append(state_keys.series_key(self.partition, series.key))
        for keeper in self.series_keepers:
            keeper.release(series)

    def evaluate_pending(self, now: float) -> Output:
        """Judge SLOs the wall-clock limiter held back, once the interval has passed."""
        out = Output()
        self.now = self.alerting.now = now
        self.alerting.offset, self.alerting.repartition_offset = self.applied_offset, self.repartition_offset
        self.slos.evaluate_due(now, out)
        return out

    # --- operator commands --------------------------------------------------

    def judge_control(self, record: SourceRecord, now: float, auth: ControlAuth,
                      limits: ControlLimits) -> tuple[bytes, dict]:
        """Judge a record of the control topic at wall time ``now``, against the commands and
        silences this partition holds (the worker that owns partition 0 judges for the group): its
        audit event, applied or refused. A command that makes judging raise (a bug it reaches) is
        refused as ``internal_error``: audited once like any refusal, it stops neither this worker nor
        the next judge, which would read it again."""
        try:
            return audit_event(self.config, record, self._verdict(record, now, auth, limits), now)
        except Exception as exc:
            log.exception("partition %d: judging the control command at offset %d failed; refused", self.partition,
                          record.offset)
            refusal = CommandError(Refusal.INTERNAL_ERROR, cut_text(f"judging the command failed: "
                                                                    f"{type(exc).__name__}: {exc}", MAX_FIELD_CHARS))
            return audit_event(self.config, record, refusal, now)

    def _verdict(self, record: SourceRecord, now: float, auth: ControlAuth,
                 limits: ControlLimits) -> Command | CommandError:
        if len(record.value or b"") > self.config.max_deadletter_bytes:
            return CommandError(Refusal.TOO_LARGE, f"the command is {len(record.value)} bytes; at most "
                                                   f"{self.config.max_deadletter_bytes} (max_deadletter_bytes)")
        return judge(parse_command(record.value, record.offset, now), now, auth, limits, self.seen_commands,
                     self.alerting.book.silences)

    def apply_control(self, record: SourceRecord) -> Iterator[Output]:
        """Apply a record of the audit topic once (its offset is persisted with the state): the
        command it says was applied, and the id of any signed command, for replays. A record that
        is no audit event is dead-lettered by partition 0 alone. A policy's ``recommend`` comes one
        series at a time: a worker may process other batches between them. A record whose
        application raises (a bug it reaches) is dead-lettered as ``internal_error`` by each partition
        it failed on, and passed: it was audited already, and stops neither this worker nor a successor."""
        if record.offset <= self.audit_offset:
            return
        self.audit_offset = record.offset
        try:
            yield from self._apply_audited(record)
        except Exception as exc:
            log.exception("partition %d: applying the audit record at offset %d failed; dead-lettered",
                          self.partition, record.offset)
            message = f"applying the command to partition {self.partition} failed: {type(exc).__name__}: {exc}"
            yield Output(deadletter=[deadletter_event(self.config, record,
                                                      Rejection(0, None, Reason.INTERNAL_ERROR, message))])

    def _apply_audited(self, record: SourceRecord) -> Iterator[Output]:
        audited = read_audit(record.value)
        if isinstance(audited, str):
            if self.partition == 0:
                rejection = Rejection(0, None, Reason.BAD_COMMAND, audited, None)
                yield Output(deadletter=[deadletter_event(self.config, record, rejection)])
            return
        offset, judged_at, data, command = audited
        if offset <= self.control_offset:  # audited twice (a judge that lost partition 0 as it wrote)
            return
        self.control_offset = offset
        remember(self.seen_commands, data, judged_at)
        if command is None:
            return
        self.alerting.offset, self.alerting.repartition_offset = self.applied_offset, self.repartition_offset
        if command.kind != "recommend":
            out = Output()
            self.alerting.command(self.newest_event_ts if self.newest_event_ts > -np.inf else command.time, command,
                                  out)
            yield out
            return
        trigger = f"control command at offset {offset}" + (f" by {command.by}" if command.by else "")
        if command.slo is not None:
            out = Output()
            self.slo_thresholds.recommend_now(command.slo, trigger, out)
            yield out
            return
        # One series' recommendation at a time: each fits and forecasts its model (~25 ms).
        for one in [one for one in self.series.values() if one.models and command.policy in one.models]:
            out = Output()
            self.thresholds.recommend_now((one,), command.policy, trigger, out)
            yield out

    def snapshot(self, reports: bool = False, kinds: tuple[str, ...] = ()) -> Snapshot:
        """What the web views and metrics read: ``reports``, each series' newest SLI report; the
        statuses of the evaluators of ``kinds``."""
        book = self.alerting.book
        statuses = {e.kind: e.status(self.series.values()) for e in self.evaluators if e.kind in kinds}
        return Snapshot(self.partition, len(self.series), self.applied_offset, self.newest_event_ts,
                        self.alignment.aligned_until, statuses, book.firing(),
                        [vars(silence).copy() for silence in book.silences.values()],
                        [s.last_report for s in self.series.values() if s.last_report is not None] if reports else [])

    # --- state ------------------------------------------------------------

    def checkpoint(self, final: bool = False) -> tuple[Iterator[tuple[str, bytes | None]], SafeOffsets]:
        """Changed state as (key, value) writes (None: delete the key), and the offsets they make safe.

        Everything up to and including the returned offsets (of the measurement and the
        repartition log) is in the writes, so the consumer may commit ``offset + 1`` of each once
        they are durable. A series is written once
        something was emitted from its state (a window completed, or a policy judged one), or once
        its changes have waited ``state.UNWRITTEN_REPORT_WINDOWS`` report windows of wall time; until
        then the offset stays at the checkpoint before its first unwritten change, and a replay
        from there redoes those changes exactly (each series' replay mark skips what is written).
        Kafka Streams' record caches defer writes the same way. ``final`` writes every series
        (a revoke or a stop: the next owner replays nothing), as does an eviction (a replay must not
        bring an evicted series back), but a series whose record the changelog would refuse
        (``state.SeriesRecords``). Read the writes before this processor takes anything else.
        """
        deleted, self._deleted_keys = self._deleted_keys, []
        dirty, replay = self.checkpoints.take(self.store, self.now, self._replay_state(), final or bool(deleted),
                                              functools.partial(self.series_records.too_large, self))
        return (state.checkpoint_writes(self, deleted, dirty, replay),
                SafeOffsets(replay["applied_offset"], replay["repartition_offset"]))

    @property
    def unwritten_due(self) -> bool:
        """Whether some series' changes have waited long enough to be written at the next checkpoint
        even if nothing else happens here (others wait for news: a checkpoint with nothing new to
        commit only costs the consumer a commit)."""
        return self.checkpoints.unwritten_due(self.now)

    def _replay_state(self) -> dict:
        """What a replay from the offset applied now starts with: the rest of the partition's state
        only grows, or is kept with replay marks of its own."""
        return {
            "applied_offset": self.applied_offset,
            "repartition_offset": self.repartition_offset,
            "forward_marks": {str(p): o for p, o in self.intake.forward_marks.items()},
            "alignment": self.alignment.to_state(),
            "read_through": finite_or_none(self.read_through),
        }

    @classmethod
    def restore(cls, partition: int, config: PipelineConfig, items, now: float) -> PartitionProcessor:
        """Rebuild from persisted (key, value) pairs of this partition (``state.restore``)."""
        proc = cls(partition, config, now)
        state.restore(proc, items, now)
        return proc


def read_ahead_of(procs: Mapping[int, PartitionProcessor], end_known_at: Mapping[int, float | None],
                  now: float) -> dict[int, float]:
    """How far (record time) each partition may be read at wall time ``now``
    (``alignment.read_ahead_limits``), as a worker holding the processors ``procs`` knows it: what
    its own partitions have read (each last at its log's end at ``end_known_at``, or None), and what
    every other partition reported to them (stalled, if not heard of at any of them for
    ``STALLED_AFTER_S``)."""
    if not procs:
        return {}
    config = next(iter(procs.values())).config
    claims: dict[int, float | None] = {}
    last_heard = dict.fromkeys(range(config.partitions), -np.inf)
    for proc in procs.values():
        for source in range(config.partitions):
            last_heard[source] = max(last_heard[source], proc.alignment.last_heard(source))
        for source, read_until in proc.alignment.read_until.items():
            claims[source] = max(claims.get(source, -np.inf), read_until)
    for partition, proc in procs.items():
        claim = proc.read_claim(end_known_at.get(partition))
        if claim is not None:
            claims[partition] = max(claims.get(partition, -np.inf), claim)
        last_heard[partition] = now  # read here
    stalled = frozenset(p for p, at in last_heard.items() if at < now - STALLED_AFTER_S)
    return read_ahead_limits(claims, config.partitions, config.max_read_ahead_s, stalled)


def _after(records: list[SourceRecord], applied: int) -> list[SourceRecord]:
    """The records past offset ``applied``, each offset once: a consumer that fetched some again
    (a seek back) must not have them counted twice within one batch."""
    fresh = []
    for record in records:
        if record.offset > applied:
            fresh.append(record)
            applied = record.offset
    return fresh
