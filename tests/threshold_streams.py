"""Latency of one service for the threshold-model tests: lognormal around 100 ms with a ±30% daily
cycle; a policy whose warning is too tight and critical too loose, and an SLO whose threshold is
too loose."""

import numpy as np
import orjson

from slostream.core.policy import Policy
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL

T0 = 1_699_833_600  # a Monday, 00:00 UTC
WINDOW = 300
POLICY = Policy("api-p95", "api", "latency_ms", "p95", WINDOW, "above", warning=100.0, critical=400.0)
POLICY_YAML = """
policies:
  - name: api-p95
    service: api
    metric: latency_ms
    aggregate: p95
    window: 5m
    direction: above
    warning: 100
    critical: 400
"""


def latency_items(days: int) -> list[dict]:
    rng = np.random.default_rng(11)
    ts = T0 + 15.0 * np.arange(days * 86400 // 15) + rng.uniform(0, 1, days * 86400 // 15)
    cycle = 1 + 0.3 * np.sin(2 * np.pi * ((ts % 86400) / 3600 - 8) / 24)
    values = 100 * cycle * rng.lognormal(0, 0.25, ts.size)
    return [{"service": "api", "metric": "latency_ms", "ts": float(t), "value": float(v)} for t, v in zip(ts, values)]


SLO_YAML = """
slos:
  - name: api-fast
    service: api
    metric: latency_ms
    objective: 0.99
    window: 28d
    good: {value_le: 300}
"""


def latency_bursts(days: float, per_burst: int = 8, hosts: int = 1, shift_at_day: float | None = None,
                   shift: float = 1.5) -> list[dict]:
    """``per_burst`` requests every two minutes, over ``hosts`` hosts (label ``host``); from
    ``shift_at_day`` on, ``shift`` times slower for good. Bursts, because an SLO judges where a batch enters a
    new bucket, and a request every few seconds would make the tests slow, not stronger."""
    rng = np.random.default_rng(12)
    starts = T0 + 120.0 * np.arange(int(days * 720))
    ts = (starts[:, None] + np.linspace(0, 5, per_burst)[None, :]).ravel()
    cycle = 1 + 0.3 * np.sin(2 * np.pi * ((ts % 86400) / 3600 - 8) / 24)
    factor = np.where(ts >= T0 + 86400 * shift_at_day, shift, 1.0) if shift_at_day is not None else 1.0
    values = 100 * cycle * factor * rng.lognormal(0, 0.25, ts.size)
    return [{"service": "api", "metric": "latency_ms", "ts": float(t), "value": float(v),
             **({"labels": {"host": f"h{k % hosts}"}} if hosts > 1 else {})}
            for k, (t, v) in enumerate(zip(ts.tolist(), values.tolist()))]


def records_of(items: list[dict], per_record: int = 500) -> list[SourceRecord]:
    """``items`` as the records of one partition, ``per_record`` measurements each."""
    return [SourceRecord("m", 0, n, items[min(i + per_record, len(items)) - 1]["ts"], None,
                         orjson.dumps(items[i:i + per_record]))
            for n, i in enumerate(range(0, len(items), per_record))]


def recommendations_of(proc: PartitionProcessor, records: list[SourceRecord]) -> list[dict]:
    """The recommendation and score events of feeding ``records`` to ``proc`` one by one."""
    return [event for record in records for _, event in proc.process([record], WALL).recommendations]


def restored_half_way(config, records: list[SourceRecord]) -> list[dict]:
    """The recommendation events of ``records`` through a processor checkpointed after 80% of
    them and restored from its writes for the rest."""
    proc = PartitionProcessor(0, config, WALL)
    before = recommendations_of(proc, records[:len(records) * 8 // 10])
    writes, (offset, _) = proc.checkpoint(final=True)
    restored = PartitionProcessor.restore(0, config, dict(writes).items(), WALL)
    return before + recommendations_of(restored, records[offset + 1:])
