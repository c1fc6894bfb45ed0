"""An SLO fed one measurement per record through the real partition pipeline, shared by the SLO
tests."""

from __future__ import annotations

import datetime as dt

import orjson

from slostream.core.budget import default_tiers
from slostream.core.objectives import GoodRule, Slo, SloWindow
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config

T0 = 1_700_000_000 - 1_700_000_000 % 86400  # a UTC midnight


def checkout_slo(**changes) -> Slo:
    base = dict(name="co", service="checkout", metric="http", objective=0.999, window=SloWindow(rolling_s=30 * 86400),
                good=GoodRule("ok"), tiers=default_tiers(30 * 86400))
    base.update(changes)
    return Slo(**base)


def slo_processor(*slos, **config) -> PartitionProcessor:
    return PartitionProcessor(0, make_config(slos=slos, grace_s=2, **config), now=WALL)


class Feed:
    """One measurement per record through the real partition pipeline."""

    def __init__(self, proc: PartitionProcessor):
        self.proc = proc
        self.offset = 0
        self.alerts: list[dict] = []

    def send(self, ts: float, ok: bool | None = None, value: float | None = None, metric: str = "http") -> None:
        doc = {"service": "checkout", "metric": metric, "ts": ts}
        if ok is not None:
            doc["ok"] = ok
        if value is not None:
            doc["value"] = value
        out = self.proc.process([SourceRecord("m", 0, self.offset, ts, b"checkout", orjson.dumps(doc))], WALL)
        self.offset += 1
        self.alerts.extend(event for _, event in out.alerts)

    def times(self, kind: str, severity: str) -> list[float]:
        return [dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() - T0
                for e in self.alerts if e["type"] == f"slostream.alert.{kind}"
                and e["data"]["labels"]["severity"] == severity and "escalated_from" not in e["data"]["labels"]]
