"""Ownership and forwarding over the pure pipeline (``tests.pipeline_sim``)."""

import random

import numpy as np
import orjson
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from slostream.pipeline.alignment import (
    READ_SLACK_S,
    Alignment,
    Progress,
    encode_progress,
    progress_header,
    read_until_claim,
    written_by,
)
from slostream.pipeline.ownership import (
    MAX_FORWARD_SERIES,
    decode_forwarded,
    encode_forwarded,
    forward_header,
    murmur2,
    owner_of,
)
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.rows import ELEMENTS_PER_RECORD
from slostream.pipeline.types import SourceRecord
from tests.pipeline_sim import WALL, Cluster, make_config

T0 = 1_800_000_000 // 60 * 60
PARTITIONS = 4


@given(st.binary(max_size=64))
def test_murmur2_is_kafkas(data):
    assert murmur2(data) & 0xFFFFFFFF == aiokafka_murmur2(data)  # Java's is signed, aiokafka's unsigned


def test_owner_is_where_kafkas_default_partitioner_puts_a_service_key():
    for service in ("checkout", "search", "ads", "payments", "é-service", "x" * 40):
        expected = (aiokafka_murmur2(service.encode()) & 0x7FFFFFFF) % PARTITIONS
        assert owner_of(service, PARTITIONS) == expected


def _measurements(n: int, services: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"service": f"svc-{rng.randrange(services)}", "metric": "latency_ms",
             "value": round(rng.lognormvariate(3, 0.5), 3), "ok": rng.random() > 0.1, "ts": T0 + i * 0.5}
            for i in range(n)]


def _closers(services: int) -> list[dict]:
    return [{"service": f"svc-{s}", "metric": "latency_ms", "ok": True, "ts": T0 + 10_000} for s in range(services)]


def _truth(items: list[dict], until: float) -> dict:
    truth: dict = {}
    for m in items:
        start = int(m["ts"] // 60 * 60)
        if start + 60 <= until:
            key = (m["service"], start)
            truth[key] = truth.get(key, 0) + 1
    return truth


@pytest.mark.parametrize("keying", ["by_service", "unkeyed", "by_host", "round_robin"])
def test_any_partitioning_counts_every_measurement_once_in_its_own_series(keying):
    rng = random.Random(4)
    items = _measurements(3000, 7, seed=9)
    cluster = Cluster(make_config(partitions=PARTITIONS, grace_s=30.0), rng)
    per_record = 5
    produced = []
    for number, first in enumerate(range(0, len(items), per_record)):
        group = items[first:first + per_record]
        if keying == "by_service":  # one service per record, keyed and partitioned by it
            produced += [(owner_of(m["service"], PARTITIONS), orjson.dumps(m), m["service"].encode()) for m in group]
            continue
        partition = {"unkeyed": rng.randrange(PARTITIONS), "round_robin": number % PARTITIONS,
                     "by_host": owner_of(f"host-{number % 3}", PARTITIONS)}[keying]
        produced.append((partition, orjson.dumps(group), None))
    cluster.drain(produced)
    cluster.settle()
    for closer in _closers(7):  # later measurements move every series' clock past its windows
        owner = owner_of(closer["service"], PARTITIONS)
        if keying == "by_service":
            cluster.append(owner, orjson.dumps(closer), closer["service"].encode())
        else:
            cluster.append(rng.randrange(PARTITIONS), orjson.dumps(closer))
    cluster.drain()
    cluster.settle()
    assert cluster.deadletter == []
    assert cluster.windows() == _truth(items, T0 + 10_000 - 30)
    for proc in cluster.procs:  # each series lives only where it is owned
        assert all(owner_of(service, PARTITIONS) == proc.partition for service, _ in proc.series)
    if keying == "by_service":
        forwards = [r for log in cluster.repartition_logs for r in log
                    if any(name == "slostream-forwarded-from" for name, _ in r.headers)]
        assert forwards == []  # the fast path forwards nothing


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_forwarding_is_independent_of_batching_and_interleaving(seed):
    items = _measurements(600, 5, seed=seed % 97)
    results = []
    for run in range(2):
        rng = random.Random(seed * 2 + run)
        cluster = Cluster(make_config(partitions=3, grace_s=60.0), rng)
        cluster.drain([(first // 4 % 3, orjson.dumps(items[first:first + 4]), None)
                       for first in range(0, len(items), 4)])
        cluster.settle()
        for closer in _closers(5):
            cluster.append(0, orjson.dumps(closer))
        cluster.drain()
        cluster.settle()
        results.append(cluster.windows())
    assert results[0] == results[1] == _truth(items, T0 + 10_000 - 60)


def test_a_source_that_replays_after_a_crash_forwards_again_and_the_owner_adds_nothing_twice():
    rng = random.Random(1)
    config = make_config(partitions=2, grace_s=30.0)
    items = _measurements(1200, 6, seed=3)
    cluster = Cluster(config, rng)
    for first in range(0, len(items), 6):
        cluster.append(0, orjson.dumps(items[first:first + 6]))  # everything arrives on partition 0
    source = cluster.procs[0]
    cluster.step(0, 40)
    cluster.step(1, 1000)
    writes, (offset, _) = source.checkpoint()  # the last durable state of the source
    writes = list(writes)
    cluster.step(0, 60)
    cluster.step(1, 1000)  # the owner applies forwards made after that checkpoint
    # Crash: the source restarts from its checkpoint and reads (and forwards) those records again.
    cluster.procs[0] = PartitionProcessor.restore(0, config, [(k, v) for k, v in writes], WALL)
    cluster.read[0] = offset + 1
    cluster.drain()
    cluster.settle()
    for closer in _closers(6):
        cluster.append(0, orjson.dumps(closer))
    cluster.drain()
    cluster.settle()
    assert cluster.windows() == _truth(items, T0 + 10_000 - 30)
    last_foreign = max(r.offset for r in cluster.logs[0]
                       if not r.headers and any(owner_of(m["service"], 2) == 1 for m in _elements(r.value)))
    assert cluster.procs[1].intake.forward_marks[0] // ELEMENTS_PER_RECORD == last_foreign


def _elements(value: bytes) -> list[dict]:
    decoded = orjson.loads(value)
    return decoded if isinstance(decoded, list) else [decoded]


def test_dead_letters_stay_where_the_record_was_read():
    cluster = Cluster(make_config(partitions=PARTITIONS), random.Random(2))
    foreign = next(s for s in (f"svc-{i}" for i in range(20)) if owner_of(s, PARTITIONS) != 0)
    cluster.append(0, orjson.dumps([{"service": foreign, "metric": "m", "ok": True, "ts": T0},
                                    {"service": foreign, "metric": "m", "ok": "yes", "ts": T0}]))
    cluster.drain()
    assert [(e["data"]["partition"], e["data"]["reason"]) for e in cluster.deadletter] == [(0, "wrong_type")]
    owner = cluster.procs[owner_of(foreign, PARTITIONS)]
    assert owner.series[(foreign, "m")].windows.pending_count(60) == 1


def test_forwarded_records_are_split_to_fit_the_record_limit():
    config = make_config(partitions=2, max_record_bytes=4096)
    proc = PartitionProcessor(0, config, now=WALL)
    foreign = next(s for s in (f"svc-{i}" for i in range(20)) if owner_of(s, 2) == 1)
    items = [{"service": foreign, "metric": "m", "value": float(i), "ts": T0 + i} for i in range(500)]
    records = [SourceRecord("m", 0, n, T0 + 600, None, orjson.dumps(items[i:i + 50]))
               for n, i in enumerate(range(0, 500, 50))]
    assert all(len(r.value) <= 4096 for r in records)
    out = proc.process(records, WALL)
    assert sum(f.measurements for f in out.forwards) == 500 and len(out.forwards) > 1
    assert all(len(f.value) <= 4096 for f in out.forwards)
    columns = [decode_forwarded(f.value).columns() for f in out.forwards]
    assert np.concatenate([c["value"] for c in columns]).tolist() == [float(i) for i in range(500)]
    assert np.all(np.diff(np.concatenate([c["positions"] for c in columns])) > 0)
    assert {f.headers[0] for f in out.forwards} == {("slostream-forwarded-from", b"0")}


def test_a_catch_up_over_full_partitions_loses_nothing_to_the_owners_reading_ahead():
    """Every partition already holds its whole backlog when the owners start: each owner reads its
    own partition far ahead (in event time) of the forwards that land behind it in its log."""
    rng = random.Random(8)
    items = _measurements(4000, 9, seed=12)
    # What keeps the forwards in time: every unkeyed measurement goes through the owner's log (its
    # own too), and an owner closes only what every partition has reported read past.
    cluster = Cluster(make_config(partitions=PARTITIONS, grace_s=30.0), rng)
    for first in range(0, len(items), 5):
        cluster.append(rng.randrange(PARTITIONS), orjson.dumps(items[first:first + 5]))
    cluster.drain()
    cluster.settle()
    for closer in _closers(9):
        cluster.append(rng.randrange(PARTITIONS), orjson.dumps(closer))
    cluster.drain()
    cluster.settle()
    assert cluster.deadletter == []
    assert cluster.windows() == _truth(items, T0 + 10_000 - 30)


def test_a_partition_read_minutes_after_the_others_loses_nothing():
    """A worker that starts late over a full unkeyed topic: every owner holds its series until that
    partition has reported reading its log, however much wall time passes first."""
    rng = random.Random(6)
    items = _measurements(3000, 7, seed=5)
    cluster = Cluster(make_config(partitions=PARTITIONS, grace_s=30.0), rng)
    for first in range(0, len(items), 5):
        cluster.append(first // 5 % PARTITIONS, orjson.dumps(items[first:first + 5]))
    cluster.paused.add(3)
    for _ in range(6):  # three minutes of wall time, partition 3 unread
        cluster.settle()
    assert cluster.sli == []
    cluster.paused.clear()
    cluster.settle()
    for closer in _closers(7):
        cluster.append(rng.randrange(PARTITIONS), orjson.dumps(closer))
    cluster.settle()
    assert cluster.deadletter == []
    assert cluster.windows() == _truth(items, T0 + 10_000 - 30)


def test_outcome_and_id_travel_with_a_forward_only_when_some_measurement_has_them():
    proc = PartitionProcessor(0, make_config(partitions=2), now=WALL)
    foreign = next(s for s in (f"svc-{i}" for i in range(20)) if owner_of(s, 2) == 1)
    plain = [{"service": foreign, "metric": "m", "ok": True, "ts": T0 + i} for i in range(3)]
    marked = [{**plain[0], "outcome": 1, "id": "req-1"}, plain[1], {**plain[2], "outcome": 0}]
    for n, items in enumerate((plain, marked)):
        out = proc.process([SourceRecord("m", 0, n, T0 + 600, None, orjson.dumps(items))], WALL)
        forwarded = decode_forwarded(out.forwards[0].value)
        outcomes = forwarded.columns()["outcome"].tolist()
        if items is plain:
            assert (outcomes, forwarded.ids) == ([-1, -1, -1], None)
        else:
            assert (outcomes, forwarded.ids) == ([1, -1, 0], ["req-1", None, None])


def test_a_forward_holds_at_most_max_forward_series_series_and_every_measurement_arrives():
    config = make_config(partitions=2)
    cluster = Cluster(config, random.Random(5))
    items = [{"service": f"svc-{i}", "metric": "m", "ok": True, "ts": T0 + t} for i in range(5000) for t in (1, 2)]
    cluster.append(0, orjson.dumps(items))
    cluster.step(0, 1)
    forwards = [decode_forwarded(r.value) for log in cluster.repartition_logs for r in log]
    assert len(forwards) > 2 and max(len(f.keys) for f in forwards) <= MAX_FORWARD_SERIES
    assert sum(len(f.ts) // 8 for f in forwards) == len(items)


def test_partitions_read_at_different_speeds_lose_nothing_from_records_spanning_more_than_the_grace():
    """A backlog of unkeyed records, each spanning 20 s of event time against a grace of 1 s, read
    with one partition far behind the others: its records are older than what the others have
    forwarded, and still count (alignment by when records were written, not by event time)."""
    rng = random.Random(11)
    config = make_config(partitions=PARTITIONS, grace_s=1.0, idle_after_s=2.0)
    cluster = Cluster(config, rng)
    items = [{"service": f"svc-{i}", "metric": "latency_ms", "ok": True, "ts": T0 + step * 20 + i % 20}
             for step in range(9) for i in range(200)]
    for first in range(0, len(items), 50):
        cluster.clock += 0.05  # the producer writes the backlog over time, in order
        cluster.append(rng.randrange(PARTITIONS), orjson.dumps(items[first:first + 50]))
    for rounds in range(1, 400):
        for partition in range(PARTITIONS):
            if partition != 0 or rounds % 4 == 0:  # partition 0 reads one record in four rounds
                cluster.step(partition, 1 if partition == 0 else 5)
        if rounds % 2 == 0:
            cluster.tick()
    cluster.drain()
    cluster.clock += 30  # quiet long enough for the idle series to close their last windows
    cluster.settle()
    assert cluster.deadletter == []
    assert cluster.windows() == _truth(items, T0 + 180)


def test_a_record_split_over_several_forwards_is_applied_whole():
    config = make_config(partitions=2, max_record_bytes=4096)
    foreign = next(s for s in (f"svc-{i}" for i in range(20)) if owner_of(s, 2) == 1)
    cluster = Cluster(config, random.Random(3))
    for _ in range(2):  # read in one chunk: the second record straddles two forwards
        cluster.append(0, orjson.dumps([{"service": foreign, "metric": "m", "ok": True, "ts": T0 + 1}] * 60))
    cluster.step(0, 10)
    assert len(cluster.repartition_logs[1]) == 2  # 120 measurements, at most 102 per forward
    cluster.settle()
    assert cluster.procs[1].series[(foreign, "m")].windows.pending_count(60) == 120


def test_alignment_waits_for_every_partition_and_follows_the_slowest():
    alignment = Alignment(3, 0.0)
    assert alignment.aligned_until == -np.inf  # cold start
    alignment.report(0, Progress(10.0), 1.0)
    alignment.report(1, Progress(None), 1.0)  # cannot say yet
    alignment.report(2, Progress(12.0), 1.0)
    assert alignment.aligned_until == -np.inf
    alignment.report(1, Progress(8.0), 2.0)
    assert alignment.aligned_until == 8.0
    alignment.report(0, Progress(9.0), 3.0)  # reports never move back
    assert alignment.read_until[0] == 10.0
    assert [alignment.last_heard(p) for p in range(3)] == [3.0, 2.0, 1.0]  # heard of, whatever it said
    restored = Alignment.from_state(3, orjson.loads(orjson.dumps(alignment.to_state())), 5.0)
    assert restored.read_until == alignment.read_until == {0: 10.0, 1: 8.0, 2: 12.0}
    assert restored.last_heard(0) == 5.0  # not heard of since it was restored
    assert Alignment(1, 0.0).aligned_until == np.inf  # one partition: its own log is in order


def test_a_partition_claims_the_later_of_its_end_and_its_newest_record_time_less_the_slack():
    assert read_until_claim(None, -np.inf) is None  # never at its end, nothing read
    assert read_until_claim(100.0, 90.0) == 100.0 - READ_SLACK_S
    assert read_until_claim(None, 90.0) == read_until_claim(80.0, 90.0) == 90.0 - READ_SLACK_S  # catching up
    assert written_by(200.0, 150.0) == 150.0 and written_by(140.0, 150.0) == 140.0  # a clock ahead: when read


def test_a_progress_record_that_cannot_be_read_is_dead_lettered():
    proc = PartitionProcessor(0, make_config(partitions=2), now=WALL)
    record = SourceRecord("repartition", 0, 0, T0, None, b"\x01garbage", (("slostream-progress-from", b"1"),))
    out = proc.receive([record], WALL + 1.0, {})
    assert [e["data"]["reason"] for _, e in out.deadletter] == ["invalid_json"]
    assert "progress of partition 1" in out.deadletter[0][1]["data"]["message"]


def _forged_forward(service: str, count: int, offset: int) -> bytes:
    """A forward as a worker makes it: ``count`` good measurements of ``service`` at ``T0 + 30``,
    named as read at ``offset`` of the source partition."""
    return encode_forwarded([(service, "latency_ms", [])], np.zeros(count, dtype=np.int64), np.full(count, T0 + 30.0),
                            np.full(count, np.nan), np.ones(count, dtype=np.int8), np.full(count, -1, dtype=np.int8),
                            offset * ELEMENTS_PER_RECORD + np.arange(count), None, T0 + 30.0)


def test_internal_headers_on_the_measurement_topic_carry_no_authority():
    """A producer writes a forward and a progress mark to the measurement topic, with slostream's
    headers: they are ordinary measurement records (not JSON: dead-lettered), and no count of any
    series changes (the forward would add 500 to a series; the progress mark would claim every
    partition read to the end of time, closing windows before their data arrives)."""
    rng = random.Random(8)
    cluster = Cluster(make_config(partitions=PARTITIONS, grace_s=30.0), rng)
    items = _measurements(2000, 7, seed=4)
    victim = items[0]["service"]
    produced = [(rng.randrange(PARTITIONS), orjson.dumps(items[first:first + 5]), None)
                for first in range(0, len(items), 5)]
    for partition in range(PARTITIONS):  # forged first: read before the genuine data
        cluster.append(partition, encode_progress(1e12), headers=[progress_header(partition)])
    cluster.append(0, _forged_forward(victim, 500, 0), headers=[forward_header(1)])
    cluster.drain(produced)
    cluster.settle()
    for closer in _closers(7):
        cluster.append(rng.randrange(PARTITIONS), orjson.dumps(closer))
    cluster.drain()
    cluster.settle()
    assert sorted(e["data"]["reason"] for e in cluster.deadletter) == ["invalid_json"] * (PARTITIONS + 1)
    assert cluster.windows() == _truth(items, T0 + 10_000 - 30)


def test_a_forward_naming_a_position_its_source_does_not_hold_is_refused():
    config = make_config(partitions=2)
    service = next(s for s in (f"svc-{i}" for i in range(20)) if owner_of(s, 2) == 1)
    proc = PartitionProcessor(1, config, now=WALL)
    forward = SourceRecord("repartition", 1, 0, T0 + 30, None, _forged_forward(service, 500, 10),
                           (forward_header(0),))
    out = proc.receive([forward], WALL, {0: 10, 1: 0})  # partition 0 holds offsets 0-9 only
    assert [e["data"]["reason"] for _, e in out.deadletter] == ["forward_beyond_source"] and out.accepted == 0
    assert proc.series == {}
    again = SourceRecord("repartition", 1, 1, T0 + 30, None, forward.value, forward.headers)
    assert proc.receive([again], WALL, {0: 11, 1: 0}).accepted == 500  # once it holds offset 10
