"""Fencing of zombie writers without broker transactions.

Kafka Streams fences a worker that lost its partitions (paused past its session timeout, cut off
from the broker) with transactions: its producer epoch is bumped and its writes are refused. Tansu
has no transactions (aiokafka's InitProducerId is refused), so the worker fences itself with a
lease: it writes outputs, forwards and state only while it knows it is a member of the group's
current generation, that is within one session timeout of sending a heartbeat that the coordinator
then accepted (the coordinator evicts a member one session timeout after the last heartbeat it
received, which was sent later than that). A lease once lost comes back only with a new generation
(a rejoin, which revokes and reassigns every partition). The check runs before each send, each
checkpoint stage and, in the producers' clients, before each produce request goes on the wire.
"""

from __future__ import annotations

import time

from aiokafka.errors import KafkaError
from aiokafka.protocol.produce import ProduceRequest


class Fenced(KafkaError):
    """A write refused because this worker's group lease ran out (not retried)."""

    retriable = False


class GroupLease:
    """When this worker may write: renewed by the consumer thread (heartbeats accepted, joins
    completed), read by the event loop; plain float and int fields, each written whole."""

    def __init__(self, session_timeout_s: float):
        self.session_timeout_s = session_timeout_s
        self.renewed_at: float | None = None  # monotonic send time of the last accepted heartbeat
        self.generation = -1
        self.lost = False  # ran out; only a new generation renews it
        self.lapses = 0  # times it ran out: each one fences the worker once

    def joined(self, generation: int, sent_at: float) -> None:
        if self.renewed_at is not None and not self.lost and sent_at - self.renewed_at >= self.session_timeout_s:
            self.lapses += 1  # ran out, and the rejoin came before anyone looked
        self.generation = generation
        self.renewed_at = sent_at
        self.lost = False

    def heartbeat_accepted(self, generation: int, sent_at: float) -> None:
        if not self.lost and generation == self.generation:
            self.renewed_at = sent_at

    def held(self, now: float | None = None) -> bool:
        if self.lost or self.renewed_at is None:
            return False
        if (now if now is not None else time.monotonic()) - self.renewed_at < self.session_timeout_s:
            return True
        self.lost = True
        self.lapses += 1
        return False


def watch_coordinator(coordinator, lease: GroupLease) -> None:
    """Renew ``lease`` from an aiokafka ``GroupCoordinator``: on each completed join and each
    heartbeat it accepted (instance attributes over its methods; it calls them through ``self``)."""
    do_heartbeat = coordinator._do_heartbeat
    on_join_complete = coordinator._on_join_complete

    async def heartbeat() -> bool:
        sent_at, generation = time.monotonic(), coordinator.generation
        accepted = await do_heartbeat()
        if accepted:
            lease.heartbeat_accepted(generation, sent_at)
        return accepted

    async def join_complete(generation, member_id, protocol, assignment_bytes):
        # The join response was sent after the coordinator took the member in.
        lease.joined(generation, time.monotonic())
        return await on_join_complete(generation, member_id, protocol, assignment_bytes)

    coordinator._do_heartbeat = heartbeat
    coordinator._on_join_complete = join_complete


def guard_client(client, lease: GroupLease) -> None:
    """Make an aiokafka producer's client refuse to put a produce request on the wire without the
    lease: a batch appended before a pause and sent after it is failed (``Fenced``), not written."""
    send = client.send

    async def guarded(node_id, request, *args, **kwargs):
        if isinstance(request, ProduceRequest) and not lease.held():
            raise Fenced("this worker's group lease ran out: produce request not sent")
        return await send(node_id, request, *args, **kwargs)

    client.send = guarded
