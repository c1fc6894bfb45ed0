"""Issue 26, point 4, as a new user tries it: four latency series over five weeks, with a daily
and a weekly cycle, each with a p95 policy on a one-minute window and the default balanced
strategy and weekly schedule, through the partition pipeline. Every due recommendation is made
within a day of its due time (before, none was ever made: the model's 3,400 one-minute windows
spanned 2.4 days, and balanced asks for 7), and the weekly cycle, once learned, draws no drift
at each weekend's start and end."""

import numpy as np
import orjson
import pytest

from slostream.core.objectives import Policy
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config

T0 = 1_699_833_600  # a Monday, 00:00 UTC
DAY, WEEK = 86400, 7 * 86400
DAYS = 35
SERIES = 4
EVERY_S = 10.0  # a measurement every 10 s per series


def _items(rng: np.random.Generator) -> list[tuple[float, str, float]]:
    ts = T0 + EVERY_S * np.arange(DAYS * DAY // EVERY_S)
    hour = (ts % DAY) / 3600
    weekly = np.where(((ts // DAY) + 3) % 7 >= 5, 0.8, 1.0)  # 1970-01-01 was a Thursday
    items = []
    for k in range(SERIES):
        jitter = ts + rng.uniform(0, EVERY_S, ts.size)
        values = 100 * (1 + 0.3 * np.sin(2 * np.pi * (hour - 8) / 24)) * weekly * rng.lognormal(0, 0.25, ts.size)
        items += [(float(t), f"api{k}", float(v)) for t, v in zip(jitter.tolist(), values.tolist())]
    items.sort()
    return items


@pytest.mark.slow
def test_due_recommendations_on_one_minute_windows_are_made_within_a_day():
    items = _items(np.random.default_rng(26))
    policies = tuple(Policy(f"api{k}-p95", f"api{k}", "latency_ms", "p95", 60, "above", warning=150.0,
                            critical=400.0) for k in range(SERIES))
    proc = PartitionProcessor(0, make_config(grace_s=5.0, policies=policies), WALL)
    made: dict[str, list[float]] = {}
    drifts = []
    per_record = 1000
    for n, first in enumerate(range(0, len(items), per_record)):
        chunk = items[first:first + per_record]
        record = SourceRecord("m", 0, n, chunk[-1][0], None, orjson.dumps(
            [{"service": s, "metric": "latency_ms", "ts": t, "value": v} for t, s, v in chunk]))
        out = proc.process([record], WALL)
        for _, event in out.recommendations:
            data = event["data"]
            if event["type"] == "slostream.recommendation" and data["target"]["level"] == "warning" \
                    and data["trigger"] == "schedule":
                made.setdefault(data["service"], []).append(data["made_at"])
        drifts += [event["data"] for _, event in out.drift]
    # Due a week after each series' first window, then a week after each one made.
    on_time, due_count = 0, 0
    for k in range(SERIES):
        times = made.get(f"api{k}", [])
        due = T0 + 60 + WEEK
        for at in times:
            due_count += 1
            on_time += at - due <= DAY
            due = at + WEEK
        due_count += due < T0 + DAYS * DAY  # one due and never made
    assert due_count == SERIES * 4
    assert on_time / due_count >= 0.95, (on_time, due_count, made)
    # From week 3 (the weekly profile has two weeks), no "down" in a Saturday's first 12 hours, nor
    # "up" in a Monday's beyond one series in two (before: 12 in this data, as each weekend's end moved
    # its hours back).
    weekend_edges = [d for d in drifts if d["detected_at"] >= T0 + 2 * WEEK + DAY and (
        ((d["detected_at"] - T0) % WEEK // (DAY / 2) == 10 and d["direction"] == "down")
        or ((d["detected_at"] - T0) % WEEK < DAY / 2 and d["direction"] == "up"))]
    assert len(weekend_edges) <= SERIES / 2, [(d["service"], d["direction"], (d["detected_at"] - T0) / DAY)
                                     for d in weekend_edges]
