"""Threshold SLOs' compliance models through the partition pipeline: an SLO whose threshold is too
loose and one whose threshold is too tight get recommendations on schedule, with backtests and
scores equal to brute-force counts of the raw values; a restore mid-way repeats them exactly; one
is made on demand."""

import math
from itertools import pairwise

import numpy as np
import orjson
import pytest

from slostream.core.objectives import GoodRule, Slo, SloWindow
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import START, WALL, ControlTopics, make_config
from tests.schemas import validator
from tests.threshold_streams import T0, latency_bursts, recommendations_of, records_of, restored_half_way

DAYS = 8.2  # a week of learning, and the day that scores the first recommendations
LOOSE = Slo("api-fast", "api", "latency_ms", 0.99, SloWindow(rolling_s=28 * 86400), GoodRule("value_le", 300.0))
TIGHT = Slo("api-snappy", "api", "latency_ms", 0.99, SloWindow(rolling_s=28 * 86400), GoodRule("value_lt", 120.0))
CONFIG = make_config(grace_s=5.0, slos=(LOOSE, TIGHT), recommend_every_s=86400.0, recommend_horizon_s=86400.0)


@pytest.fixture(scope="module")
def run() -> tuple[list[dict], list[dict], PartitionProcessor]:
    items = latency_bursts(DAYS)
    proc = PartitionProcessor(0, CONFIG, WALL)
    return items, recommendations_of(proc, records_of(items)), proc


def _made(events: list[dict], slo: str) -> list[dict]:
    return [e["data"] for e in events if e["type"] == "slostream.recommendation" and e["data"]["target"]["name"] == slo]


def test_thresholds_are_recommended_daily_toward_the_target_burn(run):
    _, events, _ = run
    check = validator("recommendation-event.schema.json")
    for event in events:
        if event["type"] == "slostream.recommendation":
            check.validate(event)
    loose, tight = _made(events, "api-fast"), _made(events, "api-snappy")
    assert loose and tight
    made = [data["made_at"] for data in loose]
    assert made[0] >= T0 + 7 * 86400 and all(b - a == 86400 for a, b in pairwise(made))
    first = loose[0]
    assert first["target"] == {"kind": "slo", "name": "api-fast", "level": "threshold"}
    # Balanced: a target of 70% of the 1% budget, at most 25% a cycle, on the model's 10% grid.
    assert first["recommended"] == pytest.approx(300.0 * math.exp(-0.2))
    assert first["predicted"]["current"]["budget_burn"] < 0.1
    assert first["predicted"]["recommended"]["budget_burn"] > 4 * first["predicted"]["current"]["budget_burn"]
    assert tight[0]["recommended"] == pytest.approx(120.0 * math.exp(0.2))
    assert tight[0]["predicted"]["current"]["budget_burn"] > 10
    assert tight[0]["predicted"]["recommended"]["compliance"] > tight[0]["predicted"]["current"]["compliance"]


def test_the_backtest_counts_the_raw_values(run):
    """Brute force over the UTC day of the recommendation, up to it, and the six days before; values
    within 1% of a threshold may fall either side in the sketches."""
    items, events, _ = run
    ts = np.array([i["ts"] for i in items])
    values = np.array([i["value"] for i in items])
    for data in (_made(events, "api-fast")[0], _made(events, "api-snappy")[0]):
        first_day = ((data["made_at"] - 1) // 86400 - 6) * 86400
        chosen = values[(ts >= first_day) & (ts < data["made_at"])]
        for which in ("current", "recommended"):
            counted, level = data["backtest"][which], data[which]
            assert counted["days"] == 7 and counted["events"] == chosen.size
            surely, maybe = int((chosen > level * 1.01).sum()), int((chosen > level * 0.99).sum())
            assert surely <= counted["bad_events"] <= maybe, (which, counted, surely, maybe)
            assert counted["budget_burn"] == pytest.approx(counted["bad_events"] / chosen.size / 0.01)


def test_each_recommendation_is_scored_on_the_day_after(run):
    items, events, _ = run
    check = validator("recommendation-scored-event.schema.json")
    scored = [e["data"] for e in events if e["type"] == "slostream.recommendation.scored"]
    assert scored
    ts = np.array([i["ts"] for i in items])
    values = np.array([i["value"] for i in items])
    for data in scored:
        check.validate(next(e for e in events if e["data"] is data))
        horizon = values[(ts >= data["made_at"]) & (ts < data["made_at"] + 86400)]
        for which in ("current", "recommended"):
            level, result = data["levels"][which], data[which]
            assert result["events"] == horizon.size
            surely, maybe = int((horizon > level * 1.01).sum()), int((horizon > level * 0.99).sum())
            assert surely <= result["bad_events"] <= maybe
            assert result["actual"] == pytest.approx(result["bad_events"] / horizon.size)
    assert any(d[w]["covered"] for d in scored for w in ("current", "recommended"))


def test_a_restore_mid_way_makes_the_same_events(run):
    items, events, _ = run
    assert restored_half_way(CONFIG, records_of(items)) == events


def test_a_threshold_on_demand(run):
    _, events, proc = run
    topics = ControlTopics()
    topics.send(proc, b'{"command": "recommend", "slo": "api-fast", "by": "ana"}', START)
    asked = [event for _, event in topics.apply(proc).recommendations]
    assert [e["data"]["target"]["name"] for e in asked] == ["api-fast"]
    assert asked[0]["data"]["trigger"] == "control command at offset 0 by ana"
    assert not {e["id"] for e in asked} & {e["id"] for e in events}
    latest = {s["target"]["name"]: s for s in proc.snapshot(kinds=("slo_thresholds",)).statuses["slo_thresholds"]}
    assert latest["api-fast"]["trigger"].startswith("control command")
    assert math.isfinite(latest["api-snappy"]["recommended"])


def _one_host_ahead(items: list[dict], ahead_s: float) -> list[SourceRecord]:
    """``items`` of several hosts as records of one host each, ``ahead_s`` of event time ahead of the
    other hosts' records for host h0: each series closes its windows at other moments than in the
    records of every host, as when a live run reads its share from partitions at different speeds."""
    hosts = sorted({m["labels"]["host"] for m in items})
    chunks = [items[i:i + 12] for i in range(0, len(items), 12)]
    by_host = [[m for chunk in chunks for m in chunk if m["labels"]["host"] == host] for host in hosts]
    merged = sorted((m["ts"] - (ahead_s if host == "h0" else 0.0), n, host)
                    for host, measurements in zip(hosts, by_host) for n, m in enumerate(measurements))
    records, run = [], []
    for _, n, host in merged:
        measurement = by_host[hosts.index(host)][n]
        if (run and run[-1]["labels"]["host"] != host) or len(run) == 12:
            records.append(run)
            run = []
        run.append(measurement)
    records.append(run)
    return [SourceRecord("m", 0, n, run[-1]["ts"], None, orjson.dumps(run)) for n, run in enumerate(records)]


def test_the_order_in_which_the_slo_series_close_changes_nothing():
    """Three hosts feed one SLO (a 2.5-fold shift on day 3.4 makes drift recommendations): whether every record
    holds all hosts, or one host runs 40 minutes ahead of the others in records of its own, the
    model sees the same windows and detections in the same order, so the events are the same, and
    the same again through a restore while windows wait for the lagging hosts."""
    config = make_config(grace_s=5.0, slos=(LOOSE,), label_keys=("host",), recommend_strategy="aggressive",
                         recommend_every_s=86400.0, recommend_horizon_s=86400.0)
    items = latency_bursts(4.3, per_burst=9, hosts=3, shift_at_day=3.4, shift=2.5)
    together = recommendations_of(PartitionProcessor(0, config, WALL), records_of(items, 36))
    assert {e["data"]["trigger"] for e in together if e["type"] == "slostream.recommendation"} == {
        "schedule", "drift"}
    apart = _one_host_ahead(items, 2400.0)
    assert recommendations_of(PartitionProcessor(0, config, WALL), apart) == together
    assert restored_half_way(config, apart) == together
