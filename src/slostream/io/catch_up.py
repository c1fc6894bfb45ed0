"""The measurement partitions a worker owns, read in record-timestamp order while they catch up.

A backlog that producers wrote over a day, spread over every partition, must reach each series'
owner about as it was written: if one partition's share of the day were read (and forwarded)
before another's, a series would see hours of event time from one source before the other's
arrived. So, like Kafka Streams' ``PartitionGroup`` (with ``max.task.idle.ms``), the worker keeps
what it fetched of each partition in a buffer and hands on the partition whose next record is the
oldest, as far as the next oldest partition's head (plus ``ORDER_SLACK_S``, so runs stay long
enough to be cheap); a partition whose buffer is empty while the broker holds more of it is waited
for, at most ``MAX_IDLE_S`` (a partition the broker does not deliver must not stop the others).
Live traffic, every partition at its end, goes straight through.

Across workers, each reading its own partitions at its own speed, a partition is also read no
further than its read-ahead limit (``pipeline.alignment.read_ahead_limits``): a worker that got
ahead of another holds its partitions (paused at the consumer, so nothing more is fetched) until
the other catches up.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping

from faust.types import TP

from slostream.pipeline.types import SourceRecord

# Runs of one partition reach this far past the next oldest partition's head (record time). Far less
# than the hour a series may wait for a lagging source; a run of many records is cheap.
ORDER_SLACK_S = 60.0
# How long a partition with more on the broker but nothing fetched holds the others back.
MAX_IDLE_S = 2.0


class TimestampOrder:
    """Buffers of fetched measurement records per partition, drained oldest first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.buffers: dict[TP, deque[SourceRecord]] = {}
        self.clock = clock
        self._waiting_since: float | None = None  # when a lagging partition first held the others

    def add(self, tp: TP, records: list[SourceRecord]) -> None:
        self.buffers.setdefault(tp, deque()).extend(records)

    def forget(self, tps: set[TP] | None = None) -> None:
        """Drop buffered records (all, or of ``tps``): a rebalance seeks back to the committed offsets."""
        for tp in list(self.buffers) if tps is None else tps:
            self.buffers.pop(tp, None)
        self._waiting_since = None

    def held(self, assigned: set[TP], limits: Mapping[TP, float]) -> set[TP]:
        """The assigned partitions whose next record lies past their read-ahead limit."""
        return {tp for tp, buffer in self.buffers.items()
                if buffer and tp in assigned and buffer[0].timestamp > limits.get(tp, math.inf)}

    def runs(self, assigned: set[TP], lagging: Callable[[TP], bool],
             read_ahead: Callable[[], Mapping[TP, float]] = dict) -> Iterator[tuple[TP, list[SourceRecord]]]:
        """(partition, records) in record-timestamp order, each partition up to its read-ahead limit
        (``read_ahead()``, asked before each run: what was read moves them; none, no limit), while no
        assigned partition that ``lagging`` says has more on the broker is empty here (or it has held
        the others back for ``MAX_IDLE_S``)."""
        while True:
            limits = read_ahead()
            heads = {tp: buffer[0].timestamp for tp, buffer in self.buffers.items() if buffer and tp in assigned}
            runnable = {tp: head for tp, head in heads.items() if head <= limits.get(tp, math.inf)}
            if not runnable:
                return
            if any(lagging(tp) for tp in assigned if tp not in heads):
                now = self.clock()
                if self._waiting_since is None:
                    self._waiting_since = now
                if now - self._waiting_since < MAX_IDLE_S:
                    return
            else:
                self._waiting_since = None
            tp = min(runnable, key=runnable.__getitem__)
            bound = min(min((head for other, head in heads.items() if other != tp), default=math.inf) + ORDER_SLACK_S,
                        limits.get(tp, math.inf))
            buffer = self.buffers[tp]
            run = [buffer.popleft()]
            while buffer and buffer[0].timestamp <= bound:
                run.append(buffer.popleft())
            yield tp, run
