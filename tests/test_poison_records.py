"""A record that makes processing raise (a bug it reaches) is dead-lettered as ``internal_error``
and passed: the worker goes on, and so does a successor replaying it (issue 25, point 1)."""

import orjson
import pytest

from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config
from tests.slo_feed import T0


def _record(offset: int, service: str) -> SourceRecord:
    doc = {"service": service, "metric": "http", "ok": True, "value": 1.0, "ts": T0 + offset}
    return SourceRecord("m", 0, offset, T0 + offset, None, orjson.dumps(doc))


def _with_a_bug(proc: PartitionProcessor) -> PartitionProcessor:
    """Fault injection: the intake raises on any batch holding the service "poison", as a bug would."""
    read = proc.intake.read

    def buggy_read(records, *args):
        if any(b'"poison"' in (record.value or b"") for record in records):
            raise RuntimeError("a bug reached by this record")
        return read(records, *args)

    proc.intake.read = buggy_read
    return proc


@pytest.mark.parametrize("restart", [False, True])
def test_a_record_that_makes_processing_raise_is_dead_lettered_and_the_rest_counted(restart):
    config = make_config()
    proc = _with_a_bug(PartitionProcessor(0, config, now=WALL))
    records = [_record(0, "a"), _record(1, "poison"), _record(2, "a")]
    out = proc.process(records, WALL)
    assert [e["data"]["reason"] for _, e in out.deadletter] == ["internal_error"]
    assert out.deadletter[0][1]["data"]["offset"] == 1
    assert out.accepted == 2 and proc.applied_offset == 2
    if restart:  # a successor replays the same records from the last checkpoint: the same outcome
        proc = _with_a_bug(PartitionProcessor(0, config, now=WALL))
        again = proc.process(records, WALL)
        assert [e for _, e in again.deadletter] == [e for _, e in out.deadletter]
        assert again.accepted == 2
    later = proc.process([_record(3, "a")], WALL)
    assert later.accepted == 1 and not later.deadletter
