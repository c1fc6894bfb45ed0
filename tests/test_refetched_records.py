"""Records fetched again (Faust seeks a partition back to its committed offset when table recovery
ends, without a new generation) are counted once: the timestamp-order buffer keeps each offset once,
and a batch that holds an offset twice is applied once (a SIGKILL test counted windows up to twice)."""

import orjson
from faust.types import TP

from slostream.io.catch_up import TimestampOrder
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config
from tests.slo_feed import T0


def _record(offset: int) -> SourceRecord:
    doc = {"service": "a", "metric": "http", "ok": True, "value": 1.0, "ts": T0 + offset}
    return SourceRecord("m", 0, offset, T0 + offset, b"a", orjson.dumps(doc))


def test_the_order_buffer_keeps_each_offset_once():
    order, tp = TimestampOrder(), TP("m", 0)
    order.add(tp, [_record(0), _record(1), _record(2)])
    order.add(tp, [_record(1), _record(2), _record(3)])  # fetched again after a seek back
    assert [r.offset for _, run in order.runs({tp}, lambda tp: False) for r in run] == [0, 1, 2, 3]
    order.forget()
    order.add(tp, [_record(1)])  # a rebalance forgot the buffer: the seek's records are taken again
    assert [r.offset for _, run in order.runs({tp}, lambda tp: False) for r in run] == [1]


def test_a_batch_holding_an_offset_twice_counts_it_once():
    proc = PartitionProcessor(0, make_config(), now=WALL)
    out = proc.process([_record(0), _record(1), _record(0), _record(1), _record(2)], WALL)
    assert out.accepted == 3 and proc.applied_offset == 2
