"""A record that makes processing raise (a bug it reaches) is dead-lettered as ``internal_error``
and passed: the worker goes on, and so does a successor replaying it (issue 25, point 1). A control
command that makes judging raise is refused as ``internal_error`` and audited once; one whose
application raises on a partition is dead-lettered there, and the commands after it applied."""

import orjson
import pytest

from slostream.pipeline import partition
from slostream.pipeline.alerting import Alerting
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, ControlTopics, make_config
from tests.schemas import validator
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


# --- control commands: a command that makes judging or applying raise -------------------------

POISON = {"command": "silence", "matchers": {"slo": "poison"}, "for": "1h", "by": "ana"}
GOOD = {"command": "silence", "matchers": {"slo": "checkout"}, "for": "1h", "by": "ana", "id": "good"}


def _raises_on_poison(real):
    """Fault injection: ``real`` raises for the poison command, as a bug reached by it would."""
    def buggy(*args, **kwargs):
        if "poison" in repr(args):
            raise RuntimeError("a bug reached by this command")
        return real(*args, **kwargs)
    return buggy


def test_a_command_whose_judgement_raises_is_refused_as_internal_error_audited_once(monkeypatch, caplog):
    config = make_config(partitions=2)
    judge, other = PartitionProcessor(0, config, WALL), PartitionProcessor(1, config, WALL)
    monkeypatch.setattr(partition, "judge", _raises_on_poison(partition.judge))
    topics = ControlTopics()
    refused = topics.send(judge, orjson.dumps(POISON), WALL)
    topics.send(judge, orjson.dumps(GOOD), WALL)
    out = topics.apply(judge, other)
    assert refused["type"] == "slostream.command.refused" and refused["data"]["reason"] == "internal_error"
    assert "RuntimeError: a bug reached by this command" in refused["data"]["message"]
    validator("audit-event.schema.json").validate(refused)
    assert [orjson.loads(r.value)["data"]["reason"] for r in topics.audit] == ["internal_error", None]
    assert set(judge.alerting.book.silences) == set(other.alerting.book.silences) == {"good"}
    assert judge.control_offset == other.control_offset == 1 and not out.deadletter
    assert any(r.exc_info and "control command at offset 0" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("restart", [False, True])
def test_a_command_whose_application_raises_is_dead_lettered_and_the_next_applied(monkeypatch, caplog, restart):
    config = make_config(partitions=2)
    judge, other = PartitionProcessor(0, config, WALL), PartitionProcessor(1, config, WALL)
    # Partition 1's alert state raises on the poison command (after the audit said applied).
    command = Alerting.command
    monkeypatch.setattr(Alerting, "command", lambda self, *args: (
        _raises_on_poison(command) if self.partition == 1 else command)(self, *args))
    topics = ControlTopics()
    topics.send(judge, orjson.dumps(POISON), WALL)
    topics.send(judge, orjson.dumps(GOOD), WALL)
    out = topics.apply(judge, other)
    letters = [event for _, event in out.deadletter]
    assert [(e["data"]["reason"], e["data"]["topic"], e["data"]["offset"]) for e in letters] == [
        ("internal_error", "audit", 0)]
    assert "partition 1" in letters[0]["data"]["message"] and "RuntimeError" in letters[0]["data"]["message"]
    validator("deadletter-event.schema.json").validate(letters[0])
    assert set(other.alerting.book.silences) == {"good"} and other.audit_offset == 1
    assert any(r.exc_info and "audit record at offset 0" in r.getMessage() for r in caplog.records)
    if restart:  # its successor, restored from its checkpoint, does not apply the poison command again
        writes, _ = other.checkpoint(final=True)
        successor = PartitionProcessor.restore(1, config, list(writes), WALL)
        assert not topics.apply(successor).deadletter and set(successor.alerting.book.silences) == {"good"}
