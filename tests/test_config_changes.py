"""State across configuration changes and evictions: what is no longer configured, or no longer
held, leaves no firing alert and no state key behind (issue 25, point 7)."""

import orjson

from slostream.core.objectives import GoodRule, Policy
from slostream.pipeline.evaluators.thresholds import STATE_VERSION as THRESHOLDS_VERSION
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.state_keys import SEP, model_chunk_key, model_report_key, slo_model_key
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config
from tests.slo_feed import T0, checkout_slo

SLO = checkout_slo()
POLICY = Policy("checkout-slow", "checkout", "http", "mean", 60, "above", warning=100.0, critical=500.0)


class Run:
    """One processor fed one measurement per record, its checkpoints kept as a compacted changelog."""

    def __init__(self, config, proc=None):
        self.proc = proc or PartitionProcessor(0, config, now=WALL)
        self.offset = self.proc.applied_offset + 1
        self.changelog: dict[str, bytes | None] = {}
        self.alerts: list[dict] = []
        self.out = []

    def send(self, ts: float, labels: dict | None = None, value: float = 1000.0) -> None:
        doc = {"service": "checkout", "metric": "http", "ts": ts, "ok": False, "value": value, "labels": labels or {}}
        self.collect(self.proc.process([SourceRecord("m", 0, self.offset, ts, b"checkout", orjson.dumps(doc))], WALL))
        self.offset += 1

    def tick(self, now: float) -> None:
        self.collect(self.proc.tick(now))

    def collect(self, out) -> None:
        self.out.append(out)
        self.alerts += [event for _, event in out.alerts]

    def checkpoint(self) -> None:
        writes, _ = self.proc.checkpoint(final=True)
        self.changelog.update(writes)

    def restart(self, config) -> "Run":
        """A new processor restored from the changelog under ``config``, checkpointed once after
        its first tick, on the same changelog."""
        restored = Run(config, PartitionProcessor.restore(0, config, self.changelog.items(), now=WALL))
        restored.changelog = self.changelog
        restored.tick(WALL)
        restored.checkpoint()
        return restored

    def firing(self) -> set[str]:
        """Alert names firing, by the events sent."""
        state: dict[str, str] = {}
        for event in self.alerts:
            state[event["data"]["fingerprint"]] = event["type"]
        names = {e["data"]["fingerprint"]: e["data"]["labels"]["alertname"] for e in self.alerts}
        return {names[fp] for fp, kind in state.items() if kind == "slostream.alert.firing"}

    def live_keys(self, kind: str) -> list[str]:
        return [key for key, value in self.changelog.items() if value is not None and key.split(SEP)[1] == kind]


def _burning(run: Run, minutes: int = 20) -> None:
    for i in range(minutes * 6):
        run.send(T0 + i * 10)


def test_a_removed_slo_and_policy_resolve_their_alerts_and_lose_their_state_keys():
    config = make_config(slos=(SLO,), policies=(POLICY,), grace_s=2)
    run = Run(config)
    _burning(run)
    run.checkpoint()
    assert run.firing() == {"SLOErrorBudgetBurn", "ThresholdBreach"}
    assert run.live_keys("S") and run.live_keys("s")
    # Threshold models of the SLO and of the policy's series, as kept (unread once unconfigured).
    series = run.proc.series[("checkout", "http")].key
    run.changelog[slo_model_key(0, SLO.name)] = b'{"v": 1, "model": {}}'
    run.changelog[model_chunk_key(0, POLICY.name, 0, series)] = b"chunk"
    run.changelog[model_report_key(0, POLICY.name, series)] = orjson.dumps({"v": THRESHOLDS_VERSION})

    after = run.restart(make_config(grace_s=2))
    resolved = [e for e in after.alerts if e["type"] == "slostream.alert.resolved"]
    assert {e["data"]["labels"]["alertname"] for e in resolved} == {"SLOErrorBudgetBurn", "ThresholdBreach"}
    assert all(e["data"]["status"] == "resolved" and e["data"]["endsAt"] >= e["data"]["startsAt"]
               for e in resolved)
    run.alerts += after.alerts
    assert run.firing() == set()
    assert after.proc.alerting.book.alerts == {}
    # Every key of the SLO is deleted; a second restart finds nothing of it and sends nothing.
    assert after.live_keys("S") == after.live_keys("s") == after.live_keys("t") == []
    assert after.live_keys("m") == after.live_keys("r") == []
    again = after.restart(make_config(grace_s=2))
    assert again.alerts == []


def test_a_changed_slo_rule_deletes_the_slots_counted_under_the_old_one():
    run = Run(make_config(slos=(SLO,), grace_s=2))
    _burning(run, minutes=5)
    run.checkpoint()
    old_slots = set(run.live_keys("s"))
    assert old_slots
    changed = checkout_slo(good=GoodRule("value_le", 300.0))
    after = run.restart(make_config(slos=(changed,), grace_s=2))
    assert not old_slots & set(after.live_keys("s"))


def test_an_evicted_series_resolves_its_alerts():
    config = make_config(policies=(POLICY,), grace_s=2, series_ttl_s=100.0)
    run = Run(config)
    _burning(run, minutes=5)
    assert run.firing() == {"ThresholdBreach"}
    run.tick(WALL + 50.0)
    assert run.firing() == {"ThresholdBreach"}
    run.tick(WALL + 200.0)  # quiet for the time to live: evicted
    assert sum(out.evicted for out in run.out) == 1
    assert run.firing() == set()
    assert run.proc.alerting.book.alerts == {}


def test_changed_label_keys_drop_the_series_kept_under_the_old_ones_apart():
    config = make_config(policies=(POLICY,), grace_s=2, label_keys=("region",))
    run = Run(config)
    for i in range(30):
        for region in ("eu", "us"):
            run.send(T0 + i * 10, {"region": region})
    run.checkpoint()
    assert len(run.proc.series) == 2
    assert len([e for e in run.alerts if e["type"] == "slostream.alert.firing"]) == 2

    after = run.restart(make_config(policies=(POLICY,), grace_s=2))  # label_keys dropped
    assert sum(out.dropped_label_keys for out in after.out) == 2
    assert after.proc.series == {}
    assert after.live_keys("h") == []
    run.alerts += after.alerts
    assert run.firing() == set()
    # New measurements make one series of the new shape, counted from scratch.
    after.send(T0 + 400, {"region": "eu"})
    assert list(after.proc.series) == [("checkout", "http")]
