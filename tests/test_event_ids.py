"""Events sharing an id are identical. The same log read in chunks of any size makes the same ids,
and every SLI window (calibration included) and breach byte for byte the same under its id (drift detections:
``test_drift_pipeline``, two days to learn the hours are too slow here). An alert
is judged where a batch ends, so its figures depend on the cut; a crash (a SIGKILL between
sending and checkpointing) that replays it sends the alert logged before it was first sent."""

import random
from collections import Counter

import orjson
import pytest

from slostream.core.policy import Policy
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config
from tests.slo_feed import T0, checkout_slo

SECONDS = 50 * 60
INCIDENT = (10 * 60, 17 * 60)  # half the requests fail, and latency doubles
CONFIG = make_config(
    grace_s=2.0, slos=(checkout_slo(),),
    policies=(Policy("co-p95", "checkout", "http", "p95", 300, "above", warning=90.0, critical=140.0),))
ALERT = "slostream.alert."
pytestmark = pytest.mark.slow


def _records() -> list[SourceRecord]:
    """Five requests a second for 50 minutes, with an incident, and a model's scores; 10 to an
    unkeyed record."""
    rng = random.Random(7)
    items = []
    for i in range(SECONDS * 5):
        offset = i / 5 + rng.random() * 0.2
        incident = INCIDENT[0] <= offset < INCIDENT[1]
        items.append({"service": "checkout", "metric": "http", "ts": T0 + offset,
                      "ok": rng.random() > (0.5 if incident else 0.0005),
                      "value": rng.lognormvariate(4.0, 0.3) * (2.0 if incident else 1.0)})
        if i % 5 == 0:  # a model's click probability and whether the click came: calibration sums
            probability = rng.random()
            items.append({"service": "checkout", "metric": "ranker", "ts": T0 + offset, "value": probability,
                          "outcome": int(rng.random() < probability)})
    return [SourceRecord("m", 0, n, items[i + 9]["ts"], None, orjson.dumps(items[i:i + 10]))
            for n, i in enumerate(range(0, len(items), 10))]


def _read(records: list[SourceRecord], rng: random.Random, max_chunk: int, crash_chance: float = 0.0) -> list[dict]:
    """Read in chunks of 1 to ``max_chunk`` records, a fifth of a second of wall time each. With
    ``crash_chance``: checkpoint now and then, and after some chunks crash and restore the last
    checkpoint, which replays everything read since; the state holds what a worker made durable
    (the checkpoints, and the alert log before its alerts were sent)."""
    proc, store, committed, events, i, now = PartitionProcessor(0, CONFIG, WALL), {}, 0, [], 0, WALL
    while i < len(records):
        size = rng.randint(1, max_chunk)
        now += 0.2
        out = proc.process(records[i:i + size], now)
        store.update((key, value) for _, key, value in out.alert_log)
        events += [event for part in (out.sli, out.breaches, out.drift, out.alerts) for _, event in part]
        i += size
        if not crash_chance:
            continue
        if rng.random() < 0.3:
            writes, (offset, _) = proc.checkpoint()
            store.update(writes)
            committed = offset + 1
        elif rng.random() < crash_chance:
            proc = PartitionProcessor.restore(0, CONFIG, ((k, v) for k, v in store.items() if v is not None), now)
            i = committed
    return events


@pytest.fixture(scope="module")
def readings() -> dict[str, list[dict]]:
    records = _records()
    return {"one by one": _read(records, random.Random(0), 1), "chunks": _read(records, random.Random(1), 8),
            "crashes": _read(records, random.Random(2), 8, crash_chance=0.05),
            "more crashes": _read(records, random.Random(3), 4, crash_chance=0.1)}


def _encoded(event: dict) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def test_every_reading_makes_the_same_windows_and_breaches(readings):
    """Alerts are left out: near a tier's edge, whether a condition holds where a batch ends
    depends on the cut (see the module)."""
    ids = {name: {event["id"] for event in events if not event["type"].startswith(ALERT)}
           for name, events in readings.items()}
    assert all(found == ids["one by one"] for found in ids.values())
    types = Counter(event["type"] for event in readings["one by one"])
    assert {"slostream.sli.window", "slostream.breach.started", "slostream.breach.recovered",
            f"{ALERT}firing", f"{ALERT}resolved"} <= set(types), types
    assert any("calibration" in event["data"] for event in readings["one by one"])
    for name in ("one by one", "chunks"):  # no crash: nothing twice
        assert len(readings[name]) == len({event["id"] for event in readings[name]})


def test_windows_and_breaches_sharing_an_id_are_identical_however_the_log_is_cut(readings):
    by_id: dict[str, bytes] = {}
    for events in readings.values():
        for event in events:
            if not event["type"].startswith(ALERT):
                assert by_id.setdefault(event["id"], _encoded(event)) == _encoded(event), event


def test_an_alert_sent_again_after_a_crash_is_identical(readings):
    repeated = 0
    for name in ("crashes", "more crashes"):
        by_id: dict[str, bytes] = {}
        for event in readings[name]:
            encoded = _encoded(event)
            if event["id"] in by_id:
                assert by_id[event["id"]] == encoded, event
                repeated += event["type"].startswith(ALERT)
            by_id[event["id"]] = encoded
    assert repeated > 0  # the crashes did replay alerts
