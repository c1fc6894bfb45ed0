"""The worker's batch ingest over the pure pipeline: one ``PartitionProcessor`` per owned partition,
the state table, the checkpoint (outputs, then changelog, then the commit); control commands reach
the processors through ``io.control``.
Offsets of the measurement and repartition topics are committed by the checkpoint, only after the
state that covers them is durable in the changelog."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections import Counter, deque

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP

from slostream.config import Settings, pipeline_config
from slostream.core.measurement import Reason, Rejection
from slostream.io import undecodable
from slostream.io.consumer import SloApp
from slostream.io.fencing import Fenced
from slostream.io.metrics import PipelineMetrics
from slostream.io.producer import YIELD_EVERY_WRITES, NotDelivered, OutputProducer
from slostream.io.security import kafka_client_options
from slostream.io.sinks import AlertSinks
from slostream.io.slicer import Slicer
from slostream.io.topics import STATE_TABLE
from slostream.pipeline import state_keys
from slostream.pipeline.envelopes import deadletter_event, oversized_output_event
from slostream.pipeline.ownership import FORWARD_HEADER, header_partition, last_source_offset
from slostream.pipeline.pacing import CheckpointPacer
from slostream.pipeline.partition import PartitionProcessor, read_ahead_of
from slostream.pipeline.types import Output, Snapshot, SourceRecord

log = logging.getLogger("slostream")

# A partition that reaches the end of its log reports at once, but at most this often (each report
# is one record to every partition); every tick it reports regardless.
PROGRESS_MIN_INTERVAL_S = 0.25
# How often a report held back by that interval is looked at (``report_owed_progress``).
PROGRESS_OWED_CHECK_S = 0.05
# How long reading back a forward's source record may wait for the broker.
HOLDS_TIMEOUT_MS = 2000
# A forward whose source position the broker does not show is asked about this many times, waiting
# 1, 2, 4, ... s between (a broker error waits and does not count), before it is refused.
HOLDS_ATTEMPTS = 5
HOLDS_RETRY_CAP_S = 30
# A revoke or a stop waits this long for its final checkpoint (a worker that does not stop on
# SIGTERM is worse than a replay).
FINAL_CHECKPOINT_TIMEOUT_S = 10.0
RECENT_DRIFT_EVENTS = 100  # kept for /api/drift, newest first
# A checkpoint longer than this is logged with its stages (outputs, changelog, commit).
SLOW_CHECKPOINT_S = 2.0


def source_record(topic: str, partition: int, offset: int, timestamp_ms: int | None, key: bytes | None,
                   value: bytes | None, headers: tuple) -> SourceRecord:
    return SourceRecord(topic, partition, offset, (timestamp_ms or 0) / 1000.0, key, value, headers)


def keep_out_of_gc() -> None:
    """Move what is alive now (mostly series state) out of the cyclic garbage collector's reach.

    At 100,000 series a full collection walks millions of objects: 1.1-1.4 s with the event loop
    held, and a fifth of all processing time (measured). State holds no reference cycles, so what
    dies after this is still freed by reference counting; young cycles are collected first.
    """
    gc.collect(1)
    gc.freeze()


class DriftTally:
    """Drift detections per series group (service, metric): counts by (aggregate, direction) and
    the start of each aggregate's newest change. A group is forgotten with its last series."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], tuple[Counter[tuple[str, str]], dict[str, float]]] = {}

    def add(self, data: dict) -> None:
        counts, changed_at = self.groups.setdefault((data["service"], data["metric"]), (Counter(), {}))
        counts[data["aggregate"], data["direction"]] += 1
        changed_at[data["aggregate"]] = data["changed_at"]

    def forget(self, groups: list[tuple[str, str]]) -> None:
        for group in groups:
            self.groups.pop(group, None)

    def detections(self) -> list[tuple[tuple[str, str, str, str], int]]:
        """((service, metric, aggregate, direction), count), sorted."""
        return sorted(((*group, *kind), count) for group, (counts, _) in self.groups.items()
                      for kind, count in counts.items())

    def changes(self) -> list[tuple[tuple[str, str, str], float]]:
        """((service, metric, aggregate), start of its newest change), sorted."""
        return sorted(((*group, aggregate), at) for group, (_, changed_at) in self.groups.items()
                      for aggregate, at in changed_at.items())


class IngestService:
    """Owns the partition processors of this worker and their persistence."""

    def __init__(self, app: SloApp, settings: Settings, metrics: PipelineMetrics, outputs: OutputProducer):
        self.app = app
        self.outputs = outputs
        self.lease = outputs.lease
        self.fences = 0  # the lease's lapses this worker fenced itself for
        self._skipped_through: dict[int, int] = {}  # measurement partition -> last offset of a batch skipped
        self._fenced_generation: int | None = None  # the generation it was fenced in, until a new one
        self.settings = settings
        self.metrics = metrics
        self.topic = settings.topic("measurements")
        self.pipeline_config = pipeline_config(settings)
        self.sinks: AlertSinks | None = None
        self.alerts_emitted: Counter[str] = Counter()
        self.breaches_emitted = 0
        # Detections by series group (forgotten with its last series), and the newest for /api/drift.
        self.drift = DriftTally()
        self.drift_recent: deque[dict] = deque(maxlen=RECENT_DRIFT_EVENTS)
        self.recommendations_emitted = 0
        self.processors: dict[int, PartitionProcessor] = {}
        self.lock = asyncio.Lock()
        self.slicer = Slicer()
        self._checkpoint_lock = asyncio.Lock()
        self.pacer = CheckpointPacer(settings.checkpoint_interval_s)
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.records_consumed = 0
        self.skipped_replay = 0
        self.forwarded = 0
        self.forward_duplicates = 0
        self.series_evicted = 0
        self.series_dropped_label_keys = 0
        self.undecodable_batches = 0
        self.unreadable_state = 0  # changelog records a restore could not read (what each held started afresh)
        self._undecodable_letters: list[tuple[bytes, dict]] = []
        self.sli_emitted = 0
        self.checkpoints = 0
        self._uncheckpointed: set[int] = set()
        self._progress_sent: dict[int, float] = {}  # partition -> wall time of its last progress
        self._progress_owed: set[int] = set()  # partitions handled since their last progress
        self.state = app.Table(
            STATE_TABLE,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
        )
        self.measurements = app.topic(self.topic, partitions=settings.partitions, acks=False,
                                      key_serializer="raw", value_serializer="raw")
        # Forwards and progress between partitions: internal, co-partitioned with the measurements
        # (Faust assigns topics of one partition count to the same members partition by partition).
        self.repartition_topic = settings.topic("repartition")
        self.repartition = app.topic(self.repartition_topic, partitions=settings.partitions, acks=False,
                                     key_serializer="raw", value_serializer="raw")
        self._source_ends: dict[int, int] = {}  # measurement partition -> its end offset, as last known
        self._reader: AIOKafkaConsumer | None = None  # reads a forward's source record back (``_holds``)
        self.sli_topic = settings.topic("sli")
        self.deadletter_topic = settings.topic("deadletter")
        self.alerts_topic = settings.topic("alerts")
        self.breaches_topic = settings.topic("breaches")
        self.drift_topic = settings.topic("drift")
        self.recommendations_topic = settings.topic("recommendations")
        outputs.track([self.sli_topic, self.deadletter_topic, self.alerts_topic, self.breaches_topic, self.drift_topic,
                       self.recommendations_topic, self.state.changelog_topic.get_topic_name()],
                      [self.repartition_topic])

    def processor(self, partition: int) -> PartitionProcessor:
        proc = self.processors.get(partition)
        if proc is None:
            prefix = state_keys.partition_prefix(partition).encode()
            items = [
                (k.decode(), v) for k, v in self.state.data.items() if k.startswith(prefix)
            ]
            proc = PartitionProcessor.restore(partition, self.pipeline_config, items, time.time())
            self.unreadable_state += proc.unreadable_state
            self.processors[partition] = proc
            restored = proc.snapshot(kinds=("slos",))
            log.info("partition %d: restored %d series and %d SLOs, resuming after offset %d",
                     partition, restored.series, len(restored.statuses["slos"]), restored.applied_offset)
        return proc

    async def handle(self, partition: int, batch: list[SourceRecord]) -> None:
        """A fetched batch of the measurement topic (built as ``SourceRecord`` by ``io.undecodable``)."""
        if not self.writing():
            return  # fenced: the rejoin seeks back to the committed offsets
        for records in self.slicer.slices(batch, forwarded=False):
            await self._apply(partition, records, False, functools.partial(PartitionProcessor.process, records=records))
        if self.settings.partitions > 1:
            self._progress_owed.add(partition)
            await self.report_owed_progress()

    async def report_owed_progress(self) -> None:
        """Progress of the partitions handled since they last reported, once they are at the end of
        their log and ``PROGRESS_MIN_INTERVAL_S`` has passed since that report: said now, not at the
        next tick, as every owner closes its windows only when all partitions have read past them
        (the last records of a burst would otherwise wait up to ``tick_interval_s``)."""
        self._progress_owed.intersection_update(self.processors)
        now = time.time()
        due = [partition for partition in self._progress_owed
               if now - self._progress_sent.get(partition, 0.0) >= PROGRESS_MIN_INTERVAL_S]
        if due and self.writing():
            async with self.lock:
                await self._send_progress(due, only_at_end=True)

    async def handle_repartition(self, partition: int, batch: list[SourceRecord]) -> None:
        """A fetched batch of the repartition topic: forwards and progress for this partition."""
        if not self.writing():
            return  # fenced: the rejoin seeks back to the committed offsets
        for records in self.slicer.slices(batch, forwarded=True):
            ends = await self._ends_for(records)
            await self._apply(partition, records, True,
                              functools.partial(PartitionProcessor.receive, records=records, source_ends=ends))

    async def _apply(self, partition: int, records: list[SourceRecord], forwarded: bool, step) -> None:
        async with self.lock:
            if not self.writing():  # fenced while this waited: the rejoin seeks back to the committed offsets
                return
            started = time.perf_counter()  # not the wait for the lock (a tick or checkpoint yielding)
            proc = self.processor(partition)
            out = step(proc, now=time.time())
            self._uncheckpointed.add(partition)
            await self._emit(out)
            elapsed = time.perf_counter() - started
            for aligned in proc.align_parts():
                await asyncio.sleep(0)  # timers and the web endpoints run; the lock keeps the state still
                await self._emit(aligned)
        self.records_consumed += len(records)
        self.metrics.observe_batch(elapsed)
        self.slicer.measured(forwarded, records, elapsed)
        await asyncio.sleep(0)  # as between the slices of a tick

    async def _ends_for(self, records: list[SourceRecord]) -> dict[int, int]:
        """The end offsets of the measurement partitions, as far as the forwards in ``records`` need
        them: a forward was made after its source records were appended, so an end asked for now
        holds every genuine one (``PartitionProcessor.receive``). The broker is asked again only for
        a source named past the end last known; and where its answer still falls short, the named
        record is read back (Tansu reports a partition's end from the first record of its last
        batch, which may hold more). A partition this worker owns holds what it has read of it, so
        its own forwards (all of them, when one worker owns every partition) cost no round trip."""
        for partition, proc in self.processors.items():
            if proc.applied_offset >= self._source_ends.get(partition, 0):
                self._source_ends[partition] = proc.applied_offset + 1
        named: dict[int, int] = {}
        for record in records:
            source = header_partition(record.headers, FORWARD_HEADER)
            offset = None if source is None else last_source_offset(record.value)
            if offset is not None:
                named[source] = max(named.get(source, -1), offset)
        tps = [TP(self.topic, p) for p in range(self.settings.partitions)]
        for attempt in range(HOLDS_ATTEMPTS):
            short = {s: o for s, o in named.items() if o >= self._source_ends.get(s, 0)}
            if not short or not self.writing():
                break
            try:
                for tp, end in (await self.app.consumer.highwaters(*tps)).items():
                    self._source_ends[tp.partition] = max(end, self._source_ends.get(tp.partition, 0))
                for source, offset in short.items():
                    if offset >= self._source_ends.get(source, 0) and await self._holds(source, offset):
                        self._source_ends[source] = offset + 1
            except KafkaError as exc:  # the broker is away: wait for it, a forward is not refused for that
                log.warning("reading back forwarded positions: %r; again in %d s", exc, HOLDS_RETRY_CAP_S)
                await asyncio.sleep(HOLDS_RETRY_CAP_S)
                continue
            if attempt + 1 < HOLDS_ATTEMPTS and any(o >= self._source_ends.get(s, 0) for s, o in named.items()):
                await asyncio.sleep(min(2 ** attempt, HOLDS_RETRY_CAP_S))  # a slow answer is no refusal yet
        return self._source_ends

    async def stop_reader(self) -> None:
        if self._reader is not None:
            await self._reader.stop()

    async def _holds(self, partition: int, offset: int) -> bool:
        """Whether ``partition`` of the measurement topic holds a record at ``offset`` (read back)."""
        if self._reader is None:
            self._reader = AIOKafkaConsumer(bootstrap_servers=self.settings.broker_hosts, enable_auto_commit=False,
                                            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
                                            **kafka_client_options(self.settings))
            await self._reader.start()
        tp = TopicPartition(self.topic, partition)
        self._reader.assign([tp])
        self._reader.seek(tp, offset)
        with undecodable.unreported():  # the worker's consumer reports what it skips (once)
            fetched = await self._reader.getmany(tp, timeout_ms=HOLDS_TIMEOUT_MS, max_records=1)
        return any(record.offset >= offset for record in fetched.get(tp, ()))

    def skipped_batch(self, topic: str, partition: int, first: int, after: int, error: str, too_large: bool) -> None:
        """A fetched batch that could not be decoded, or inflates past ``max_batch_bytes``
        (``too_large``), was skipped (see ``io.undecodable``): count it and dead-letter a note of it
        (its bytes are not read, so none are attached)."""
        self.undecodable_batches += 1
        if topic == self.topic:  # read, as far as progress goes: a skipped last batch must not hold every series
            self._skipped_through[partition] = max(self._skipped_through.get(partition, -1), after - 1)
        record = SourceRecord(topic, partition, first, time.time(), None, None)
        message = f"record batch at offsets {first}-{after - 1} could not be decoded and was skipped: {error}"
        reason = Reason.TOO_LARGE if too_large else Reason.UNDECODABLE_BATCH
        self._undecodable_letters.append(deadletter_event(self.pipeline_config, record,
                                                          Rejection(0, None, reason, message)))

    async def tick(self) -> None:
        if not self.writing():
            return
        async with self.lock:
            if self._undecodable_letters:
                letters, self._undecodable_letters = self._undecodable_letters, []
                await self._emit(Output(deadletter=letters))
            if self.ready():
                # Partitions without traffic still evaluate their SLOs and take control commands.
                for tp in self.app.consumer.assignment():
                    if tp.topic == self.topic:
                        self.processor(tp.partition)
            await self._send_progress(list(self.processors))  # from every assigned partition, traffic or not
            now = time.time()
            for partition, proc in list(self.processors.items()):
                self._uncheckpointed.add(partition)
                for out in proc.tick_parts(now):
                    await self._emit(out)
                    await asyncio.sleep(0)  # timers and the web endpoints run; the lock keeps the state still

    async def _send_progress(self, partitions: list[int], only_at_end: bool = False) -> None:
        """Tell every partition how far each of ``partitions`` has read (``pipeline.alignment``),
        behind the forwards already sent: a partition owner closes a series only when all have read
        past it. With ``only_at_end``, only a partition at the end of its log reports."""
        if self.settings.partitions == 1:
            return
        for partition in partitions:
            proc = self.processors.get(partition)
            if proc is None:
                continue
            end_known_at = self._end_known_at(partition, proc)
            if end_known_at is None and only_at_end:
                continue
            await self._emit(proc.progress(end_known_at))
            self._progress_sent[partition] = time.time()
            self._progress_owed.discard(partition)

    def _end_known_at(self, partition: int, proc: PartitionProcessor) -> float | None:
        """When the measurement partition was last seen at its end, if it has read that far."""
        read_to = max(proc.applied_offset, self._skipped_through.get(partition, -1))
        return self.app.consumer.end_known_at(TP(self.topic, partition), read_to + 1)

    def read_ahead_limits(self) -> dict[int, float]:
        """How far (record time) each measurement partition may be read now (``read_ahead_of``)."""
        return read_ahead_of(self.processors, {partition: self._end_known_at(partition, proc)
                                               for partition, proc in self.processors.items()}, time.time())

    async def evaluate_pending(self) -> None:
        if not self.writing():
            return
        async with self.lock:
            now = time.time()
            for partition, proc in list(self.processors.items()):
                out = proc.evaluate_pending(now)
                if out.alerts:
                    self._uncheckpointed.add(partition)
                await self._emit(out)

    async def emit_parts(self, proc: PartitionProcessor, parts) -> None:
        """Emit the outputs of a processor's step made in slices (called under the lock). Between
        slices the lock is let go, so ingest, ticks and checkpoints go on: a ``recommend`` over
        10,000 series takes minutes. A processor no longer this worker's (revoked, or fenced) gets
        no more of them."""
        partition = proc.partition
        for out in parts:
            if self.processors.get(partition) is not proc:
                return
            await self._emit(out)
            self._uncheckpointed.add(partition)
            self.lock.release()  # asyncio's lock is fair: a waiting batch runs before this takes it back
            await asyncio.sleep(0)
            await self.lock.acquire()

    def snapshots(self, reports: bool = False, kinds: tuple[str, ...] = ()) -> list[Snapshot]:
        """What the web views and metrics read: each owned partition's ``Snapshot``, by partition."""
        return [proc.snapshot(reports, kinds) for _, proc in sorted(self.processors.items())]

    def statuses(self, kind: str) -> list[dict]:
        """The statuses of one kind of evaluator, over every owned partition."""
        return [status for snap in self.snapshots(kinds=(kind,)) for status in snap.statuses[kind]]

    def firing_alerts(self) -> list[dict]:
        return [alert for snap in self.snapshots() for alert in snap.firing]

    def recommendation_statuses(self) -> list[dict]:
        return [*self.statuses("thresholds"), *self.statuses("slo_thresholds")]

    def slo_statuses(self) -> list[dict]:
        return sorted(self.statuses("slos"), key=lambda s: s["slo"])

    def writing(self) -> bool:
        """Whether this worker may write outputs, forwards and state now (``io.fencing``). The
        first call after its group lease ran out fences it: what it has not delivered is failed,
        its partitions' state is dropped (the new owner replays from the last commit, and this
        worker recovers the changelog when the group gives it partitions again), and it rejoins."""
        held = self.lease.held()
        if self.lease.lapses > self.fences:
            self._fence()
        # Fenced, it writes nothing until the rejoin it asked for gives it a new generation (a lapse
        # counted at a rejoin that came first would otherwise let it write from the wiped state).
        return held and self.lease.lapses == self.fences and self.lease.generation != self._fenced_generation

    def _fence(self) -> None:
        self.fences = self.lease.lapses
        self._fenced_generation = self.lease.generation
        log.warning("group lease ran out (no heartbeat accepted for %.0f s, session timeout %.0f s): writing "
                    "nothing, dropping the state of partitions %s and rejoining the group",
                    time.monotonic() - self.lease.renewed_at, self.lease.session_timeout_s, sorted(self.processors))
        self.outputs.abandon()
        prefixes = tuple(state_keys.partition_prefix(partition).encode() for partition in self.processors)
        for key in [key for key in self.state.data if key.startswith(prefixes)]:
            del self.state.data[key]
        self.processors.clear()
        self._uncheckpointed.clear()
        self.app.consumer.rejoin()

    async def _emit(self, out: Output) -> None:
        if not self.writing():
            return
        with contextlib.suppress(Fenced):  # the lease ran out while sending: the new owner sends it all again
            await self._send(out)

    async def _send(self, out: Output) -> None:
        if out.alert_log:
            await self._log_alerts(out.alert_log)
        if out.sli:
            await self.outputs.send_keyed(self.sli_topic, ((key, orjson.dumps(event)) for key, event in out.sli))
        for key, event in out.alerts:
            await self.outputs.send(self.alerts_topic, key, orjson.dumps(event))
            self.alerts_emitted[event["type"]] += 1
            if self.sinks is not None:
                self.sinks.submit(event)
        for key, event in out.breaches:
            await self.outputs.send(self.breaches_topic, key, orjson.dumps(event))
            self.breaches_emitted += 1
        for key, event in out.drift:
            await self.outputs.send(self.drift_topic, key, orjson.dumps(event))
            self.drift.add(event["data"])
            self.drift_recent.append(event)
        self.drift.forget(out.retired_groups)
        for key, event in out.recommendations:
            await self.outputs.send(self.recommendations_topic, key, orjson.dumps(event))
            self.recommendations_emitted += 1
        for forward in out.forwards:
            await self.outputs.forward(self.repartition_topic, forward.partition, forward.value, forward.headers)
        if out.deadletter:
            self.rejected.update(event["data"]["reason"] for _, event in out.deadletter)
            await self.outputs.send_keyed(self.deadletter_topic,
                                          ((key, orjson.dumps(event)) for key, event in out.deadletter))
        refused = self.outputs.take_refused()
        if refused:  # over max_output_bytes: each replaced by a dead letter naming it (small by construction)
            now = time.time()
            letters = [oversized_output_event(self.pipeline_config, topic, key, value, self.settings.max_output_bytes,
                                              now) for topic, key, value in refused]
            self.rejected.update(event["data"]["reason"] for _, event in letters)
            await self.outputs.send_keyed(self.deadletter_topic, ((key, orjson.dumps(event)) for key, event in letters))
        self.accepted += out.accepted
        self.skipped_replay += out.skipped_replay
        self.forwarded += out.forwarded
        self.forward_duplicates += out.forward_duplicates
        self.series_evicted += out.evicted
        if out.dropped_label_keys:
            self.series_dropped_label_keys += out.dropped_label_keys
            log.warning("dropped %d restored series kept under other label_keys than %s (their state is deleted, "
                        "their alerts resolved; their services start new series)", out.dropped_label_keys,
                        list(self.settings.label_keys))
        self.sli_emitted += len(out.sli)

    async def checkpoint(self, partitions: set[int] | None = None, final: bool = False) -> None:
        """Make the output events (forwarded measurements included) durable, then the changed state,
        then commit its offsets: neither the state nor the committed offset ever runs ahead of what
        was produced, so a crash can only make a source forward (and emit) again, never lose it.
        ``final`` (a revoke or a stop) writes every series' changes, so the next owner replays nothing.

        The snapshot is taken under the processing lock; the waits for the broker
        are not, so ingest goes on while they drain.
        """
        async with self._checkpoint_lock:
            if not self.writing():
                return
            lapses = self.lease.lapses  # a fence while this waits voids it (the state it wrote was dropped)
            snapshot: list[tuple[int, bytes, bytes | None]] = []
            async with self.lock:
                started = time.monotonic()
                # A partition whose series' changes have waited too long is due without news.
                self._uncheckpointed.update(p for p, proc in self.processors.items() if proc.unwritten_due)
                due = self._uncheckpointed if partitions is None else self._uncheckpointed & partitions
                offsets: dict[TP, int] = {}
                written = [partition for partition in sorted(due) if partition in self.processors]
                for partition in written:
                    writes, offset = self.processors[partition].checkpoint(final)
                    for number, (key, value) in enumerate(writes, 1):
                        if number % YIELD_EVERY_WRITES == 0:
                            await asyncio.sleep(0)  # as in tick
                        snapshot.append((partition, key.encode(), value))
                    for topic, safe in ((self.topic, offset.measurements),
                                        (self.repartition_topic, offset.repartition)):
                        if safe >= 0:
                            offsets[TP(topic, partition)] = safe + 1
                self._uncheckpointed -= due
                self.pacer.done(started, time.monotonic())
            stage_ends = [("snapshot", time.monotonic())]
            try:
                await self._write(snapshot, written, stage_ends)
            except (NotDelivered, KafkaError) as exc:
                if not self.writing() or self.lease.lapses != lapses:  # fenced while it waited (an outage, a pause)
                    log.warning("checkpoint dropped, nothing committed: this worker was fenced (%r)", exc)
                    return
                # The state has moved past output or changes the broker never took: only a replay
                # from the last commit sends them again, so the worker stops (its partitions move
                # on) rather than commit over the gap.
                log.error("outputs or state changes were not delivered; stopping without a commit: %r", exc)
                await self.app.crash(exc)
                return
            if not self.writing() or self.lease.lapses != lapses:
                return
            # The table holds durable state only: a fenced worker that gets a partition back
            # recovers what its new owner wrote on top of it.
            self._keep(snapshot)
            if offsets:
                committed = await self.app.consumer._commit(offsets)
                if not committed:
                    log.warning("commit of %s was refused (rebalance); the state holds the offsets", offsets)
            stage_ends.append(("commit", time.monotonic()))
            if stage_ends[-1][1] - started > SLOW_CHECKPOINT_S:  # names the stage that waited: usually the broker
                starts = [started] + [end for _, end in stage_ends[:-1]]
                log.warning("slow checkpoint, seconds by stage: %s",
                            {name: round(end - start, 3) for (name, end), start in zip(stage_ends, starts)})
            self.checkpoints += 1
            keep_out_of_gc()

    def _keep(self, records: list[tuple[int, bytes, bytes | None]]) -> None:
        """Changelog records made durable, into the state table."""
        for _, raw_key, value in records:
            if value is None:  # a tombstone: compaction drops the key
                self.state.data.pop(raw_key, None)
            else:
                self.state.data[raw_key] = value

    async def _write(self, snapshot: list[tuple[int, bytes, bytes | None]], written: list[int],
                     stage_ends: list[tuple[str, float]]) -> None:
        """Make the outputs durable, then the changed state (each stage's end noted)."""
        await self.outputs.flush()
        stage_ends.append(("outputs", time.monotonic()))
        await self._write_changelog(snapshot, written)
        stage_ends.append(("changelog", time.monotonic()))

    async def _write_changelog(self, records: list[tuple[int, bytes, bytes | None]], partitions: list[int]) -> None:
        """Changelog records (partition, key, value), durable when this returns."""
        # In batches awaited here, not Faust's send_soon buffer, whose flush() gives up after
        # 0.1 s without a send and would let the commit run ahead of the changelog.
        changelog = self.state.changelog_topic.get_topic_name()
        await asyncio.gather(*await self.outputs.send_batches(changelog, records, tombstone_refused=True))
        if self.settings.changelog_fence:
            # Tansu reports a partition's end offset from the first record of its last batch,
            # and Faust recovers a changelog only up to the end offset: a last batch of one
            # record makes the end right. Restore ignores the key.
            fences = [(partition, state_keys.fence_key(partition).encode(), b"") for partition in partitions]
            await asyncio.gather(*await self.outputs.send_batches(changelog, fences))

    async def _log_alerts(self, entries: list[tuple[int, str, bytes]]) -> None:
        """Alert events go to the state before they are sent (``pipeline.alerting``), so a replay
        after a crash sends them again as they were. If the broker does not take them the worker
        stops, as at a checkpoint."""
        records = [(partition, key.encode(), value) for partition, key, value in entries]
        try:
            await self._write_changelog(records, sorted({partition for partition, _, _ in records}))
        except (NotDelivered, KafkaError) as exc:
            if isinstance(exc, Fenced) or not self.writing():
                raise Fenced("the alert log was not written: this worker was fenced") from exc
            log.error("the alert log was not delivered; stopping without sending its alerts: %r", exc)
            await self.app.crash(exc)
            raise
        self._keep(records)

    async def final_checkpoint(self, partitions: set[int] | None = None) -> None:
        """Write every series' changes before a revoke or a stop, waiting at most
        ``FINAL_CHECKPOINT_TIMEOUT_S``: a stopping consumer may never answer the commit, and the
        next owner replays exactly from the last durable checkpoint anyway (a torn one included)."""
        try:
            await asyncio.wait_for(self.checkpoint(partitions, final=True), FINAL_CHECKPOINT_TIMEOUT_S)
        except Exception:
            log.exception("final checkpoint failed or timed out; the next owner replays from the last durable one")

    async def on_revoked(self, revoked: set[TP]) -> None:
        mine = {tp.partition for tp in revoked if tp.topic in (self.topic, self.repartition_topic)}
        if not mine:
            return
        await self.final_checkpoint(mine)
        async with self.lock:
            for partition in mine:
                self.processors.pop(partition, None)
                self._uncheckpointed.discard(partition)

    def lag(self, snapshots: list[Snapshot]) -> dict[int, int]:
        lags = {}
        for snap in snapshots:
            try:
                high = self.app.consumer.highwater(TP(self.topic, snap.partition))
            except Exception:  # not assigned any more, or no fetch yet
                continue
            if high is not None:
                lags[snap.partition] = max(0, high - (snap.applied_offset + 1))
        return lags

    def ready(self) -> bool:
        recovery = getattr(self.app.tables, "recovery", None)
        return bool(recovery is not None and recovery.completed.is_set() and not self.app.rebalancing)
