"""Records fetched again (Faust seeks a partition back to its committed offset when table recovery
ends, without a new generation) are counted once: the timestamp-order buffer keeps each offset once,
and a batch that holds an offset twice is applied once (a SIGKILL test counted windows up to twice)."""

import orjson

from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config
from tests.slo_feed import T0


def _record(offset: int) -> SourceRecord:
    doc = {"service": "a", "metric": "http", "ok": True, "value": 1.0, "ts": T0 + offset}
    return SourceRecord("m", 0, offset, T0 + offset, b"a", orjson.dumps(doc))


def test_a_batch_holding_an_offset_twice_counts_it_once():
    proc = PartitionProcessor(0, make_config(), now=WALL)
    out = proc.process([_record(0), _record(1), _record(0), _record(1), _record(2)], WALL)
    assert out.accepted == 3 and proc.applied_offset == 2
