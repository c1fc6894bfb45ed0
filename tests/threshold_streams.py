"""Latency of one service for the threshold-model tests: a request every 15 s, lognormal around
100 ms with a ±30% daily cycle, and a policy whose warning is too tight and critical too loose."""

import numpy as np

from slostream.core.policy import Policy

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
