"""Drift through the partition pipeline, request by request: the sample that shows the scenario
suite (``drift_scenarios``, which draws each window's aggregates directly) agrees with the whole
path. Seeded streams with a ±40% daily cycle, stationary or with a step, run in event time
through ``PartitionProcessor`` with its default drift settings."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import orjson

from slostream.config import Settings, pipeline_config
from slostream.core.drift import DriftWatch
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord

DAY = 86400
T0 = 1_700_006_400 // DAY * DAY  # a Wednesday, midnight UTC
STREAMS = 6  # per scenario
STATIONARY_DAYS = 9
STEP_DAY = 3  # steps come on the fourth day, at a seeded time of it
AFTER_STEP_S = 6 * 3600
LATENCY_PER_MINUTE = 60  # a service at one request a second
REQUESTS_PER_S = 10


def _latency_stream(rng: np.random.Generator, days: float, step_at: float | None, factor: float) -> list[dict]:
    ts = T0 + np.arange(int(days * 1440 * LATENCY_PER_MINUTE)) * (60 / LATENCY_PER_MINUTE)
    level = (1 + 0.4 * np.sin(2 * np.pi * ts / DAY)) * np.where(step_at is not None and ts >= (step_at or 0), factor, 1)
    values = np.round(100 * level * rng.lognormal(0, 0.3, ts.size), 3)
    return [{"metric": "latency_ms", "value": v, "ts": t} for v, t in zip(values.tolist(), ts.tolist())]


def _error_stream(rng: np.random.Generator, days: float, step_at: float) -> list[dict]:
    ts = T0 + np.arange(int(days * DAY * REQUESTS_PER_S)) / REQUESTS_PER_S
    ok = rng.random(ts.size) >= np.where(ts >= step_at, 0.01, 0.001)
    return [{"metric": "http", "ok": o, "ts": t} for o, t in zip(ok.tolist(), ts.tolist())]


def _run(streams: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Every stream through one partition in event time: its drift detections."""
    for service, items in streams.items():
        for item in items:
            item["service"] = service
    merged = sorted((m for items in streams.values() for m in items), key=lambda m: m["ts"])
    wall = time.time()  # the pipeline's wall clock: after all of the (past) data
    proc = PartitionProcessor(0, pipeline_config(Settings(partitions=1, grace_s=5.0)), wall)
    detections: dict[str, list[dict]] = {s: [] for s in streams}
    for offset, start in enumerate(range(0, len(merged), 2000)):
        chunk = merged[start:start + 2000]
        out = proc.process([SourceRecord("m", 0, offset, chunk[-1]["ts"], None, orjson.dumps(chunk))], wall)
        for _, event in out.drift:
            detections[event["data"]["service"]].append(event["data"])
    return detections


def _step_figures(delays: list[float | None]) -> dict:
    found = [d for d in delays if d is not None]
    return {"detected": round(len(found) / len(delays), 3),
            "median_delay_min": round(float(np.median(found)) / 60, 1) if found else None}


def drift_quality(streams: int = STREAMS) -> dict:
    rng = np.random.default_rng(11)
    figures: dict = {"streams_per_scenario": streams}
    # Stationary latency: every detection is false.
    stationary = {f"flat-{i}": _latency_stream(rng, STATIONARY_DAYS, None, 1.0) for i in range(streams)}
    detections = _run(stationary)
    series_weeks = streams * STATIONARY_DAYS / 7
    figures["false_per_series_week"] = round(sum(map(len, detections.values())) / series_weeks, 2)
    # Steps in the p95.
    for name, factor in (("step_30", 1.3), ("step_100", 2.0)):
        steps = {f"{name}-{i}": T0 + STEP_DAY * DAY + float(rng.integers(0, DAY // 60)) * 60 for i in range(streams)}
        data = {s: _latency_stream(rng, (at + AFTER_STEP_S - T0) / DAY, at, factor) for s, at in steps.items()}
        detections = _run(data)
        ours = [next((d["detected_at"] - steps[s] for d in detections[s] if d["aggregate"] == "p95"
                      and d["detected_at"] >= steps[s]), None) for s in steps]
        figures[name] = _step_figures(ours)
    # Error ratio 0.1% -> 1% at 10 requests a second, on the fifth day: the baseline needs two, and
    # the two after them are stationary (false detections there count).
    steps = {f"errors-{i}": T0 + 4 * DAY + float(rng.integers(0, DAY // 60)) * 60 for i in range(streams)}
    data = {s: _error_stream(rng, (at + AFTER_STEP_S - T0) / DAY, at) for s, at in steps.items()}
    detections = _run(data)
    ours = [next((d["detected_at"] - steps[s] for d in detections[s] if d["aggregate"] == "error_ratio"
                  and d["detected_at"] >= steps[s]), None) for s in steps]
    figures["error_ratio_step"] = _step_figures(ours)
    judged_weeks = sum(at - T0 - 2 * DAY for at in steps.values()) / (7 * DAY)
    figures["error_ratio_false_per_series_week"] = round(sum(
        d["detected_at"] < steps[s] for s in steps for d in detections[s]) / judged_weeks, 2)
    return figures


STATE_WATCHES = 50


def drift_state() -> dict:
    """What one watched aggregate holds after a week of one-minute windows of a seasonal p95: its
    state's bytes (``to_state``, as written to the changelog) and the Python memory it holds
    (tracemalloc; river's ADWIN keeps its window in Rust, which tracemalloc does not see: about the
    1.5 kB of its part of the state)."""
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
