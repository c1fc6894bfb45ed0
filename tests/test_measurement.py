import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slostream.core.measurement import MeasurementDecoder, Reason

NOW = 1_800_000_000.0
GOOD = {"service": "checkout", "metric": "latency_ms", "value": 12.5, "ok": True, "ts": NOW - 10}


def _decode(*raws, **kw):
    return MeasurementDecoder(**kw).decode(raws, [NOW] * len(raws), NOW)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", Reason.INVALID_JSON),
        (b'{"service": "a", "metric": ', Reason.INVALID_JSON),
        (b'{"service": "\xff\xfe", "metric": "m", "ok": true}', Reason.INVALID_JSON),
        (b"[" * 5000 + b"]" * 5000, Reason.INVALID_JSON),
        (b'"just a string"', Reason.NOT_AN_OBJECT),
        (b"42", Reason.NOT_AN_OBJECT),
        (b'{"metric": "m", "ok": true}', Reason.MISSING_FIELD),
        (b'{"service": "s", "metric": "m"}', Reason.MISSING_FIELD),
        (b'{"service": "s", "metric": "m", "value": "12"}', Reason.WRONG_TYPE),
        (b'{"service": "s", "metric": "m", "value": true}', Reason.WRONG_TYPE),
        (b'{"service": "s", "metric": "m", "ok": 1}', Reason.WRONG_TYPE),
        (b'{"service": "s", "metric": "m", "ok": true, "labels": {"a": {"b": 1}}}', Reason.WRONG_TYPE),
        (b'{"service": 5, "metric": "m", "ok": true}', Reason.WRONG_TYPE),
        (b'{"service": "s", "metric": "m", "value": NaN}', Reason.NON_FINITE_VALUE),
        (b'{"service": "s", "metric": "m", "value": 1e400}', Reason.NON_FINITE_VALUE),
        (b'{"service": "s", "metric": "m", "value": -Infinity}', Reason.NON_FINITE_VALUE),
        (b'{"service": "s", "metric": "m", "ok": true, "ts": "yesterday"}', Reason.BAD_TIMESTAMP),
        (b'{"service": "s", "metric": "m", "ok": true, "ts": "2024-01-01T00:00:00"}', Reason.BAD_TIMESTAMP),
        (b'{"service": "s", "metric": "m", "ok": true, "ts": 1700000000000}', Reason.BAD_TIMESTAMP),
        (b'{"service": "s", "metric": "m", "ok": true, "ts": -5}', Reason.BAD_TIMESTAMP),
        (b'{"service": "s", "metric": "m", "ok": true, "ts": 1900000000}', Reason.BAD_TIMESTAMP),
    ],
)
def test_each_reason(raw, reason):
    batch = _decode(raw)
    assert len(batch.columns) == 0
    assert [r.reason for r in batch.rejections] == [reason]
    assert batch.rejections[0].message


def test_too_large_is_checked_before_parsing():
    big = orjson.dumps([GOOD] * 200_000)
    assert len(big) > 10_000_000
    batch = _decode(big, max_record_bytes=1 << 20)
    assert [r.reason for r in batch.rejections] == [Reason.TOO_LARGE]


def test_one_bad_element_rejects_only_itself():
    items = [GOOD, {"service": "x"}, 7, {**GOOD, "value": "slow"}, {**GOOD, "ts": "2024-05-01T12:00:00+02:00"}]
    batch = _decode(orjson.dumps(items))
    assert len(batch.columns) == 2
    assert sorted((r.index, r.reason.value) for r in batch.rejections) == [
        (1, "missing_field"), (2, "not_an_object"), (3, "wrong_type")]
    assert batch.columns.ts.tolist() == [NOW - 10, 1714557600.0]
    assert batch.columns.position.tolist() == [0, 4]


def test_columns_fill_defaults():
    batch = _decode(b'{"service":"s","metric":"m","ok":false}', b'{"service":"s","metric":"m","value":3}')
    cols = batch.columns
    assert cols.ts.tolist() == [NOW, NOW]  # record timestamp when ts is absent
    assert cols.oks.tolist() == [0, -1]
    assert cols.values[1] == 3 and cols.values[0] != cols.values[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(["service", "metric", "value", "ok", "ts", "labels", "id"]),
                                 json_values, max_size=7).map(lambda v: json.dumps([v, v]).encode())))
def test_no_input_raises_and_every_input_is_accounted_for(raw):
    batch = _decode(raw)
    assert len(batch.columns) + len(batch.rejections) >= 1


_PIECES = [orjson.dumps(GOOD), orjson.dumps([GOOD, {**GOOD, "value": 3.0}]),
           orjson.dumps(GOOD) + b"," + orjson.dumps(GOOD),
           b"[" + orjson.dumps(GOOD), orjson.dumps(GOOD) + b"]", b"{\n" + orjson.dumps(GOOD)[1:], b"  ", b"", b"[]",
           orjson.dumps({**GOOD, "ok": "yes"}), orjson.dumps(GOOD) + b"\r", b"null", orjson.dumps({**GOOD, "ts": None})]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8))
def test_decoding_many_records_at_once_equals_decoding_each_alone(raws):
    """Records decoded in one call (small ones) give what each decoded alone gives, including
    records that would make valid JSON only when joined with their neighbours."""
    together = _decode(*raws)
    alone = [_decode(raw) for raw in raws]
    assert together.columns.values.tolist() == [v for one in alone for v in one.columns.values.tolist()]
    assert together.columns.record.tolist() == [n for n, one in enumerate(alone) for _ in range(len(one.columns))]
    assert together.columns.position.tolist() == [p for one in alone for p in one.columns.position.tolist()]
    assert [(r.record, r.index, r.reason, r.message) for r in together.rejections] == [
        (n, r.index, r.reason, r.message) for n, one in enumerate(alone) for r in one.rejections]


@pytest.mark.parametrize("field", ["service", "metric", "id", "label key", "label value"])
@pytest.mark.parametrize("text", ["a" * 257, "é" * 129, "\\u00e9" * 129, "\U0001f600" * 65],
                         ids=["ascii", "two-byte", "escaped", "four-byte"])
def test_a_name_over_max_name_bytes_in_utf8_rejects_only_its_measurement(field, text):
    """257 bytes of UTF-8 in each name: in plain ASCII (msgspec's character limit), or in fewer
    than 256 characters of several bytes each, raw or escaped; the measurement beside it is kept."""
    element = {**GOOD}
    if field == "label key":
        element["labels"] = {"__KEY__": "v"}
    elif field == "label value":
        element["labels"] = {"k": "__KEY__"}
    else:
        element[field] = "__KEY__"
    raw = orjson.dumps([GOOD, element]).replace(b"__KEY__", text.encode())
    for batch in (_decode(raw), _decode(raw, raw)):  # one record alone, and records decoded at once
        assert len(batch.columns) == len(batch.rejections)
        assert {(r.reason, r.index) for r in batch.rejections} == {(Reason.TOO_LARGE, 1)}
        assert "256" in batch.rejections[0].message


def test_names_of_exactly_max_name_bytes_are_accepted():
    element = {**GOOD, "service": "é" * 128, "metric": "m" * 256, "labels": {"k" * 256: "\U0001f600" * 64}}
    batch = _decode(orjson.dumps(element))
    assert not batch.rejections and len(batch.columns) == 1


def test_more_than_max_labels_is_too_large():
    labels = {f"k{i}": "v" for i in range(33)}
    batch = _decode(orjson.dumps([{**GOOD, "labels": labels}, {**GOOD, "labels": dict(list(labels.items())[:32])}]))
    assert [(r.reason, r.index) for r in batch.rejections] == [(Reason.TOO_LARGE, 0)]
    assert len(batch.columns) == 1
    assert [r.reason for r in _decode(orjson.dumps({**GOOD, "labels": labels}), max_labels=40).rejections] == []


def test_a_lone_surrogate_escape_is_not_a_name():
    """Python's json (read for NaN and 1e400) takes "\\ud800", which no UTF-8 encoder writes."""
    raw = b'{"service": "a\\ud800", "metric": "m", "value": NaN}'
    batch = _decode(raw)
    assert [r.reason for r in batch.rejections] == [Reason.INVALID_JSON]
    assert "surrogate" in batch.rejections[0].message


@pytest.mark.parametrize("value", [1e101, -1e300, 1.7e308])
def test_values_beyond_the_bound_are_out_of_range(value):
    batch = _decode(orjson.dumps([GOOD, {**GOOD, "value": value}, {**GOOD, "value": 1e100}]))
    assert [(r.reason, r.index) for r in batch.rejections] == [(Reason.OUT_OF_RANGE, 1)]
    assert batch.columns.values.tolist() == [12.5, 1e100]
