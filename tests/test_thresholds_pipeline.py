"""Threshold models through the partition pipeline: a policy whose warning is too tight and whose
critical is too loose gets recommendations on schedule, with backtests equal to a brute-force
count over the windows, that a restore mid-way repeats exactly; and one on demand."""

import dataclasses
import math
from itertools import pairwise

import numpy as np
import pytest

from slostream.pipeline.partition import PartitionProcessor
from tests.pipeline_sim import START, WALL, ControlTopics, make_config
from tests.schemas import validator
from tests.threshold_streams import (
    POLICY,
    T0,
    WINDOW,
    latency_bursts,
    latency_items,
    recommendations_of,
    records_of,
    restored_half_way,
)

DAYS = 9
CONFIG = make_config(grace_s=5.0, policies=(POLICY,), recommend_every_s=86400.0)


@pytest.fixture(scope="module")
def run() -> tuple[list[dict], list[dict], PartitionProcessor]:
    items = latency_items(DAYS)
    proc = PartitionProcessor(0, CONFIG, WALL)
    return items, recommendations_of(proc, records_of(items)), proc


def test_scheduled_recommendations_loosen_the_tight_level_and_tighten_the_loose_one(run):
    _, events, _ = run
    check = validator("recommendation-event.schema.json")
    for event in events:
        check.validate(event)
    made = sorted({e["data"]["made_at"] for e in events})
    # The balanced strategy waits for seven days of history; then one a day.
    assert made and made[0] >= T0 + 7 * 86400 and len(made) == len(set(made))
    assert all(later - earlier == pytest.approx(86400, abs=WINDOW) for earlier, later in pairwise(made))
    first = {e["data"]["target"]["level"]: e["data"] for e in events if e["data"]["made_at"] == made[0]}
    warning, critical = first["warning"], first["critical"]
    assert warning["trigger"] == "schedule" and warning["status"] == "changed"
    assert warning["recommended"] > warning["current"] and critical["recommended"] < critical["current"]
    # Each cycle moves at most 25% (balanced).
    assert warning["recommended"] <= 1.25 * 100.0 + 1e-9 and critical["recommended"] >= 400.0 / 1.25 - 1e-9
    assert warning["predicted"]["current"]["violation_rate"] > 0.2  # far too tight
    assert critical["predicted"]["current"]["violation_rate"] < 0.005
    assert warning["predicted"]["recommended"]["violation_rate"] < warning["predicted"]["current"]["violation_rate"]
    assert warning["recommended"] < critical["recommended"]


def test_the_backtest_counts_what_the_windows_did(run):
    """Brute force: each closed 5-minute window's p95 from the raw values (numpy), over the last
    seven days before the recommendation; the pipeline's quantiles are 1% sketches, so a window
    within 1% of the level may fall either side."""
    items, events, _ = run
    data = next(e["data"] for e in events if e["data"]["target"]["level"] == "warning")
    ts = np.array([i["ts"] for i in items])
    values = np.array([i["value"] for i in items])
    starts = np.arange(data["made_at"] - 7 * 86400, data["made_at"], WINDOW)
    p95 = np.array([np.quantile(values[(ts >= s) & (ts < s + WINDOW)], 0.95) for s in starts])
    for which in ("current", "recommended"):
        level = data[which]
        counted = data["backtest"][which]
        assert counted["windows"] == starts.size
        surely, maybe = int((p95 > level * 1.01).sum()), int((p95 > level * 0.99).sum())
        assert surely <= counted["breach_windows"] <= maybe, (which, counted, surely, maybe)


def test_a_restore_mid_way_makes_the_same_recommendations(run):
    items, events, _ = run
    replayed = restored_half_way(CONFIG, records_of(items))
    assert [e["id"] for e in replayed] == [e["id"] for e in events]
    assert replayed == events


def test_a_recommendation_on_demand(run):
    _, events, proc = run
    topics = ControlTopics()
    topics.send(proc, b'{"command": "recommend", "policy": "api-p95", "by": "ana"}', START)
    asked = [event for _, event in topics.apply(proc).recommendations]
    assert {e["data"]["target"]["level"] for e in asked} == {"warning", "critical"}
    assert all(e["data"]["trigger"] == "control command at offset 0 by ana" for e in asked)
    assert not {e["id"] for e in asked} & {e["id"] for e in events}
    latest = {(s["target"]["level"]): s for s in proc.snapshot(kinds=("thresholds",)).statuses["thresholds"]}
    assert latest["warning"]["trigger"].startswith("control command")
    assert math.isfinite(latest["warning"]["recommended"])


def test_recommendations_are_scored_after_their_horizon_and_an_inaccurate_model_alerts():
    """A horizon of a day: the recommendation of day 7 is scored on day 8 against a brute-force
    count of its windows; on day 8 latency rises by 60%, so that day's is off and fires
    ThresholdModelInaccurate."""
    config = make_config(grace_s=5.0, policies=(POLICY,), recommend_every_s=86400.0, recommend_horizon_s=86400.0)
    items = latency_items(10)
    shift_at = T0 + 8 * 86400 + 3 * 3600
    for item in items:
        if item["ts"] >= shift_at:
            item["value"] *= 1.6
    proc = PartitionProcessor(0, config, WALL)
    events, alerts = [], []
    for record in records_of(items):
        out = proc.process([record], WALL)
        events += [e for _, e in out.recommendations]
        alerts += [e for _, e in out.alerts if e["data"]["labels"]["alertname"] == "ThresholdModelInaccurate"]
    scored = [e for e in events if e["type"] == "slostream.recommendation.scored"]
    check = validator("recommendation-scored-event.schema.json")
    for event in scored:
        check.validate(event)
    made = {(e["data"]["target"]["level"], e["data"]["made_at"]): e["data"] for e in events
            if e["type"] == "slostream.recommendation"}
    assert {(s["data"]["target"]["level"], s["data"]["made_at"]) for s in scored} <= set(made)
    first = next(s["data"] for s in scored if s["data"]["target"]["level"] == "warning")
    ts = np.array([i["ts"] for i in items])
    values = np.array([i["value"] for i in items])
    starts = np.arange(first["made_at"], first["made_at"] + 86400, WINDOW)
    p95 = np.array([np.quantile(values[(ts >= s) & (ts < s + WINDOW)], 0.95) for s in starts])
    for which in ("current", "recommended"):
        level = first["levels"][which]
        assert first[which]["windows"] == starts.size
        surely, maybe = int((p95 > level * 1.01).sum()), int((p95 > level * 0.99).sum())
        assert surely <= first[which]["breach_windows"] <= maybe
        assert first[which]["actual"] == first[which]["breach_windows"] / starts.size
    assert first["recommended"]["covered"] and not first["recommended"]["inaccurate"]
    late = [s["data"] for s in scored if s["data"]["made_at"] >= T0 + 8 * 86400]
    assert any(d["recommended"]["inaccurate"] for d in late)
    fired = [a for a in alerts if a["type"] == "slostream.alert.firing"]
    assert fired and fired[0]["data"]["labels"]["policy"] == "api-p95"
    assert fired[0]["data"]["labels"]["severity"] == "ticket"


def test_a_policys_bounds_hold_its_recommendations():
    """Both levels too tight, with a bound max of 130: critical would rise 25% to 150 and stops at
    the bound; warning would rise to 125 and is kept 5% inside the new critical."""
    bounded = dataclasses.replace(POLICY, warning=100.0, critical=120.0, max_level=130.0)
    proc = PartitionProcessor(0, make_config(grace_s=5.0, policies=(bounded,), recommend_every_s=86400.0), WALL)
    events = recommendations_of(proc, records_of(latency_items(8)))
    first = {e["data"]["target"]["level"]: e["data"] for e in events}
    assert first["critical"]["recommended"] == 130.0
    assert "lowered to the bound max 130" in first["critical"]["guards"]
    assert first["warning"]["recommended"] == pytest.approx(130.0 * 0.95)
    assert all(e["data"]["recommended"] <= 130.0 for e in events)


def test_a_model_without_a_policy_recommends_the_levels_that_meet_the_targets():
    """A ``models:`` entry: the warning and critical levels predicted to be crossed by 2% and 0.5%
    of windows (balanced), with a backtest equal to a brute-force count, and scores of those
    levels alone a day later."""
    model = dataclasses.replace(POLICY, name="api-p95-model", warning=None, critical=None)
    config = make_config(grace_s=5.0, models=(model,), recommend_every_s=86400.0, recommend_horizon_s=86400.0)
    items = latency_bursts(8.2)
    proc = PartitionProcessor(0, config, WALL)
    events = recommendations_of(proc, records_of(items))
    made = {e["data"]["target"]["level"]: e["data"] for e in events if e["type"] == "slostream.recommendation"}
    check = validator("recommendation-event.schema.json")
    for event in events:
        if event["type"] == "slostream.recommendation":
            check.validate(event)
    warning, critical = made["warning"], made["critical"]
    assert warning["target"] == {"kind": "model", "name": "api-p95-model", "level": "warning"}
    assert (warning["status"], warning["current"], warning["predicted"]["current"]) == ("new", None, None)
    assert warning["predicted"]["recommended"]["violation_rate"] == pytest.approx(0.02, abs=0.002)
    assert critical["predicted"]["recommended"]["violation_rate"] == pytest.approx(0.005, abs=0.001)
    assert warning["recommended"] < critical["recommended"]
    ts = np.array([i["ts"] for i in items])
    values = np.array([i["value"] for i in items])
    starts = np.arange(warning["made_at"] - 7 * 86400, warning["made_at"], WINDOW)
    # The sketches' rank rule: the value at rank floor(q (n - 1)) (numpy's "lower").
    p95 = np.array([np.quantile(values[(ts >= s) & (ts < s + WINDOW)], 0.95, method="lower") for s in starts])
    level, counted = warning["recommended"], warning["backtest"]["recommended"]
    assert counted["windows"] == starts.size
    assert int((p95 > level * 1.01).sum()) <= counted["breach_windows"] <= int((p95 > level * 0.99).sum())
    scored = [e for e in events if e["type"] == "slostream.recommendation.scored"]
    assert {e["data"]["target"]["level"] for e in scored} == {"warning", "critical"}
    check = validator("recommendation-scored-event.schema.json")
    for event in scored:
        check.validate(event)
        assert event["data"]["current"] is None and event["data"]["recommended"]["windows"] == 288
    assert proc.snapshot(kinds=("policies",)).statuses["policies"] == []  # a model judges no level


def test_a_due_recommendation_is_held_through_an_incident_and_made_after_it():
    """An incident (latency three times for two hours) over a due time: the recommendation is held, the status
    says why, and it is made once the incident is over, not a cycle later."""
    config = make_config(grace_s=5.0, policies=(POLICY,), recommend_every_s=86400.0)
    items = latency_items(DAYS)
    begin, end = T0 + 8 * 86400 - 600, T0 + 8 * 86400 + 2 * 3600
    for item in items:
        if begin <= item["ts"] < end:
            item["value"] *= 3.0
    proc = PartitionProcessor(0, config, WALL)
    made, held = [], []
    for record in records_of(items):
        out = proc.process([record], WALL)
        made += [e["data"]["made_at"] for _, e in out.recommendations
                 if e["type"] == "slostream.recommendation" and e["data"]["target"]["level"] == "warning"]
        held += [s["held"] for s in proc.snapshot(kinds=("thresholds",)).statuses["thresholds"] if s["held"]]
    assert held and all(begin <= h["since"] <= h["until"] and h["due_at"] <= h["until"] for h in held)
    assert {h["reason"].split(":")[0].split(" settles")[0] for h in held} <= {
        "a drift of p95", "a drift of p95, error_ratio", "an incident"}, held
    after = [at for at in made if at > begin]
    assert after and begin < after[0] <= end + 6 * 3600, (after, end)  # not a day later
    assert not [at for at in made if begin <= at < end]  # none while it lasted
