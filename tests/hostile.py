"""Hostile inputs for the fuzz tests and the bench's ``fuzz`` part: Hypothesis strategies of
measurement records, record headers and state changelog records, and the invariants every output
of the pure pipeline keeps (nothing raises, every rejection is a dead letter with a reason, every
number is finite)."""

from __future__ import annotations

import json
import math

import orjson
from hypothesis import strategies as st

from slostream.core.measurement import Reason
from slostream.pipeline import state_keys
from slostream.pipeline.alignment import PROGRESS_HEADER
from slostream.pipeline.ownership import FORWARD_HEADER

NOW = 1_800_010_000.0
REASONS = {reason.value for reason in Reason}

_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 5e-324, 1e100, 1e101, 0.0, -0.0]),
    st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
)
_names = st.one_of(
    st.text(max_size=8),
    st.text(min_size=250, max_size=300),
    st.sampled_from(["checkout", "api", "é" * 129, "\U0001f600" * 65, "x" * 257, "\ud800", ""]),
    st.integers(), st.none(),
)
_ts = st.one_of(st.floats(min_value=NOW - 600, max_value=NOW + 30), _numbers, st.text(max_size=30),
                st.sampled_from(["2027-01-15T08:00:00Z", "3237-01-01T00:00:00+00:00", "0001-01-01T00:00:00Z"]),
                st.none())
_json = st.recursive(st.none() | st.booleans() | _numbers | st.text(max_size=20),
                     lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children,
                                                                                       max_size=4),
                     max_leaves=12)
_labels = st.one_of(st.dictionaries(_names.filter(lambda n: isinstance(n, str)), _names, max_size=40), _json)
_measurement = st.fixed_dictionaries(
    {"service": _names, "metric": _names},
    optional={"value": _numbers, "ok": st.one_of(st.booleans(), _json), "ts": _ts, "labels": _labels,
              "id": _names, "outcome": st.one_of(st.sampled_from([0, 1]), _json)},
)


def _encoded(thing) -> bytes:
    """JSON as producers write it; Python's json for what orjson refuses (NaN, 1e400, surrogates)."""
    try:
        return orjson.dumps(thing)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(thing).encode()


measurement_values = st.one_of(
    st.binary(max_size=200),
    st.builds(_encoded, _measurement),
    st.builds(_encoded, st.lists(_measurement, max_size=6)),
    st.builds(_encoded, _json),
    st.none(),
    st.sampled_from([b'{"a":' * depth + b"1" + b"}" * depth for depth in (300, 990, 1500)]
                    + [b"[" * depth + b"]" * depth for depth in (300, 990, 100_000)]),
)
_header_names = st.one_of(st.sampled_from([FORWARD_HEADER, PROGRESS_HEADER]), st.text(max_size=10))
_header_values = st.one_of(st.binary(max_size=20),
                           st.sampled_from([b"0", b"1", b"7", b"1023", b"-1", b"99999", b"1" * 5000]), st.none())
headers = st.lists(st.tuples(_header_names, _header_values), max_size=3).map(tuple)
record_keys = st.one_of(st.none(), st.binary(max_size=20), st.sampled_from([b"checkout", b"api"]))
record_timestamps = st.one_of(st.floats(min_value=NOW - 3600, max_value=NOW),
                              st.sampled_from([0.0, -1.0, 9.2e15, NOW + 1e9]))

_kinds = [state_keys.PARTITION, state_keys.SERIES, state_keys.OLD_SERIES_SLOT, state_keys.SLO_HEADER,
          state_keys.SLO_SLOT, state_keys.MODEL_CHUNK, state_keys.MODEL_REPORT, state_keys.SLO_MODEL,
          state_keys.SENT_ALERT, state_keys.BOOK]


def state_key(partition: int):
    """Keys of this partition's layout with any fields, and any text."""
    prefix = state_keys.partition_prefix(partition)
    fields = st.lists(st.one_of(st.text(max_size=6), st.integers().map(str), st.just('["checkout","m",{}]')),
                      max_size=5).map(state_keys.SEP.join)
    return st.one_of(st.builds(lambda kind, rest: f"{prefix}{kind}{state_keys.SEP}{rest}", st.sampled_from(_kinds),
                               fields),
                     st.builds(lambda kind: prefix + kind, st.sampled_from(_kinds)), st.text(max_size=30))


state_values = st.one_of(st.binary(max_size=300), st.builds(_encoded, _json), st.none(),
                         st.builds(lambda version, rest: bytes([version]) + rest, st.integers(0, 255),
                                   st.binary(max_size=300)))


def mutated(record: bytes | None, data: st.DataObject) -> bytes:
    """A valid state record with a few of its bytes changed, cut or extended."""
    raw = bytearray(record or b"")
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return bytes(raw[:cut]) + data.draw(st.binary(max_size=8))


def assert_finite_json(event) -> None:
    """An output event: JSON whose every number is finite (orjson would write inf and NaN as null)."""
    orjson.loads(orjson.dumps(event))
    stack = [event]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            assert math.isfinite(item), event
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def check_output(out) -> None:
    """Every event of a pipeline ``Output`` is finite JSON; every dead letter has a known reason."""
    for name in ("sli", "deadletter", "alerts", "breaches", "drift", "recommendations"):
        for key, event in getattr(out, name):
            assert isinstance(key, bytes)
            assert_finite_json(event)
    for _, event in out.deadletter:
        assert event["data"]["reason"] in REASONS, event
        assert event["data"]["message"]


def expected_units(value: bytes | None, max_record_bytes: int) -> int:
    """What one measurement record must come out as: accepted measurements plus dead letters (an
    array's elements each, anything else one)."""
    if not value or len(value) > max_record_bytes:
        return 1
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:
            parsed = json.loads(value.decode("utf-8"))
        except (ValueError, RecursionError):
            return 1
    return len(parsed) if isinstance(parsed, list) and parsed else 1
