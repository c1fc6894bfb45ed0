"""What a worker keeps per service or series goes with the series: a run that creates and evicts
many series leaves nothing of them behind (issue 25, point 9)."""

import orjson

from slostream.core.objectives import Policy
from slostream.io.ingest import DriftTally
from slostream.pipeline.ownership import Owners
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config

T0 = 1_800_000_000 // 60 * 60
ROUNDS, SERVICES = 4, 300


def test_series_created_and_evicted_round_after_round_leave_nothing_behind():
    policies = tuple(Policy(f"slow-{r}-{n}", f"svc-{r}-{n}", "http", "mean", 60, "above", warning=100.0,
                            critical=None) for r in range(ROUNDS) for n in range(SERVICES))
    config = make_config(grace_s=2.0, series_ttl_s=100.0, policies=policies)
    proc = PartitionProcessor(0, config, now=WALL)
    offset, retired, owners_used, fired = 0, [], [], 0
    for r in range(ROUNDS):
        now = WALL + r * 1000.0
        records = []
        for t in range(0, 180, 10):  # three minutes of a slow service each: its policy fires
            batch = [{"service": f"svc-{r}-{n}", "metric": "http", "value": 500.0, "ts": T0 + r * 1000 + t}
                     for n in range(SERVICES)]
            records.append(SourceRecord("m", 0, offset, T0 + r * 1000 + t, None, orjson.dumps(batch)))
            offset += 1
        out = proc.process(records, now)
        out.extend(proc.tick(now + 10))
        fired += sum(e["type"] == "slostream.alert.firing" for _, e in out.alerts)
        out = proc.tick(now + 500)  # quiet past the time to live: every series of the round evicted
        retired += out.retired_groups
        assert out.evicted == SERVICES
        assert sum(e["type"] == "slostream.alert.resolved" for _, e in out.alerts) == SERVICES
        assert proc.series == {} and proc.alerting.book.alerts == {}
        owners_used.append(proc.store.owner_count)
    assert fired == ROUNDS * SERVICES
    assert sorted(retired) == sorted((f"svc-{r}-{n}", "http") for r in range(ROUNDS) for n in range(SERVICES))
    assert proc._held_of_group == {}
    assert owners_used == [SERVICES] * ROUNDS  # window owners are reused, not grown


def test_drift_tallies_go_with_their_series_group():
    tally = DriftTally()
    for n in range(1000):
        for aggregate in ("p95", "error_ratio"):
            tally.add({"service": f"svc-{n}", "metric": "http", "aggregate": aggregate, "direction": "up",
                       "changed_at": float(n)})
    assert len(tally.detections()) == len(tally.changes()) == 2000
    tally.forget([(f"svc-{n}", "http") for n in range(1000)])
    assert tally.groups == {}


def test_the_owner_memo_is_bounded():
    owners = Owners(4)
    for n in range(Owners.MEMO_LIMIT + 10):
        owners(f"svc-{n}")
    assert len(owners) <= Owners.MEMO_LIMIT
