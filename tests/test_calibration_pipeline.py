"""Calibration through the partition pipeline: SLI windows of a model's scores carry ECE and Brier
equal to numpy's over the window's measurements; a week that drifts from the week before is a
drift event; a policy watches ECE; a restore in the middle changes nothing."""

import numpy as np
import orjson
import pytest

from slostream.core.calibration import WEEK_S
from slostream.core.objectives import Policy
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.calibration_reference import brute_force_calibration
from tests.pipeline_sim import WALL, make_config
from tests.schemas import validator

MONDAY = 4 * 86400
T0 = MONDAY + (1_700_000_000 - MONDAY) // WEEK_S * WEEK_S  # a Monday, 00:00 UTC
PER_MINUTE = 10
SKEW_FROM = T0 + 2 * WEEK_S  # the third week's outcomes run 0.15 above the predictions


def _items(weeks: float = 3.05, seed: int = 5) -> list[dict]:
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(int(weeks * WEEK_S / 60 * PER_MINUTE)) * (60 / PER_MINUTE)
    predicted = rng.random(ts.size)
    predicted[::997] = 1.5  # out of range: counted, not dead-lettered
    rate = np.clip(predicted + np.where(ts >= SKEW_FROM, 0.15, 0.0), 0, 1)
    outcomes = (rng.random(ts.size) < rate).astype(int)
    return [{"service": "ranker", "metric": "click_probability", "value": round(float(p), 4), "outcome": int(o),
             "ts": float(t)} for p, o, t in zip(predicted, outcomes, ts)]


def _records(items: list[dict], per_record: int = 2000) -> list[SourceRecord]:
    return [SourceRecord("m", 0, n, items[min(i + per_record, len(items)) - 1]["ts"], None,
                         orjson.dumps(items[i:i + per_record])) for n, i in enumerate(range(0, len(items), per_record))]


def _run(proc: PartitionProcessor, records: list[SourceRecord]):
    sli, drift, breaches = [], [], []
    for record in records:
        out = proc.process([record], WALL)
        assert out.deadletter == []
        sli += [e for _, e in out.sli]
        drift += [e for _, e in out.drift]
        breaches += [e for _, e in out.breaches]
    return sli, drift, breaches


POLICY = Policy("ranker-ece", "ranker", "click_probability", "ece_excess", 6 * 3600, "above", 0.02, 0.05)
CONFIG = make_config(grace_s=5.0, policies=(POLICY,))


@pytest.fixture(scope="module")
def run():
    items = _items()
    proc = PartitionProcessor(0, CONFIG, WALL)
    return items, _run(proc, _records(items)), proc


def test_each_window_carries_numpy_s_ece_and_brier(run):
    items, (sli, _, _), _ = run
    by_window = {}
    for m in items:
        by_window.setdefault(int(m["ts"] // 60 * 60), []).append(m)
    assert len(sli) > 4000
    for event in sli[::97]:
        window = by_window[event["data"]["window_start"]]
        values = np.array([m["value"] for m in window])
        outcomes = np.array([m["outcome"] for m in window])
        ece, brier, out = brute_force_calibration(values, outcomes, 10)
        calibration = event["data"]["calibration"]
        assert calibration["n"] == len(window) - out and calibration["out_of_range"] == out
        assert calibration["ece"] == pytest.approx(ece, rel=1e-9)
        assert calibration["brier"] == pytest.approx(brier, rel=1e-9)
        validator("sli-event.schema.json").validate(event)


def test_the_drifting_week_is_a_drift_event_and_the_steady_one_is_not(run):
    _, (_, drift, _), _ = run
    weekly = [(e["data"]["aggregate"], e["data"]["changed_at"], e["data"]["detected_at"]) for e in drift
              if e["data"]["detector"] == "weekly_delta"]
    assert weekly == [("ece_weekly_delta", SKEW_FROM, SKEW_FROM + WEEK_S),
                      ("brier_weekly_delta", SKEW_FROM, SKEW_FROM + WEEK_S)]
    ece = next(e for e in drift if e["data"]["aggregate"] == "ece_weekly_delta")
    assert ece["data"]["before"] < 0.02 and ece["data"]["after"] > 0.1 and ece["data"]["direction"] == "up"
    validator("drift-event.schema.json").validate(ece)


def test_a_policy_on_ece_excess_breaches_in_the_drifting_week_only(run):
    _, (_, _, breaches), proc = run
    started = [(e["data"]["level"], e["data"]["window_start"]) for e in breaches if e["type"].endswith("started")]
    assert started and all(start >= SKEW_FROM for _, start in started)
    assert started[0] == ("critical", SKEW_FROM)
    breaching = proc.snapshot(kinds=("policies",)).statuses["policies"]  # still drifting at the end
    assert [(s["policy"], s["level"]) for s in breaching] == [("ranker-ece", "critical")]


def test_a_restore_in_the_middle_changes_nothing(run):
    items, whole, _ = run
    records = _records(items)
    proc = PartitionProcessor(0, CONFIG, WALL)
    cut = next(n for n, r in enumerate(records) if r.timestamp > SKEW_FROM + 3 * 86400)
    before = _run(proc, records[:cut])
    writes, (offset, _) = proc.checkpoint(final=True)
    restored = PartitionProcessor.restore(0, CONFIG, dict(writes).items(), WALL)
    after = _run(restored, records[offset + 1:])
    assert [b + a for b, a in zip(before, after)] == list(whole)
