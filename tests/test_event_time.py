"""Per-series event time: lateness against a series' own clock, any jump in event time, and a
property test of the whole pure pipeline against a brute-force reference."""

import random

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slostream.core.budget import BurnTier
from slostream.core.objectives import GoodRule, Policy, Slo, SloWindow
from slostream.core.watermark import running_max_before
from slostream.pipeline.ownership import owner_of
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, Cluster, make_config

T0 = 1_800_000_000 // 60 * 60


@given(st.lists(st.tuples(st.integers(0, 4), st.floats(-1e6, 1e6)), max_size=60),
       st.lists(st.floats(-1e6, 1e6) | st.just(-np.inf), min_size=5, max_size=5))
def test_running_max_before_equals_a_loop(pairs, initial):
    groups = np.array([g for g, _ in pairs], dtype=np.int64)
    values = np.array([v for _, v in pairs])
    before, final = running_max_before(groups, values, np.array(initial))
    seen = list(initial)
    for i, (g, v) in enumerate(pairs):
        assert before[i] == seen[g]
        seen[g] = max(seen[g], v)
    assert final.tolist() == seen


def _flushes(services: list[str], minutes: int, per_s: int, stagger_s: float, seed: int):
    """Each service sends the last minute of its measurements at once, every minute, the services
    in turn (service i flushes ``i * stagger_s`` seconds after service 0)."""
    rng = random.Random(seed)
    flushes, items = [], []
    for minute in range(1, minutes + 1):
        for i, service in enumerate(services):
            end = T0 + minute * 60 + i * stagger_s
            batch = [{"service": service, "metric": "http", "ok": rng.random() > 0.1,
                      "ts": end - 60 + k / per_s} for k in range(60 * per_s)]
            flushes.append((end, service, batch))
            items += batch
    flushes.sort(key=lambda flush: flush[0])
    return flushes, items


def _truth(items, closed_until: dict[str, float]) -> dict:
    truth: dict = {}
    for m in items:
        start = int(m["ts"] // 60 * 60)
        if start + 60 <= closed_until[m["service"]]:
            truth[(m["service"], start)] = truth.get((m["service"], start), 0) + 1
    return truth


def test_services_flushing_a_minute_at_a_time_lose_nothing_to_each_other():
    services = [f"svc-{i}" for i in range(12)]
    flushes, items = _flushes(services, minutes=6, per_s=2, stagger_s=4.0, seed=1)
    cluster = Cluster(make_config(partitions=4, grace_s=30.0), random.Random(5))
    cluster.drain([(owner_of(service, 4), orjson.dumps(batch), service.encode()) for _, service, batch in flushes])
    cluster.settle()
    assert cluster.deadletter == []
    series = {key[0]: s for proc in cluster.procs for key, s in proc.series.items()}
    assert len({owner_of(s, 4) for s in services}) > 1 and len(series) == 12
    assert cluster.windows() == _truth(items, {name: s.windows.closed_until for name, s in series.items()})


def test_one_producer_clock_minutes_ahead_leaves_its_neighbours_exact():
    rng = random.Random(2)
    records, items = [], []
    for second in range(900):
        batch = [{"service": name, "metric": "http", "ok": rng.random() > 0.1, "ts": T0 + second}
                 for name in ("a", "b", "c")]
        batch.append({"service": "ahead", "metric": "http", "ok": True, "ts": T0 + second + 290})
        items += batch
        records.append(SourceRecord("m", 0, second, T0 + second, None, orjson.dumps(batch)))
    proc = PartitionProcessor(0, make_config(grace_s=30.0), now=WALL)
    sli, letters = [], []
    for first in range(0, len(records), 13):
        out = proc.process(records[first:first + 13], WALL)
        sli += [e["data"] for _, e in out.sli]
        letters += out.deadletter
    assert letters == []
    closed = {name: s.windows.closed_until for (name, _), s in proc.series.items()}
    got = {(d["service"], d["window_start"]): d["count"] for d in sli}
    assert got == _truth(items, closed)
    # One a second.
    assert sum(count for (name, _), count in got.items() if name == "b") == (closed["b"] - T0) // 60 * 60


def _backlog(hours: float, per_s: int, per_record: int, seed: int):
    rng = random.Random(seed)
    items = [{"service": "backfill", "metric": "latency_ms", "value": round(rng.lognormvariate(3, 0.4), 3),
              "ok": rng.random() > 0.02, "ts": T0 + k / per_s} for k in range(int(hours * 3600 * per_s))]
    values = [orjson.dumps(items[i:i + per_record]) for i in range(0, len(items), per_record)]
    return items, [SourceRecord("m", 0, n, T0 + hours * 3600 + 60, b"backfill", v) for n, v in enumerate(values)]


def test_a_five_hour_backlog_in_one_batch_reports_every_window_exactly():
    items, records = _backlog(5, per_s=2, per_record=500, seed=3)
    slo = Slo("backfill-latency", "backfill", "latency_ms", 0.99, SloWindow(rolling_s=86400),
              GoodRule("value_le", 40.0), tiers=(BurnTier("page", 3600, 300, 14.4),))
    policy = Policy("backfill-p99", "backfill", "latency_ms", "p99", 300, "above", warning=60.0, critical=90.0)
    proc = PartitionProcessor(0, make_config(grace_s=30.0, slos=(slo,), policies=(policy,)), now=WALL)
    out = proc.process(records, WALL)  # every record in one fetch: hours of event time at once
    assert out.deadletter == []
    series = proc.series[("backfill", "latency_ms")]
    got = {e["data"]["window_start"]: e["data"] for _, e in out.sli}
    truth: dict = {}
    for m in items:
        start = int(m["ts"] // 60 * 60)
        if start + 60 <= series.windows.closed_until:
            truth.setdefault(start, []).append(m)
    assert sorted(got) == sorted(truth) and len(got) == 5 * 60 - 1
    for start, members in truth.items():
        values = np.array([m["value"] for m in members])
        assert got[start]["count"] == len(members)
        assert got[start]["errors"] == sum(not m["ok"] for m in members)
        assert got[start]["max"] == values.max()
    tracker = proc.slos.trackers["backfill-latency"]
    bad, total = tracker.counts(T0, tracker.events.closed_until)
    judged = [m for m in items if m["ts"] < tracker.events.closed_until]
    assert (bad, total) == (sum(m["value"] > 40.0 for m in judged), len(judged))


@st.composite
def _streams(draw):
    """Measurements of a few series with random steps, gaps of hours or days, and stragglers."""
    n_series = draw(st.integers(1, 4))
    clocks = [T0 + draw(st.integers(0, 3600)) for _ in range(n_series)]
    items = []
    for _ in range(draw(st.integers(1, 120))):
        s = draw(st.integers(0, n_series - 1))
        kind = draw(st.sampled_from(["step", "step", "step", "gap", "jump", "straggler"]))
        if kind == "step":
            clocks[s] += draw(st.floats(0, 20))
        elif kind == "gap":
            clocks[s] += draw(st.floats(60, 7200))
        elif kind == "jump":
            clocks[s] += draw(st.floats(7200, 3 * 86400))
        ts = clocks[s] - (draw(st.floats(0, 400)) if kind == "straggler" else 0.0)
        items.append({"service": f"s{s}", "metric": "m", "ok": draw(st.booleans()), "ts": round(ts, 3),
                      "value": draw(st.floats(1, 1000))})
    per_record = draw(st.integers(1, 9))
    cuts = draw(st.lists(st.integers(1, 40), min_size=1, max_size=10))
    return items, per_record, cuts


def _reference(items: list[dict], grace: float, width: int = 10) -> tuple[dict, dict]:
    """Brute force: each series judges each measurement against its own watermark, one at a time."""
    newest: dict = {}
    mark: dict = {}
    counts: dict = {}
    for m in items:
        s = m["service"]
        current = mark.get(s, -np.inf)
        horizon = np.floor(current / width) * width
        if m["ts"] >= horizon:
            key = (s, int(m["ts"] // 60 * 60))
            counts[key] = counts.get(key, 0) + 1
        newest[s] = max(newest.get(s, -np.inf), m["ts"])
        mark[s] = max(current, newest[s] - grace)
    return counts, {s: np.floor(v / width) * width for s, v in mark.items()}


SLO = Slo("s0-http", "s0", "m", 0.99, SloWindow(rolling_s=7 * 86400), GoodRule("ok"),
          tiers=(BurnTier("page", 3600, 300, 14.4), BurnTier("ticket", 6 * 3600, 1800, 6.0)))
POLICY = Policy("s1-p90", "s1", "m", "p90", 60, "above", warning=500.0, critical=None)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_streams())
def test_any_jumps_and_any_batching_report_every_window_as_brute_force_counts_it(stream):
    items, per_record, cuts = stream
    values = [orjson.dumps(items[i:i + per_record]) for i in range(0, len(items), per_record)]
    # Written long after: no ts is "in the future".
    records = [SourceRecord("m", 0, n, T0 + 400 * 86400, None, v) for n, v in enumerate(values)]
    results = []
    for chunking in (cuts, [len(records)]):
        proc = PartitionProcessor(0, make_config(grace_s=30.0, slos=(SLO,), policies=(POLICY,)), now=WALL)
        sli, late, first, turn = [], 0, 0, 0
        while first < len(records):
            size = chunking[turn % len(chunking)]
            out = proc.process(records[first:first + size], WALL)
            sli += [e for _, e in out.sli]
            late += sum(e["data"]["reason"] == "too_late" for _, e in out.deadletter)
            first, turn = first + size, turn + 1
        results.append((sorted((e["id"], e["data"]["count"]) for e in sli), late))
        counts, horizons = _reference(items, 30.0)
        expected = {key: n for key, n in counts.items() if key[1] + 60 <= horizons[key[0]]}
        got = {(e["data"]["service"], e["data"]["window_start"]): e["data"]["count"] for e in sli}
        assert got == expected
        assert late == len(items) - sum(counts.values())
    assert results[0] == results[1]


@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
@settings(max_examples=30, deadline=None)
def test_running_max_before_on_long_runs_equals_a_loop(seed, n_groups):
    """Long runs per group take the one-accumulate-per-run path; it must agree with a loop too."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, 1000)
    values = np.round(rng.normal(0, 100, 1000), 1)
    initial = np.where(rng.random(n_groups) < 0.5, -np.inf, rng.normal(0, 100, n_groups))
    before, final = running_max_before(groups, values, initial)
    seen = initial.tolist()
    for i, (g, v) in enumerate(zip(groups.tolist(), values.tolist())):
        assert before[i] == seen[g]
        seen[g] = max(seen[g], v)
    assert final.tolist() == seen
