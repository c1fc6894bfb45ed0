import orjson
import pytest

from slostream.core.measurement import MeasurementDecoder
from tests.schemas import validator


@pytest.mark.parametrize(
    "document",
    [
        {"service": "a", "metric": "m", "ok": True},
        [{"service": "a", "metric": "m", "value": 1.5, "ts": 1_800_000_000, "labels": {"region": "eu"}}],
        {"service": "a", "metric": "m", "value": 2, "ts": "2027-01-01T00:00:00+01:00", "id": "x", "outcome": 1},
        {"service": "a", "metric": "m", "value": 1, "ok": None},
        {"service": "a", "metric": "m"},
        {"service": "", "metric": "m", "ok": True},
        {"service": "a", "metric": "m", "value": "1"},
        {"service": "a", "metric": "m", "ok": 1},
        {"service": "a", "metric": "m", "ok": True, "labels": {"a": 1}},
        {"service": "a", "metric": "m", "ok": True, "ts": 1_700_000_000_000},
        [],
        "text",
    ],
)
def test_measurement_schema_agrees_with_the_decoder(document):
    raw = orjson.dumps(document)
    accepted = len(MeasurementDecoder().decode([raw], [1_900_000_000.0], 1_900_000_000.0).columns) > 0
    assert validator("measurement.schema.json").is_valid(document) == accepted


def test_event_schemas_are_valid_json_schema():
    validator("sli-event.schema.json")
    validator("deadletter-event.schema.json")
