"""A sink's queue is bounded: when full it drops the oldest delivery, and counts it."""

import logging

from slostream.config import Secret
from slostream.io.sinks import QUEUE_LIMIT, Sink


def test_a_full_sink_queue_drops_the_oldest_and_counts_it(caplog):
    sink = Sink("webhook-1", Secret("http://127.0.0.1:9/hook"), lambda name, seconds: None)
    with caplog.at_level(logging.WARNING, logger="slostream.sinks"):
        for number in range(QUEUE_LIMIT + 5):
            sink.put(number)
    assert sink.dropped == 5
    assert len(sink.queue) == QUEUE_LIMIT
    assert sink.queue[0][1] == 5 and sink.queue[-1][1] == QUEUE_LIMIT + 4
    assert len([r for r in caplog.records if "queue full" in r.message]) == 1  # logged once, not per drop
