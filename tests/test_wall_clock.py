"""The wall clock bounds event time: a ts far ahead of it is a bad timestamp whatever its record
says, and silences and escalation run on wall time, not on event time."""

import orjson

from slostream.core.alerts import AlertBook, Condition, Silence
from slostream.core.objectives import Policy
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import ControlTopics, make_config

T0 = 1_800_000_000 // 60 * 60
YEAR_3237 = 40_000_000_000.0  # a plausible Unix time in seconds, 1,200 years on
TICKET = {"alertname": "SLOBurn", "slo": "checkout", "severity": "ticket"}


def test_a_silence_lasts_its_wall_time_whatever_event_time_does():
    book = AlertBook(cooldown_s=0)
    book.silence(T0, Silence("maint", {"slo": "checkout"}, until=T0 + 3600))
    assert [e.type for e in book.evaluate(YEAR_3237, [Condition(TICKET, True)], wall=T0 + 60)] == ["silenced"]
    assert set(book.silences) == {"maint"}
    # An hour of wall time later it ends, though event time (a backlog) is still before it started.
    assert [e.type for e in book.evaluate(T0 - 7200, [Condition(TICKET, True)], wall=T0 + 3600)] == ["firing"]
    assert book.silences == {}


def test_escalation_waits_for_wall_time_not_event_time():
    book = AlertBook(cooldown_s=0, escalate_after_s=600)
    assert [e.type for e in book.evaluate(T0, [Condition(TICKET, True)], wall=T0)] == ["firing"]
    # A backlog read in ten seconds of wall time spans a day of event time: nobody was left unpaged.
    assert book.evaluate(T0 + 86400, [Condition(TICKET, True)], wall=T0 + 10) == []
    events = book.evaluate(T0 + 86410, [Condition(TICKET, True)], wall=T0 + 600)
    assert [(e.type, e.alert["labels"]["severity"]) for e in events] == [("resolved", "ticket"), ("firing", "page")]


def _minute(start_s: int, offset: int) -> SourceRecord:
    """One minute of slow requests on "api", a record a second (its p99 policy fires critical)."""
    items = [{"service": "api", "metric": "lat", "value": 900.0, "ts": T0 + t} for t in range(start_s, start_s + 60)]
    return SourceRecord("m", 0, offset, T0 + start_s + 60, None, orjson.dumps(items))


def test_a_measurement_dated_centuries_ahead_leaves_the_silence_and_its_series_alone():
    config = make_config(grace_s=5.0, policies=(Policy("api-p99", "api", "lat", "p99", 60, "above", 300.0, 500.0),))
    proc = PartitionProcessor(0, config, now=T0)
    offset = 0
    for minute in range(10):  # read live: the wall clock keeps up with the data
        proc.process([_minute(minute * 60, offset)], T0 + minute * 60 + 60)
        offset += 1
    topics = ControlTopics()
    topics.send(proc, orjson.dumps({"command": "silence", "id": "maint", "matchers": {"service": "api"},
                                    "for": "2h", "by": "ana"}), T0 + 600)
    topics.apply(proc)
    assert [a["silencedBy"] for a in proc.alerting.book.firing()] == [["maint"]]

    # Its record timestamp says the same: only the wall clock can tell it is not now.
    forged = {"service": "api", "metric": "lat", "value": 1.0, "ts": YEAR_3237}
    out = proc.process([SourceRecord("m", 0, offset, YEAR_3237, None, orjson.dumps(forged))], T0 + 601)
    offset += 1
    assert [e["data"]["reason"] for _, e in out.deadletter] == ["bad_timestamp"] and out.accepted == 0

    accepted, letters = 0, []
    for minute in range(10, 28):  # the next 18 windows
        out = proc.process([_minute(minute * 60, offset)], T0 + minute * 60 + 60)
        offset += 1
        accepted += out.accepted
        letters += [e["data"]["reason"] for _, e in out.deadletter]
    assert letters == [] and accepted == 18 * 60
    assert set(proc.alerting.book.silences) == {"maint"}
    assert [a["silencedBy"] for a in proc.alerting.book.firing()] == [["maint"]]
