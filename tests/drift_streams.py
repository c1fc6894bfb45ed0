"""Seeded SLI streams for drift tests: latency with a ±40% daily cycle and lognormal noise, one
error in a thousand; "stepped" doubles its latency at ``STEP_AT``, "steady" never changes."""

import time

import numpy as np

T0 = (int(time.time()) - 5 * 86400) // 86400 * 86400  # in the past: producers' clocks are checked
DAY = 86400
STEP_AT = T0 + 3 * DAY + 7 * 3600  # a morning, after three days of history
SPAN = 4 * DAY
PER_MINUTE = 6
SERVICES = ("steady", "stepped")


def seasonal_items(seed: int = 7) -> list[dict]:
    """The measurements of both services, in event-time order."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(SPAN // 60 * PER_MINUTE) * (60 / PER_MINUTE)
    cycle = 1 + 0.4 * np.sin(2 * np.pi * (ts - T0) / DAY)
    items = []
    for service in SERVICES:
        level = cycle * np.where((service == "stepped") & (ts >= STEP_AT), 2.0, 1.0)
        values = 100 * level * rng.lognormal(0, 0.3, ts.size)
        oks = rng.random(ts.size) > 0.001
        items += [{"service": service, "metric": "latency_ms", "value": round(float(v), 3), "ok": bool(o),
                   "ts": float(t)} for v, o, t in zip(values, oks, ts)]
    items.sort(key=lambda m: m["ts"])
    return items
