"""The control log keeps only commands in force, and a restored partition ends up the same."""

import orjson

from slostream.core.control import CONTROL_MIN_AGE_S, ControlLog, parse_command
from slostream.core.objectives import Policy
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import make_config

T0 = 1_800_000_000 // 60 * 60
CONFIG = make_config(grace_s=5.0, policies=(Policy("api-p99", "api", "lat", "p99", 60, "above", 300.0, 500.0),))


def _data(until_s: int, start_s: int = 0) -> list[SourceRecord]:
    """One slow request a second on "api" (its p99 policy fires critical) and one on "web"."""
    return [SourceRecord("m", 0, t, T0 + t, None, orjson.dumps([
        {"service": "api", "metric": "lat", "value": 900.0, "ts": T0 + t},
        {"service": "web", "metric": "lat", "value": 10.0, "ts": T0 + t}])) for t in range(start_s, until_s, 1)]


def _commands(fingerprint: str) -> list[tuple[SourceRecord, bytes, float]]:
    """(record, value, wall time read), all read 10 minutes in."""
    docs = [
        {"command": "silence", "id": "short", "matchers": {"service": "web"}, "for": "1h", "by": "ana"},
        {"command": "silence", "id": "long", "matchers": {"service": "api"}, "for": "1d", "by": "ana"},
        {"command": "silence", "id": "lifted", "matchers": {"service": "api"}, "for": "1d", "by": "ana"},
        {"command": "unsilence", "id": "lifted", "by": "ana"},
        {"command": "ack", "fingerprint": fingerprint, "by": "bo"},
        {"command": "ack", "matchers": {"service": "nothing-fires-here"}, "by": "bo"},
        {"command": "pause"},
    ]
    at = T0 + 600
    return [(SourceRecord("control", 0, n, at, None, orjson.dumps(doc)), orjson.dumps(doc), at)
            for n, doc in enumerate(docs)]


def test_only_commands_in_force_are_kept_and_a_restored_partition_ends_up_the_same():
    # Read live: the wall clock keeps up with the data (silences run on wall time).
    live = PartitionProcessor(0, CONFIG, now=T0)
    live.process(_data(600), T0 + 600)
    fingerprint = next(iter(live.alerting.book.alerts))
    assert live.alerting.book.fires_matching(fingerprint, None)
    log = ControlLog()
    for record, value, read_at in _commands(fingerprint):
        command = parse_command(value, record.offset, record.timestamp)
        log.append(record, command, read_at)
        live.apply_control(record, command)
    # A partition that read its data to 2 h 10 min without seeing a command (its state predates them).
    stale = PartitionProcessor(0, CONFIG, now=T0)
    stale.process(_data(600), T0 + 600)
    stale.process(_data(7800, start_s=600), T0 + 7800)
    live.process(_data(7800, start_s=600), T0 + 7800)
    store = dict(stale.checkpoint()[0])

    log.prune(T0 + 600 + CONTROL_MIN_AGE_S - 1,
              firing=lambda ack: live.alerting.book.fires_matching(ack.fingerprint, ack.matchers))
    assert len(log) == 7  # nothing is dropped while it is young
    log.prune(T0 + 7800, firing=lambda ack: live.alerting.book.fires_matching(ack.fingerprint, ack.matchers))
    kept = [orjson.loads(record.value) for record, _ in log]
    assert [(c["command"], c.get("id")) for c in kept] == [("silence", "long"), ("ack", None)]

    full, pruned = (PartitionProcessor.restore(0, CONFIG, store.items(), now=T0 + 7800) for _ in range(2))
    for record, value, _ in _commands(fingerprint):
        full.apply_control(record, parse_command(value, record.offset, record.timestamp))
    for record, command in log:
        pruned.apply_control(record, command)
    for proc in (full, pruned, live):  # the next judgement drops what expired (the full log's short silence)
        proc.process(_data(7830, start_s=7800), T0 + 7830)
    assert pruned.alerting.book.to_state() == full.alerting.book.to_state() == live.alerting.book.to_state()
    assert set(live.alerting.book.silences) == {"long"}
