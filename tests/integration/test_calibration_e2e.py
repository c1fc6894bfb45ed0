"""Calibration through the real broker: a model's predictions and outcomes, unkeyed and zstd
compressed, come back as SLI events whose calibration equals numpy's, and on /metrics."""

import re
import time

import numpy as np
import orjson

from tests.calibration_reference import brute_force_calibration
from tests.conftest import consume
from tests.integration.streams import send_records


def test_a_model_s_windows_carry_numpy_s_calibration_through_kafka(kafka, make_worker):
    rng = np.random.default_rng(9)
    start = (int(time.time()) - 3 * 3600) // 60 * 60
    ts = start + np.arange(40 * 30) * 2.0  # 40 minutes, 30 a minute: an unkeyed backlog within the source skew
    predicted = rng.random(ts.size)
    predicted[::50] = -0.2  # out of range
    outcomes = (rng.random(ts.size) < np.clip(predicted + 0.1, 0, 1)).astype(int)
    items = [{"service": "ranker", "metric": "score", "value": round(float(p), 4), "outcome": int(o), "ts": float(t)}
             for p, o, t in zip(predicted, outcomes, ts)]
    worker = make_worker(SLOSTREAM_GRACE_S="5", SLOSTREAM_IDLE_AFTER_S="2").start()
    records = [(None, orjson.dumps(items[i:i + 100])) for i in range(0, len(items), 100)]
    send_records(kafka.bootstrap, f"{make_worker.prefix}measurements", records, compression="zstd")
    windows = {int(t // 60 * 60) for t in ts}

    def complete(events):
        return windows <= {e["data"]["window_start"] for e in events}

    events = {e["data"]["window_start"]: e for e in consume(kafka.bootstrap, f"{make_worker.prefix}sli", complete,
                                                            timeout=120)}
    assert windows <= set(events)
    for window in sorted(windows):
        chosen = (ts // 60 * 60) == window
        ece, brier, out = brute_force_calibration(predicted.round(4)[chosen], outcomes[chosen], 10)
        calibration = events[window]["data"]["calibration"]
        assert calibration["out_of_range"] == out and calibration["n"] == chosen.sum() - out
        assert abs(calibration["ece"] - ece) < 1e-9 and abs(calibration["brier"] - brier) < 1e-9
    status, body = worker.get("/api/policies")
    assert status == 200 and orjson.loads(body) == {"breaching": [], "configured": [], "next": None}
    status, body = worker.get("/api/drift")
    assert status == 200 and orjson.loads(body) == {"detections": [], "in_progress": [], "next": None}
    page = worker.get("/metrics")[1].decode()
    assert re.search(r'^slostream_sli_window_ece\{metric="score",service="ranker"\} [0-9.e-]+$', page, re.M)
    rejected = re.findall(r"^slostream_ingest_measurements_rejected_total\{[^}]*\} (\S+)$", page, re.M)
    assert rejected and sum(map(float, rejected)) == 0  # out-of-range values are counted, not dead-lettered
