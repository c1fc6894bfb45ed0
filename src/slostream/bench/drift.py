"""What one drift watch holds (``drift_state``). Drift's quality is ``drift_scenarios`` (and its
pipeline sample) and ``nab``."""

from __future__ import annotations

import tracemalloc

import numpy as np

from slostream.core.drift import DriftWatch

DAY = 86400
T0 = 1_700_006_400 // DAY * DAY  # a Wednesday, midnight UTC
STATE_WATCHES = 50


def drift_state() -> dict:
    """What one watched aggregate holds after a week of one-minute windows of a seasonal p95: its
    state's bytes (``to_state``, as written to the changelog) and the Python memory it holds
    (tracemalloc)."""
    rng = np.random.default_rng(5)
    ts = T0 + np.arange(7 * 1440) * 60.0
    values = (100 * (1 + 0.4 * np.sin(2 * np.pi * ts / DAY)) * rng.lognormal(0, 0.3, ts.size)).tolist()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    watches = [DriftWatch() for _ in range(STATE_WATCHES)]
    for watch in watches:
        for t, v in zip(ts.tolist(), values):
            watch.update(t, v)
    held = (tracemalloc.get_traced_memory()[0] - before) / STATE_WATCHES
    tracemalloc.stop()
    return {"state_bytes_per_aggregate": len(watches[0].to_state()), "held_bytes_per_aggregate": round(held)}
