"""The Kafka side of the worker's reading: Faust's consumer, handing each fetched batch of the
measurement and repartition topics straight to ``IngestService`` (Faust's stock per-message path
costs 60-250 µs a record; measurements in record-timestamp order across partitions, ``catch_up``),
with a short fetch wait; every other topic takes Faust's normal path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust
from aiokafka.errors import ConsumerStoppedError
from faust.exceptions import ConsumerNotStarted
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from slostream.io import end_offsets
from slostream.io.catch_up import TimestampOrder
from slostream.io.fencing import watch_coordinator

if TYPE_CHECKING:
    from slostream.io.ingest import IngestService


class ShortWaitConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust hard-codes a 1.5 s fetch wait. Tansu under-reports end offsets after
    multi-record batches and then holds each fetch for the whole wait, which
    stalls ingest; a short wait bounds that stall on any broker."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.ingest.settings.fetch_max_wait_ms
        return consumer

    def lagging(self, tp: TP) -> bool:
        """Whether the broker holds records of ``tp`` past what has been fetched (or nothing of it
        has been fetched yet)."""
        try:
            consumer = self._ensure_consumer()
            end = consumer.highwater(tp)
            state = consumer._subscription.subscription.assignment.state_value(tp)
        except (AssertionError, AttributeError, ConsumerNotStarted, ConsumerStoppedError, KeyError):
            return False  # not assigned (any more)
        if end is None or state is None or state.position is None:
            return True
        return end > state.position

    async def on_start(self) -> None:
        await super().on_start()
        watch_coordinator(self._consumer._coordinator, self.app.ingest.lease)

    def request_rejoin(self) -> None:
        """Make the consumer rejoin its group (from any thread): a new generation, every partition
        revoked and assigned again, each read from its committed offset."""
        coordinator = self._ensure_consumer()._coordinator
        self.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)

    def end_known_at(self, tp: TP, next_offset: int) -> float | None:
        """A wall time before which everything appended to ``tp`` has been read, if the last fetch
        response showed its end at or before ``next_offset``, and every record fetched of it is
        before ``next_offset`` too; else None (``io.end_offsets``). Tansu reports a partition's end
        from the first record of its last batch: while the rest of that batch waits in the
        timestamp order (``catch_up``), the end it reports is no proof of reading (owners closed
        windows that still missed it: measurements dead-lettered as ``too_late`` in the unkeyed bench)."""
        try:
            consumer = self._ensure_consumer()
            known_at = end_offsets.end_known_at(consumer, tp)
            end = consumer.highwater(tp)
            state = consumer._subscription.subscription.assignment.state_value(tp)
        except (AssertionError, AttributeError, ConsumerNotStarted, ConsumerStoppedError, KeyError):
            return None  # not assigned (any more), or not fetched yet
        if known_at is None or end is None or state is None or state.position is None:
            return None
        if next_offset < max(end, state.position):
            return None
        return known_at


class BatchingConsumer(aiokafka_driver.Consumer):
    """Faust consumer that delivers the measurement and repartition topics a fetch batch at a time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.order = TimestampOrder()  # measurement records fetched, handed on oldest first (``catch_up``)
        self._order_generation: int | None = None
        self._held: set[TP] = set()  # measurement partitions paused at their read-ahead limit

    def _hold(self, held: set[TP]) -> None:
        """Pause fetching the partitions ``held`` at their read-ahead limit (what was fetched of them
        waits in the buffer), and resume those no longer held, once recovery has finished (Faust
        pauses every partition while it recovers the tables, and resumes them all after)."""
        if held - self._paused_partitions:  # Faust may have resumed one after a recovery
            self.pause_partitions(held - self._paused_partitions)
        released = self._held - held
        if released and self.app.ingest.ready():
            self.resume_partitions(released & self.assignment())
            self._held -= released
        self._held |= held

    def _new_consumer_thread(self):
        return ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _lagging(self, tp: TP) -> bool:
        return self._thread.lagging(tp)

    def end_known_at(self, tp: TP, next_offset: int) -> float | None:
        return self._thread.end_known_at(tp, next_offset)

    def rejoin(self) -> None:
        """Rejoin the group after this worker was fenced (``IngestService.writing``): every partition
        it is then given counts as newly assigned, so the state table recovers it from the
        changelog (Faust recovers only partitions it did not hold; this worker dropped them all)."""
        self.app._assignment = None
        self._thread.request_rejoin()

    async def getmany(self, timeout: float):
        records, active = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return
        ingest: IngestService = self.app.ingest
        generation = self.app.consumer_generation_id
        if generation != self._order_generation:  # a rebalance: Faust seeks back to the committed offsets
            self.order.forget()
            self._order_generation = generation
        passthrough = []
        for tp, batch in records.items():
            if tp.topic not in (ingest.topic, ingest.repartition_topic):
                passthrough.append((tp, batch))
                continue
            # During a rebalance the batch is dropped: Faust seeks every assigned
            # partition back to its committed offset afterwards.
            if not self.flow_active or self.app.consumer_generation_id != generation:
                continue
            if active is None or tp in active:
                if tp.topic == ingest.topic:
                    self.order.add(tp, batch)
                else:  # forwards, older than what is read now: at once
                    await ingest.handle_repartition(tp.partition, batch)
        assigned = {tp for tp in self.assignment()
                    if tp.topic == ingest.topic and (active is None or tp in active or tp in self._held)}

        def read_ahead() -> dict[TP, float]:
            return {TP(ingest.topic, p): limit for p, limit in ingest.read_ahead_limits().items()}

        for tp, run in self.order.runs(assigned, self._lagging, read_ahead):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                self.order.forget()
                break
            await ingest.handle(tp.partition, run)
        # Faust keeps its partition sets of its own TP (records come keyed by aiokafka's TopicPartition).
        self._hold({TP(tp.topic, tp.partition) for tp in self.order.held(assigned, read_ahead())})
        for tp, batch in passthrough:
            for record in batch:
                yield tp, self._to_message(tp, record)


class BatchingTransport(aiokafka_driver.Transport):
    Consumer = BatchingConsumer


class SloApp(faust.App):
    ingest: IngestService

    def _new_transport(self):
        return BatchingTransport(self.conf.broker_consumer, self)
