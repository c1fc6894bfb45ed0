import base64
import random

import numpy as np
import orjson
import pytest

from slostream.core.objectives import Policy
from slostream.core.sketch import QuantileSketch
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.state import series_record
from slostream.pipeline.state_keys import SEP, series_key
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, make_config

T0 = 1_800_000_000 // 60 * 60
CONFIG = make_config(grace_s=5.0, idle_after_s=2.0)


def _records(n_records=400, per_record=5, seed=3, late_every=0):
    rng = random.Random(seed)
    records, truth = [], []
    for offset in range(n_records):
        items = []
        for j in range(per_record):
            ts = T0 + offset * 0.9 + j * 0.01
            if late_every and offset and offset % late_every == 0 and j == 0:
                ts -= 120  # far behind the watermark
            m = {"service": f"s{rng.randrange(3)}", "metric": "lat", "value": round(rng.lognormvariate(3, 1), 3),
                 "ok": rng.random() > 0.1, "ts": ts}
            items.append(m)
            truth.append((offset, m))
        records.append(SourceRecord("m", 0, offset, T0 + 400, None, orjson.dumps(items)))
    return records, truth


def _run(proc, records, chunk, now=WALL):
    sli, dead = [], []
    for i in range(0, len(records), chunk):
        out = proc.process(records[i:i + chunk], now)
        sli += out.sli
        dead += out.deadletter
    return sli, dead


def _by_window(events):
    return {(e["data"]["service"], e["data"]["window_start"]): e["data"] for _, e in events}


def _comparable(events):
    """Events with the mean rounded: float summation order depends on batching."""
    out = []
    for _, event in events:
        data = dict(event["data"])
        data["mean"] = None if data.get("mean") is None else round(data["mean"], 9)
        out.append({**event, "data": data})
    return out


def test_sli_events_equal_brute_force():
    records, truth = _records()
    proc = PartitionProcessor(0, CONFIG, now=WALL)
    sli, dead = _run(proc, records, 37)
    assert dead == []
    got = _by_window(sli)
    horizon = proc.series[("s0", "lat")].windows.closed_until
    expected = {}
    for _, m in truth:
        start = int(m["ts"] // 60 * 60)
        if start + 60 <= horizon:
            expected.setdefault((m["service"], start), []).append(m)
    assert set(got) == set(expected)
    for key, items in expected.items():
        data = got[key]
        values = np.array([m["value"] for m in items])
        assert data["count"] == len(items)
        assert data["ok"] == sum(m["ok"] for m in items)
        assert data["errors"] == sum(not m["ok"] for m in items)
        assert data["error_ratio"] == pytest.approx(data["errors"] / len(items))
        assert data["max"] == values.max() and data["min"] == values.min()
        assert data["mean"] == pytest.approx(values.mean())
        assert data["p99"] == pytest.approx(np.quantile(values, 0.99, method="lower"), rel=0.01)
        assert data["throughput_per_s"] == pytest.approx(len(items) / 60)


def test_event_ids_are_deterministic_and_batching_does_not_matter():
    records, _ = _records(late_every=7)
    a, b = PartitionProcessor(0, CONFIG, WALL), PartitionProcessor(0, CONFIG, WALL)
    sli_a, dead_a = _run(a, records, 1)
    sli_b, dead_b = _run(b, records, 150)
    assert sorted(_comparable(sli_a), key=lambda e: e["id"]) == sorted(_comparable(sli_b), key=lambda e: e["id"])
    assert [e for _, e in dead_a] == [e for _, e in dead_b]
    assert {e["data"]["reason"] for _, e in dead_a} == {"too_late"}
    assert len({e["id"] for _, e in dead_a}) == len(dead_a)


def test_every_measurement_is_either_counted_or_dead_lettered():
    records, truth = _records(late_every=10)
    proc = PartitionProcessor(0, CONFIG, WALL)
    sli, dead = _run(proc, records, 20)
    sli += proc.tick(WALL + 10_000.0).sli  # idle long enough: every window closes
    late = [e["data"] for _, e in dead]
    assert len(late) == len([o for o in range(len(records)) if o and o % 10 == 0])
    assert all(d["reason"] == "too_late" and d["index"] == 0 for d in late)
    assert sum(d["count"] for d in _by_window(sli).values()) + len(late) == len(truth)


def test_idle_tick_closes_a_quiet_series():
    records, _ = _records(n_records=100)
    proc = PartitionProcessor(0, CONFIG, now=WALL + 1000.0)
    sli, _ = _run(proc, records, 100, now=WALL + 1000.0)
    before = len(sli)
    assert proc.tick(WALL + 1001.0).sli == []  # not idle long enough
    out = proc.tick(WALL + 1000.0 + 200.0)
    assert len(out.sli) > 0 and len(sli) == before
    last_ts = T0 + 99 * 0.9
    assert max(e["data"]["window_end"] for _, e in out.sli) > last_ts


@pytest.mark.parametrize("crash_after", [13, 150, 333])
def test_restore_and_replay_gives_exact_counts(crash_after):
    """Crash after an arbitrary record, restore from the last checkpoint, replay from the commit."""
    records, _ = _records()
    reference = PartitionProcessor(0, CONFIG, WALL)
    ref_sli, _ = _run(reference, records, 25)

    proc = PartitionProcessor(0, CONFIG, WALL)
    store: dict[str, bytes] = {}
    emitted = []
    committed = 0
    for i in range(0, crash_after, 25):
        emitted += proc.process(records[i:min(i + 25, crash_after)], WALL).sli
        if i % 50 == 0:
            writes, (offset, _) = proc.checkpoint()
            store.update(writes)
            committed = offset + 1
    # A partial checkpoint: some series written, the partition record not.
    writes = list(proc.checkpoint()[0])
    store.update(dict(writes[: len(writes) // 2]))
    restored = PartitionProcessor.restore(0, CONFIG, store.items(), WALL)
    sli2, dead = _run(restored, records[committed:], 25)
    assert dead == []  # what the restored series hold is skipped, even where its window has closed
    emitted += sli2
    got = _by_window([(None, e) for e in _comparable(emitted)])
    assert got == _by_window([(None, e) for e in _comparable(ref_sli)])


def test_label_keys_split_series_and_other_labels_do_not():
    config = make_config(grace_s=0.0, label_keys=("region",))
    items = [{"service": "api", "metric": "http", "ok": i % 2 == 0, "ts": T0 + i,
              "labels": {"region": "eu" if i % 3 else "us", "pod": f"p{i}"}} for i in range(60)]
    # Each series closes on its own clock: one later measurement per region.
    items += [{"service": "api", "metric": "http", "ok": True, "ts": T0 + 70, "labels": {"region": region}}
              for region in ("eu", "us")]
    proc = PartitionProcessor(0, config, WALL)
    out = proc.process([SourceRecord("m", 0, 0, T0 + 100, None, orjson.dumps(items))], WALL)
    got = {e["data"]["labels"].get("region"): e["data"]["count"] for _, e in out.sli}
    assert got == {"eu": 40, "us": 20}
    assert all(set(e["data"]["labels"]) == {"region"} for _, e in out.sli)


def test_a_rejected_element_is_dead_lettered_alone_and_a_rejected_record_whole():
    """A batched record of many rejected elements must not be copied into every letter: each
    element's letter carries that element; a record rejected whole carries the record, cut."""
    config = make_config(grace_s=5.0, max_deadletter_bytes=100)
    future = [{"service": f"s{i}", "metric": "m", "ok": True, "ts": WALL + 10_000 + i} for i in range(500)]
    good = {"service": "g", "metric": "m", "ok": True, "ts": T0}
    batched = orjson.dumps([good, *future])
    whole = orjson.dumps({"service": "s", "metric": "m", "ok": "yes", "pad": "x" * 300})
    proc = PartitionProcessor(0, config, WALL)
    out = proc.process([SourceRecord("m", 0, 0, T0, None, batched), SourceRecord("m", 0, 1, T0, None, whole)], WALL)
    letters = {(e["data"]["offset"], e["data"]["index"]): e["data"] for _, e in out.deadletter}
    assert len(letters) == len(future) + 1 and out.accepted == 1
    for i, element in enumerate(future, 1):
        letter = letters[(0, i)]
        assert letter["reason"] == "bad_timestamp" and letter["element"] == element
        value = base64.b64decode(letter["value_b64"])
        assert orjson.loads(value) == element and letter["value_size"] == len(value) < 100
    record = letters[(1, None)]
    assert record["reason"] == "wrong_type" and record["value_size"] == len(whole) and record["value_truncated"]
    assert base64.b64decode(record["value_b64"]) == whole[:100]


def test_eviction_deletes_a_quiet_series_and_its_state_restores_exactly():
    config = make_config(grace_s=5.0, idle_after_s=2.0, series_ttl_s=100.0)

    def record(offset, service, ts):
        return SourceRecord("m", 0, offset, ts, None, orjson.dumps({"service": service, "metric": "m", "ok": True,
                                                                    "value": 1.0, "ts": ts}))

    proc = PartitionProcessor(0, config, now=WALL)
    store: dict[str, bytes | None] = {}
    log: list[SourceRecord] = []
    for step in range(30):  # "quiet" sends for 100 s of wall time, "busy" throughout
        now = WALL + step * 10
        batch = [record(len(log), "busy", T0 + step * 10)]
        if step < 10:
            batch.append(record(len(log) + 1, "quiet", T0 + step * 10))
        proc.process(batch, now)
        log += batch
        assert proc.tick(now).evicted == (1 if now == WALL + 190.0 else 0)  # 100 s after its last measurement
        writes, (committed, _) = proc.checkpoint()
        store.update(writes)
    assert [s.service for s in proc.series.values()] == ["busy"]
    assert sum(value is None for value in store.values()) == 1
    restored = PartitionProcessor.restore(0, config, store.items(), now=WALL + 300.0)
    assert restored.process(log[committed + 1:], WALL + 300.0).sli == []  # replayed from the commit: nothing new
    offset = len(log)
    assert restored.series.keys() == proc.series.keys()
    persisted = [series_record(p, p.series[("busy", "m")]) for p in (restored, proc)]
    assert persisted[0] == persisted[1]
    # Both go on alike; the evicted service comes back as a new series with exact windows.
    later = [record(offset + i, service, T0 + 300 + i * 20) for i, service in enumerate(["quiet", "busy"] * 6)]
    outs = [p.process(later, WALL + 300.0).sli + p.tick(WALL + 400.0).sli for p in (proc, restored)]
    assert outs[0] == outs[1]
    quiet = [event["data"]["count"] for _, event in outs[0] if event["data"]["service"] == "quiet"]
    assert quiet == [2, 1, 2, 1]  # 0 and 40 s, 80, 120 and 160, 200: every window, once


def test_a_series_record_of_version_4_restores_the_same_windows_and_clock():
    """Version 4 wrote a series as one JSON object: its windows as version 2 JSON, its clock in the
    header. A worker upgraded in the middle of a window goes on exactly as one that never stopped."""
    def record(offset, values, ts0):
        return SourceRecord("m", 0, offset, ts0, None, orjson.dumps(
            [{"service": "s", "metric": "lat", "value": v, "ok": v < 25, "ts": ts0 + i} for i, v in enumerate(values)]))

    reference = PartitionProcessor(0, CONFIG, WALL)
    reference.process([record(0, [10.0, 20.0, 30.0], T0)], WALL)
    store = dict(reference.checkpoint()[0])
    series = reference.series[("s", "lat")]
    assert series.windows.lengths == {60: True}
    keys = QuantileSketch.positive_keys(np.array([10.0, 20.0, 30.0]), 0.01).tolist()
    store[series_key(0, series.key)] = orjson.dumps({
        "v": 4, "service": "s", "metric": "lat", "labels": {}, "last_report": None, "watches": {}, "reads": [],
        "aligned_ts": None, "clock": [series.max_ts, series.watermark],
        "windows": {"v": 2, "width": 10, "accuracy": 0.01, "closed_until": series.windows.closed_until,
                    "mark": series.windows.mark,
                    "open": [[60, T0, [3, 3, 2, 3, 60.0, 10.0, 30.0], QuantileSketch.sparse_state(keys, 0.01)]]}})
    upgraded = PartitionProcessor.restore(0, CONFIG, store.items(), WALL)
    assert upgraded.series[("s", "lat")].max_ts == series.max_ts
    replay_and_more = [record(0, [10.0, 20.0, 30.0], T0), record(1, [40.0, 5.0], T0 + 50),
                       record(2, [7.0], T0 + 130)]
    outs = [p.process(replay_and_more, WALL).sli + p.tick(WALL + 100.0).sli for p in (reference, upgraded)]
    assert [e["data"]["count"] for _, e in outs[0]] == [5, 1]
    assert outs[0] == outs[1]


@pytest.mark.parametrize("crash_after", [7, 45, 77])
def test_a_series_is_written_when_a_window_completes_and_a_crash_replays_its_other_changes(crash_after):
    """Checkpoints write a series only once something was emitted from it; the offset they commit
    stays before its oldest unwritten change, so a crash and a replay from the commit emit exactly
    what an uninterrupted run emits, breaches of a policy that judges empty windows included."""
    policy = Policy("s0-p99", "s0", "lat", "p99", 60, "above", 50.0, 80.0)
    config = make_config(grace_s=5.0, idle_after_s=30.0, policies=(policy,))
    rng = random.Random(5)
    log = []
    for step in range(120):  # a batch per 5 s; each of 12 series sends every 15 s, s0 stops after 6 min
        items = [{"service": f"s{n}", "metric": "lat", "value": round(rng.lognormvariate(3.5, 0.8), 3),
                  "ok": rng.random() > 0.05, "ts": T0 + step * 5 + n * 0.1}
                 for n in range(12) if (step + n) % 3 == 0 and (n or step < 72)]
        log.append(SourceRecord("m", 0, step, T0 + step * 5, None, orjson.dumps(items)))

    def run(proc, records, store=None):
        events, series_writes = [], 0
        for record in records:
            now = WALL + record.offset * 5
            for out in (proc.process([record], now), proc.tick(now)):
                events += out.sli + out.breaches
            if store is not None:
                writes, (committed, _) = proc.checkpoint()
                writes = list(writes)
                series_writes += sum(f"{SEP}h{SEP}" in key and '"s0"' not in key for key, _ in writes)
                store.update(writes)
                store["committed"] = committed
        return {event["id"]: event for _, event in events}, series_writes

    reference, _ = run(PartitionProcessor(0, config, WALL), log)
    assert any(event["type"] == "slostream.breach.started" for event in reference.values())
    store: dict = {}
    before, series_writes = run(PartitionProcessor(0, config, WALL), log[:crash_after], store)
    # Series without a policy: a write per completed window at most, not one per measurement (four a
    # window). The watched series is written at each judgement too, of windows without data included.
    sli_before = sum(event["type"] == "slostream.sli.window" and event["data"]["service"] != "s0"
                     for event in before.values())
    assert series_writes <= sli_before
    assert store["committed"] < crash_after - 1  # held back: some series' changes are replayed
    restored = PartitionProcessor.restore(0, config, [(k, v) for k, v in store.items() if k != "committed"],
                                          now=WALL + crash_after * 5.0)
    after, _ = run(restored, log[store["committed"] + 1:])
    assert {**before, **after} == reference


def test_unwritten_changes_become_due_after_two_report_windows_of_quiet():
    config = make_config(grace_s=5.0, idle_after_s=10_000.0)  # quiet: no window closes
    proc = PartitionProcessor(0, config, now=WALL)
    proc.process([SourceRecord("m", 0, 0, T0, None, orjson.dumps({"service": "s", "metric": "m", "ok": True,
                                                                   "ts": T0 + 1}))], now=WALL + 1.0)
    writes, (committed, _) = proc.checkpoint()
    assert not any(key.startswith(series_key(0, "")) for key, _ in writes) and committed == -1
    assert not proc.unwritten_due
    # Held since the processor's first boundary (wall time 0): due two report windows after it.
    assert proc.tick(WALL + 2 * config.report_window_s - 1.0).sli == [] and not proc.unwritten_due
    assert proc.tick(WALL + 2 * config.report_window_s).sli == [] and proc.unwritten_due
    writes, (committed, _) = proc.checkpoint()
    assert any(key.startswith(series_key(0, "")) for key, _ in writes) and committed == 0
    assert not proc.unwritten_due
