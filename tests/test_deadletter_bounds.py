"""Dead letters carry at most ``max_deadletter_bytes`` of the rejected input in every field, and an
output too large for the broker is replaced by a dead letter that names it."""

import base64

import orjson

from slostream.core.measurement import Reason, Rejection
from slostream.pipeline.envelopes import deadletter_event, oversized_output_event
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.hostile import NOW, assert_finite_json
from tests.pipeline_sim import make_config
from tests.schemas import validator

CONFIG = make_config(max_deadletter_bytes=1024)


def test_every_field_of_a_dead_letter_is_cut_at_max_deadletter_bytes():
    element = {"service": "é" * 5000, "metric": "m", "value": 1e308}
    record = SourceRecord("m", 0, 7, NOW, b"k" * 5000, orjson.dumps([element]))
    _, event = deadletter_event(CONFIG, record, Rejection(0, 0, Reason.TOO_LARGE, "x" * 5000, element))
    data = event["data"]
    assert len(base64.b64decode(data["value_b64"])) == 1024 and data["value_truncated"]
    assert len(base64.b64decode(data["key_b64"])) == 1024 and data["key_truncated"]
    assert len(data["message"].encode()) <= 1024 + len("…".encode())
    assert data["element"] is None and data["value_size"] > 10_000  # the element's first bytes are in value_b64
    assert len(orjson.dumps(event)) < 5 * 1024 + 4096
    validator("deadletter-event.schema.json").validate(event)


def test_a_small_element_is_kept_whole_and_a_record_timestamp_past_year_9999_is_no_crash():
    element = {"service": "api", "metric": "m", "value": "slow"}
    record = SourceRecord("m", 0, 1, 9.2e15, None, orjson.dumps(element))
    _, event = deadletter_event(CONFIG, record, Rejection(0, None, Reason.WRONG_TYPE, "value must be a number",
                                                          element))
    assert event["data"]["element"] == element and "key_truncated" not in event["data"]
    validator("deadletter-event.schema.json").validate(event)


def test_an_element_nested_deeper_than_repr_goes_is_dead_lettered():
    raw = b'{"a":' * 990 + b"1" + b"}" * 990  # orjson refuses it, Python's json reads it
    out = PartitionProcessor(0, CONFIG, now=NOW).process([SourceRecord("m", 0, 0, NOW, None, raw)], NOW)
    assert [event["data"]["reason"] for _, event in out.deadletter] == ["missing_field"]


def test_an_output_over_the_broker_limit_is_named_by_its_dead_letter():
    sli = orjson.dumps({"type": "slostream.sli.window", "id": "abc", "subject": '["checkout","m",{}]',
                        "data": {"service": "s" * 100_000}})
    key, event = oversized_output_event(CONFIG, "slostream.sli", b"checkout", sli, 65536, NOW)
    data = event["data"]
    assert key == b"too_large" and data["reason"] == "too_large" and data["topic"] == "slostream.sli"
    assert "slostream.sli.window" in data["message"] and "abc" in data["message"] and str(len(sli)) in data["message"]
    assert data["value_size"] == len(sli) and len(base64.b64decode(data["value_b64"])) == 1024
    assert oversized_output_event(CONFIG, "slostream.sli", b"checkout", sli, 65536, NOW + 5)[1]["id"] == event["id"]
    assert_finite_json(event)
    validator("deadletter-event.schema.json").validate(event)


def test_unreadable_state_records_are_counted_and_their_series_start_afresh():
    proc = PartitionProcessor(0, CONFIG, now=NOW)
    proc.process([SourceRecord("m", 0, i, NOW, None, orjson.dumps({"service": s, "metric": "m", "value": 1.0,
                                                                    "ts": NOW - 5}))
                  for i, s in enumerate(("a", "b"))], NOW)
    writes, _ = proc.checkpoint(final=True)
    items = [(key, value) for key, value in writes if value is not None]
    series = [i for i, (key, _) in enumerate(items) if '"a"' in key]
    items[series[0]] = (items[series[0]][0], b"\x63not a version")  # a version byte this one does not know
    items.append(("0\x1fa", b'{"v": 99}'))  # an alert book of an unknown version
    restored = PartitionProcessor.restore(0, CONFIG, items, NOW)
    assert restored.unreadable_state == 2
    assert sorted(s.service for s in restored.series.values()) == ["b"]
    out = restored.process([SourceRecord("m", 0, 5, NOW, None, b'{"service":"a","metric":"m","ok":true}')], NOW)
    assert out.accepted == 1 and sorted(s.service for s in restored.series.values()) == ["a", "b"]
