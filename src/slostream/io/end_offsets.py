"""When a partition's end offset was known: the time the fetch that reported it was sent.

aiokafka stamps a partition's highwater with the time it *processed* the fetch response
(``last_poll_timestamp``). The broker read that end offset earlier, when it built the response. A
worker whose threads are busy (a long checkpoint holds the GIL) processes the response seconds
later, and every record appended in between would be claimed as read: the partition reports
progress past data it has not forwarded, and owners close windows that still miss it. A request
is sent before the broker looks, so every record appended before the send time is below the
highwater it reports, however late the response is handled.
"""

from __future__ import annotations

import time

from aiokafka import TopicPartition
from aiokafka.consumer import fetcher

_proc_fetch_request = fetcher.Fetcher._proc_fetch_request


async def _stamped_fetch(self, assignment, node_id, request):
    sent = time.time()
    states = [(tp, assignment.state_value(tp)) for tp in
              (TopicPartition(topic, info[0]) for topic, partitions in request.topics for info in partitions)]
    polled = [state.timestamp if state is not None else None for _, state in states]
    try:
        return await _proc_fetch_request(self, assignment, node_id, request)
    finally:
        # Set after the highwater: a reader taking this time first and the highwater second only
        # ever pairs an older time with a newer end, which claims less.
        known = self.__dict__.setdefault("end_known_at", {})
        for (tp, state), before in zip(states, polled):
            if state is not None and state.timestamp != before:  # this response updated its highwater
                known[tp] = sent


def install() -> None:
    """Make aiokafka's fetcher note the send time of each fetch (process-wide)."""
    fetcher.Fetcher._proc_fetch_request = _stamped_fetch


def end_known_at(consumer, tp: TopicPartition) -> float | None:
    """A wall time before which every record appended to ``tp`` is below ``consumer.highwater(tp)``
    (read that second), or None before the first fetch of it."""
    return getattr(consumer._fetcher, "end_known_at", {}).get(tp)
