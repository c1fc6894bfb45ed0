"""Hostile records through the broker: names and labels past their bounds, values whose sums would
overflow, a decompression bomb, an output too large for the broker, and unreadable state records.
No record stops the worker or its successor; each is dead-lettered with a reason."""

import asyncio
import signal
import subprocess
import sys
import time

import orjson
from aiokafka import AIOKafkaProducer

from slostream.pipeline import state_keys
from tests.conftest import consume, produce
from tests.schemas import validator

BOMB_MIB = 256


def _high_water_mark_kib(pid: int) -> int:
    """The process' peak resident memory (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _send_to_partitions(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes]]) -> None:
    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for partition, key, value in records:
                await producer.send_and_wait(topic, value, key=key, partition=partition)
        finally:
            await producer.stop()

    asyncio.run(run())


def test_hostile_records_are_dead_lettered_and_neither_the_worker_nor_its_successor_stops(kafka, make_worker):
    # A client-side output limit of 64 KiB (a broker's message.max.bytes): names may be up to 60,000
    # bytes here, so one series' SLI event and state record pass it.
    limits = {"SLOSTREAM_MAX_NAME_BYTES": "60000", "SLOSTREAM_MAX_OUTPUT_BYTES": "65536",
              "SLOSTREAM_MAX_DEADLETTER_BYTES": "8192"}
    worker = make_worker(**limits).start()
    prefix, topic = make_worker.prefix, f"{make_worker.prefix}measurements"
    t0 = time.time() // 60 * 60 - 120
    good = {"metric": "http", "ok": True, "ts": t0}
    hostile = [
        {**good, "service": "s" * 400_000},  # too_large: a name over max_name_bytes
        {**good, "service": "api", "labels": {f"k{i}": "v" for i in range(33)}},  # too_large: over max_labels
        {**good, "service": "api", "value": 1e308},  # out_of_range: its sums would overflow
    ]
    huge_service = "b" * 50_000  # a valid name whose SLI event and state record are over max_output_bytes
    produce(kafka.bootstrap, topic, [orjson.dumps(m) for m in hostile], key=None)
    # Each series' second measurement, a window later, closes its first window.
    produce(kafka.bootstrap, topic, [orjson.dumps({**good, "service": service, "value": 5.0, "ts": ts})
                                     for ts in (t0, t0 + 70) for service in (huge_service, "api")], key=None)
    before_bomb = _high_water_mark_kib(worker.process.pid)
    subprocess.run([sys.executable, "-m", "tests.integration.bomb_batch", kafka.bootstrap, topic, "0", str(BOMB_MIB)],
                   check=True, timeout=120)

    def complete(letters):
        found = {(e["data"]["reason"], e["data"]["topic"].removeprefix(prefix)) for e in letters}
        return found >= {("too_large", "measurements"), ("out_of_range", "measurements"), ("too_large", "sli"),
                         ("too_large", "slo-sli-state-changelog")} and len(letters) >= 6

    letters = consume(kafka.bootstrap, f"{prefix}deadletter", complete, timeout=60)
    assert complete(letters), [(e["data"]["reason"], e["data"]["message"][:120]) for e in letters]
    schema = validator("deadletter-event.schema.json")
    for letter in letters:
        schema.validate(letter)
        assert len(orjson.dumps(letter)) < 65536
    messages = [e["data"]["message"] for e in letters]
    assert any("max_name_bytes" in m for m in messages) and any("33" in m or "32" in m for m in messages)
    assert any("max_batch_bytes" in m for m in messages)  # the bomb, skipped as a batch
    assert any("slostream.sli.window" in m for m in messages)  # the refused SLI event, named
    growth_mib = (_high_water_mark_kib(worker.process.pid) - before_bomb) / 1024
    assert growth_mib < BOMB_MIB / 2, f"the worker's peak memory grew {growth_mib:.0f} MiB on a {BOMB_MIB} MiB bomb"
    status, body = worker.get("/metrics")
    assert status == 200
    assert b'slostream_ingest_measurements_rejected_total{reason="out_of_range"} 1.0' in body
    sli = consume(kafka.bootstrap, f"{prefix}sli", lambda ev: any(e["data"]["service"] == "api" for e in ev))
    assert [e["data"]["count"] for e in sli if e["data"]["service"] == "api"] == [1]
    assert worker.process.poll() is None

    # Killed with the hostile records perhaps not committed: the successor may replay them. Its state
    # also holds records that do not parse.
    worker.stop(signal.SIGKILL)
    changelog = f"{prefix}slo-sli-state-changelog"
    _send_to_partitions(kafka.bootstrap, changelog, [
        (0, state_keys.series_key(0, '["checkout","http",{}]').encode(), b"\x06\x00\x00\x00\x00garbage"),
        (1, state_keys.book_key(1).encode(), b'{"v": 99}'),
    ])
    successor = make_worker(**limits).start()
    after = [orjson.dumps({**good, "service": "after", "ts": ts}) for ts in (t0 + 60, t0 + 130)]
    produce(kafka.bootstrap, topic, after, key=None)
    sli = consume(kafka.bootstrap, f"{prefix}sli", lambda ev: any(e["data"]["service"] == "after" for e in ev))
    assert any(e["data"]["service"] == "after" for e in sli)
    status, body = successor.get("/metrics")
    assert status == 200 and b"slostream_state_records_unreadable_total 2.0" in body
    assert successor.process.poll() is None
    assert successor.stop() == 0
