"""Workers that read their partitions at different speeds: each partition is read no further than its
read-ahead limit (``pipeline.alignment.read_ahead_limits``), so a backlog spread over every partition
is caught up exactly, holding little open however far one worker would get ahead of another (the
base ring of an SLO holds about an hour; the backlog is six)."""

import math
import random

import orjson

from slostream.core.objectives import Policy
from slostream.pipeline.alignment import RUN_GAP_S, STALLED_AFTER_S, Alignment, Progress, read_ahead_limits
from slostream.pipeline.partition import read_ahead_of
from slostream.pipeline.types import SourceRecord
from tests.integration.streams import truth_of
from tests.pipeline_sim import START, Cluster, make_config
from tests.slo_feed import checkout_slo

PARTITIONS = 4
FAST, SLOW = (0, 1), (2, 3)  # two workers' partitions
HOURS = 6
SERVICES = 5


def test_the_least_read_partition_is_never_held_and_the_others_stop_a_budget_past_it():
    limits = read_ahead_limits({0: 100.0, 1: 5000.0, 2: 100.0, 3: 250.0}, 4, budget=1000.0)
    assert limits == {0: math.inf, 1: 1100.0, 2: math.inf, 3: 1100.0}


def test_until_every_partition_has_claimed_a_position_only_those_that_have_not_are_read():
    assert read_ahead_limits({0: 100.0, 1: 5000.0}, 3, budget=10.0) == {0: -math.inf, 1: -math.inf, 2: math.inf}
    assert read_ahead_limits({0: 100.0, 1: None, 2: 7.0}, 3, budget=10.0) == {0: -math.inf, 1: math.inf,
                                                                             2: -math.inf}
    assert read_ahead_limits({0: 100.0}, 1, budget=10.0) == {0: math.inf}


def test_a_stalled_partition_holds_nobody_back():
    limits = read_ahead_limits({0: 100.0, 1: 5000.0, 2: 7000.0}, 3, budget=1000.0, stalled=frozenset({0}))
    assert limits == {0: math.inf, 1: math.inf, 2: 6000.0}


def _backlog(cluster: Cluster, rng: random.Random) -> list[dict]:
    """Every minute of ``HOURS``, three hosts each write an array of two measurements of every service
    to a random partition (unkeyed), stamped when written: at the end of the minute."""
    t0 = (START - HOURS * 3600 - 600) // 60 * 60
    items = []
    for minute in range(HOURS * 60):
        for _ in range(3):
            batch = [{"service": f"svc-{s}", "metric": "http", "ok": rng.random() > 0.05,
                      "value": round(rng.lognormvariate(4, 0.5), 3), "ts": t0 + minute * 60 + rng.uniform(0, 59)}
                     for s in range(SERVICES) for _ in range(2)]
            items += batch
            partition = rng.randrange(PARTITIONS)
            log = cluster.logs[partition]
            log.append(SourceRecord("m", partition, len(log), t0 + minute * 60 + 60, None, orjson.dumps(batch)))
    return items


def _open_span(cluster: Cluster) -> float:
    """The longest event time any series holds open: from its watermark to its newest measurement."""
    spans = [proc.store.max_ts[s.windows.owner] - proc.store.watermark[s.windows.owner]
             for proc in cluster.procs for s in proc.series.values()]
    return max([s for s in spans if math.isfinite(s)], default=0.0)


def _catch_up(limited: bool) -> tuple[Cluster, list[dict], float]:
    """The backlog read by two workers, one twenty times the other's speed, reporting progress
    every round; and the longest event time a series held open meanwhile."""
    rng = random.Random(11)
    cluster = Cluster(make_config(partitions=PARTITIONS, grace_s=30.0), rng)
    items = _backlog(cluster, rng)
    open_span = 0.0
    for _ in range(20_000):
        for worker, chunk in ((FAST, 40), (SLOW, 2)):
            procs = {p: cluster.procs[p] for p in worker}
            ends = {p: cluster.end_known_at[p] for p in worker}
            limits = read_ahead_of(procs, ends, cluster.clock) if limited else {}
            for partition in worker:
                cluster.step(partition, chunk, limits.get(partition, math.inf))
        cluster.tick()
        open_span = max(open_span, _open_span(cluster))
        if all(cluster.read[p] == len(cluster.logs[p]) for p in range(PARTITIONS)):
            break
    else:
        raise AssertionError(f"the backlog was never read to its end: {cluster.read}")
    # Every series says, a while later, that it lives: its last backlog window then closes.
    end = max(m["ts"] for m in items) + 300
    for partition in range(PARTITIONS):
        cluster.append(partition, orjson.dumps([{"service": f"svc-{s}", "metric": "http", "ok": True, "ts": end}
                                                for s in range(SERVICES)]))
    cluster.drain()
    cluster.settle()
    return cluster, items, open_span


def test_a_backlog_read_by_workers_of_different_speeds_is_caught_up_exactly_holding_little_open():
    cluster, items, open_span = _catch_up(limited=True)
    assert [e["data"]["reason"] for e in cluster.deadletter] == []
    windows = {key: count for key, count in cluster.windows().items() if key in truth_of(items)}
    assert windows == truth_of(items)
    base = cluster.config.resolutions[0]
    assert open_span < base.retention - cluster.config.report_window_s  # an SLO's base ring holds it


def test_without_the_limit_the_fast_worker_runs_hours_ahead_and_its_series_hold_hours_open_losing_nothing():
    cluster, items, open_span = _catch_up(limited=False)
    assert open_span > cluster.config.resolutions[0].retention  # what the limit saves: memory
    assert [e["data"]["reason"] for e in cluster.deadletter] == []
    windows = {key: count for key, count in cluster.windows().items() if key in truth_of(items)}
    assert windows == truth_of(items)


def _report_every(alignment: Alignment, partitions: tuple[int, ...], start: float, stop: float, every: float) -> None:
    """Progress moving at ``partitions`` (a second of record time per second) from wall time
    ``start`` to ``stop``."""
    now = start
    while now <= stop:
        for partition in partitions:
            alignment.report(partition, Progress(1000.0 + now), now)
        now += every


def test_closes_wait_for_a_partition_until_others_have_moved_all_along_for_the_stall_time():
    alignment = Alignment(3, since=0.0)
    alignment.report(0, Progress(100.0), now=0.0)
    _report_every(alignment, (1, 2), 0.0, STALLED_AFTER_S - 10, every=30.0)
    assert alignment.aligned_until == 100.0 and alignment.stalled() == frozenset()
    _report_every(alignment, (1, 2), STALLED_AFTER_S, STALLED_AFTER_S + 30, every=30.0)
    assert alignment.stalled() == {0} and alignment.aligned_until == 1000.0 + STALLED_AFTER_S + 30
    alignment.report(0, Progress(200.0), now=STALLED_AFTER_S + 40)
    assert alignment.aligned_until == 200.0  # it moved: waited for again


def test_a_partition_that_re_reads_what_it_had_read_is_alive_not_stalled():
    """A new owner replays from the committed offset: its claims stay below the old one for as long
    as that takes, and closes wait for it all along."""
    alignment = Alignment(2, since=0.0)
    alignment.report(0, Progress(100.0), now=0.0)
    _report_every(alignment, (1,), 0.0, 3 * STALLED_AFTER_S, every=1.0)
    now = 0.0
    while now <= 3 * STALLED_AFTER_S:
        alignment.report(0, Progress(50.0 + now / 100), now)  # replaying: under its old claim
        now += 1.0
    assert alignment.stalled() == frozenset() and alignment.aligned_until == 100.0


def test_after_a_broker_outage_the_first_reports_leave_none_behind():
    alignment = Alignment(2, since=0.0)
    _report_every(alignment, (0, 1), 0.0, 100.0, every=1.0)
    outage_ends = 100.0 + 3 * STALLED_AFTER_S
    _report_every(alignment, (0,), outage_ends, outage_ends + 5 * RUN_GAP_S, every=1.0)  # 1's come later
    assert alignment.stalled() == frozenset() and alignment.aligned_until == 1100.0


def test_a_partition_ahead_counted_as_stalled_changes_nothing():
    """Held by its read-ahead limit, a partition ahead stops moving; the least read one decides."""
    alignment = Alignment(2, since=0.0)
    alignment.report(0, Progress(1e6), now=0.0)
    _report_every(alignment, (1,), 0.0, 2 * STALLED_AFTER_S, every=10.0)
    assert alignment.stalled() == {0} and alignment.aligned_until == 1000.0 + 2 * STALLED_AFTER_S


def test_a_worker_whose_reports_stop_holds_the_others_back_only_until_it_counts_as_stalled():
    rng = random.Random(3)
    cluster = Cluster(make_config(partitions=PARTITIONS, grace_s=30.0), rng)
    _backlog(cluster, rng)
    for partition in range(PARTITIONS):
        cluster.step(partition, 5)
    cluster.tick()
    for partition in FAST:  # the others' reports read
        cluster.step(partition, 0)
    cluster.paused = set(SLOW)  # their worker hangs: no more reads, no more reports
    fast = {p: cluster.procs[p] for p in FAST}
    for _ in range(50):
        limits = read_ahead_of(fast, {p: cluster.end_known_at[p] for p in FAST}, cluster.clock)
        for partition in FAST:
            cluster.step(partition, 40, limits[partition])
        cluster.tick()
    assert all(limit < math.inf for p, limit in limits.items() if p in FAST)  # held at the slow ones' reads
    assert max(cluster.procs[p].read_through for p in FAST) < max(cluster.procs[p].read_through for p in SLOW) + 3600
    cluster.clock += STALLED_AFTER_S + 1
    limits = read_ahead_of(fast, {p: cluster.end_known_at[p] for p in FAST}, cluster.clock)
    # Only the fast worker's own partitions align it now: the one behind runs free, the other can read on.
    assert math.inf in [limits[p] for p in FAST]
    assert all(limits[p] > cluster.procs[p].read_through for p in FAST)
    assert all(limits[p] == math.inf for p in SLOW)


def test_series_waiting_for_alignment_from_a_cold_start_are_judged_once_it_comes():
    """Before any partition has reported (a cold start), a series holds what it reads open: every
    evaluator takes its measurements, and closes them once the reports come."""
    policy = Policy("co-p95", "checkout", "http", "p95", 60, "above", warning=100.0, critical=400.0)
    config = make_config(partitions=2, grace_s=30.0, slos=(checkout_slo(),), policies=(policy,))
    cluster = Cluster(config, random.Random(1))
    t0 = (START - 3600) // 60 * 60
    items = [{"service": "checkout", "metric": "http", "ts": t0 + i, "ok": i % 50 != 0, "value": 50.0 + i % 500}
             for i in range(1800)]
    for first in range(0, len(items), 30):
        cluster.append(first // 30 % 2, orjson.dumps(items[first:first + 30]))
    for partition in range(2):
        while cluster.step(partition, 5):  # no progress reported: everything waits
            pass
    assert cluster.sli == [] and cluster.deadletter == []
    cluster.append(0, orjson.dumps({"service": "checkout", "metric": "http", "ts": t0 + 2400, "ok": True}))
    cluster.drain()
    cluster.settle()
    assert cluster.deadletter == []
    windows = {key: n for key, n in cluster.windows().items() if key[1] < t0 + 1800}
    assert windows == truth_of(items)


def _policy_alerts(partitions: int, chunk: int) -> list[tuple[str, str]]:
    """Two hours of one request a second and a latency every 10 s, two slow minutes in the middle,
    written at once (keyed, to one partition) before a cold start, then read ``chunk`` records at a
    time: the policy's alerts, in order."""
    policy = Policy("co-p99", "checkout", "latency_ms", "p99", 60, "above", warning=300.0, critical=800.0,
                    consecutive=2)
    cluster = Cluster(make_config(partitions=partitions, grace_s=2.0, policies=(policy,)), random.Random(5))
    t0 = (START - 3 * 3600) // 60 * 60
    for t in range(0, 7200, 10):
        value = 1000.0 if 3600 <= t < 3720 else 120.0
        cluster.append(0, orjson.dumps({"service": "checkout", "metric": "latency_ms", "ts": t0 + t, "value": value}))
    while any(cluster.read[p] < len(cluster.logs[p]) for p in range(partitions)):
        for partition in range(partitions):
            cluster.step(partition, chunk)
        cluster.tick()
    cluster.clock += 1  # past the clock slack of every partition's reports
    for _ in range(2):  # every report read
        cluster.drain()
        cluster.tick()
    return [(a["type"].rsplit(".", 1)[1], a["data"]["labels"]["severity"]) for a in cluster.alerts]


def test_a_backlog_released_at_once_by_alignment_is_judged_window_by_window():
    """Nothing closes before every partition has reported; then two hours close at once, and the
    policy still sees its two slow minutes in a row, as one partition read live would."""
    expected = _policy_alerts(partitions=1, chunk=1)
    assert ("firing", "critical") in expected and ("resolved", "critical") in expected
    assert _policy_alerts(partitions=PARTITIONS, chunk=5000) == expected


def test_a_series_holding_more_open_than_the_changelog_takes_waits_unwritten_holding_the_offset_back():
    """A partition nobody reads yet: the other's series hold hours open, and their records grow past
    ``max_output_bytes``. They are not written (the changelog would refuse them), and the committed
    offset stays before their changes, so a successor replays them; once the lagging partition is
    read and their windows close, they are written and the offset moves on."""
    cluster = Cluster(make_config(partitions=2, grace_s=30.0, max_output_bytes=1 << 16), random.Random(2))
    t0 = (START - 8 * 3600) // 60 * 60
    rng = random.Random(4)
    for minute in range(6 * 60):
        cluster.append(0, orjson.dumps([{"service": "svc", "metric": "http", "ok": True, "ts": t0 + minute * 60 + s,
                                         "value": rng.lognormvariate(4, 0.5)} for s in range(60)]))
    cluster.append(1, orjson.dumps({"service": "svc", "metric": "http", "ok": True, "ts": t0}))
    cluster.paused = {1}
    while cluster.step(0, 20):
        pass
    owner = next(proc for proc in cluster.procs if proc.series)
    writes, safe = owner.checkpoint(final=True)
    written = dict(writes)
    assert not any("svc" in key for key in written)  # too large: not written
    assert safe.measurements < owner.applied_offset or safe.repartition < owner.repartition_offset
    cluster.paused = set()
    cluster.clock += 1
    cluster.settle()
    writes, safe = owner.checkpoint(final=True)
    record = next(value for key, value in writes if "svc" in key)
    assert len(record) < 1 << 16
    assert (safe.measurements, safe.repartition) == (owner.applied_offset, owner.repartition_offset)
