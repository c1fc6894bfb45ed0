"""Ten thousand series through the real broker: every window once, every count exact."""

import random
import re
import time

import orjson
import pytest

from tests.integration.test_real_producers import PARTITIONS, _send, _sli, _truth

SERIES = 10_000
T0 = 1_790_000_000 // 60 * 60
COUNTERS = re.compile(rb"^(slostream_(?:ingest_[a-z_]+|sli_events|checkpoints)_total)(\{[^}]*\})? ([0-9.e+]+)$", re.M)


def _differences(events: dict, truth: dict) -> str:
    """A short account of how two {(service, window): count} maps differ, never the maps themselves."""
    missing = sorted(set(truth) - set(events))
    extra = sorted(set(events) - set(truth))
    wrong = sorted(k for k in set(truth) & set(events) if truth[k] != events[k])
    return (f"{len(missing)} windows missing {missing[:5]}, {len(extra)} extra {extra[:5]}, "
            f"{len(wrong)} with a wrong count {[(k, events[k], truth[k]) for k in wrong[:5]]}")


def test_ten_thousand_unkeyed_series_give_exact_windows(kafka, make_worker):
    """Unkeyed, zstd-compressed records of 1,000 measurements from a fleet of 10,000 series, one
    measurement per series every 20 s over three minutes; the idle tick closes the last windows."""
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS), SLOSTREAM_GRACE_S="1",
                         SLOSTREAM_IDLE_AFTER_S="2").start()
    rng = random.Random(5)
    items = [{"service": f"svc-{i}", "metric": "latency_ms", "value": round(rng.lognormvariate(4, 0.5), 3),
              "ok": rng.random() > 0.1, "ts": T0 + step * 20 + i % 20}
             for step in range(9) for i in range(SERIES)]
    records = [(None, orjson.dumps(items[i:i + 1000])) for i in range(0, len(items), 1000)]
    _send(kafka.bootstrap, f"{make_worker.prefix}measurements", records, compression="zstd")
    truth = _truth(items)
    assert len(truth) == 3 * SERIES
    started = time.monotonic()
    events = _sli(kafka.bootstrap, make_worker.prefix, truth, timeout=240)
    waited = time.monotonic() - started
    if events != truth:
        counters = b"; ".join(b"%s%s=%s" % m.groups(b"") for m in COUNTERS.finditer(worker.get("/metrics")[1]))
        pytest.fail(f"after {waited:.0f} s: {_differences(events, truth)}; worker counters: {counters.decode()}; "
                    f"log {worker.log_path}")
