"""Real cardinality (issue 9): memory per series, window closes and catch-up at 10,000 and 100,000
series, live cost through one processor and through a worker, and a fleet through a worker."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from collections import deque

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from slostream.bench.common import (
    DRIFT_OFF,
    REPORT_S,
    UNKEYED_PARTITIONS,
    BenchBroker,
    _check_nothing_rejected,
    _cpu_seconds,
    _create_topics,
    _last_sli_time,
    _metric,
    _produce,
    _rss,
    _scrape,
    _start_worker,
    _wait_ready,
)
from slostream.config import Settings, pipeline_config
from slostream.core.objectives import Policy
from slostream.io.ingest import keep_out_of_gc
from slostream.pipeline.pacing import CheckpointPacer
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import SourceRecord

FLEET_SERIES = (10_000, 100_000)
FLEET_MEASUREMENTS = 900_000  # a measurement per series every 20 s, as many steps as this takes
FLEET_STEP_S = 20


def _fleet(broker: BenchBroker, series: int) -> dict:
    """A fleet of ``series`` latency series through a worker on 4 partitions, in unkeyed zstd records
    of 1,000 measurements (as a shipper sends them): catch-up rate, peak RSS, the longest the event
    loop was held (timers, checkpoints, the web endpoints waiting), and one scrape of /metrics."""
    prefix = f"{broker.namespace}fleet{series}"
    steps = FLEET_MEASUREMENTS // series
    t0 = (int(time.time()) - steps * FLEET_STEP_S - 600) // 60 * 60  # all of it in the past
    rng = np.random.default_rng(5)
    names = [f"svc-{i}" for i in range(series)]
    payloads = []
    for step in range(steps):
        values = rng.lognormal(4.0, 0.5, series).round(3).tolist()
        items = [{"service": name, "metric": "latency_ms", "value": value, "ok": True,
                  "ts": t0 + step * FLEET_STEP_S + i % FLEET_STEP_S}
                 for i, (name, value) in enumerate(zip(names, values))]
        payloads += [orjson.dumps(items[i:i + 1000]) for i in range(0, series, 1000)]
    asyncio.run(_create_topics(broker, (prefix,), {prefix: UNKEYED_PARTITIONS}))
    asyncio.run(_produce(broker, f"{prefix}.measurements", payloads, UNKEYED_PARTITIONS, compression="zstd"))
    worker, port = _start_worker(broker, f"{prefix}.", UNKEYED_PARTITIONS,
                                 {"SLOSTREAM_GRACE_S": "1", "SLOSTREAM_IDLE_AFTER_S": "2"})
    try:
        _wait_ready(port, worker)
        ready_at = time.perf_counter()
        measurements = series * steps
        while _counted(_scrape(port)[0]) < measurements:
            time.sleep(0.5)  # a scrape of 1,000 series costs the worker about 0.1 s: not much more often
        read_all = time.perf_counter() - ready_at
        _check_nothing_rejected(_scrape(port)[0], prefix)
        windows = steps * FLEET_STEP_S // REPORT_S
        asyncio.run(_last_sli_time(broker, f"{prefix}.sli", windows * series, timeout=600))
        page, scrape_s = _scrape(port)
        with open(f"/proc/{worker.pid}/status") as status:
            peak_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        return {
            "series": series,
            "catchup_mps": round(measurements / read_all),
            "peak_rss_bytes": peak_rss,
            "event_loop_lag_max_s_at_most": _lag_bound(page),
            "scrape_s": round(scrape_s, 3),
            "scrape_bytes": len(page),
        }
    finally:
        worker.terminate()
        worker.wait(60)


REJECTED_BURST_ELEMENTS = 200_000


def _rejected_burst(broker: BenchBroker, elements: int = REJECTED_BURST_ELEMENTS) -> dict:
    """A producer whose clock runs two hours ahead, in unkeyed zstd records of 1,000 measurements:
    every element is dead-lettered. Letters a second, from ready to the last one counted, the
    longest /metrics scrape meanwhile, and the longest the event loop was held."""
    prefix = f"{broker.namespace}rejected"
    ahead = time.time() + 7200
    payloads = [orjson.dumps([{"service": f"svc-{i}", "metric": "latency_ms", "value": 1.0, "ts": ahead + k}
                              for i in range(1000)]) for k in range(elements // 1000)]
    asyncio.run(_create_topics(broker, (prefix,), {prefix: UNKEYED_PARTITIONS}))
    asyncio.run(_produce(broker, f"{prefix}.measurements", payloads, UNKEYED_PARTITIONS, compression="zstd"))
    worker, port = _start_worker(broker, f"{prefix}.", UNKEYED_PARTITIONS, {})
    try:
        _wait_ready(port, worker)
        ready_at = time.perf_counter()
        longest_scrape = 0.0
        while True:
            page, scrape_s = _scrape(port)
            longest_scrape = max(longest_scrape, scrape_s)
            if _metric(page, 'slostream_ingest_measurements_rejected_total{reason="bad_timestamp"}') >= elements:
                break
            time.sleep(0.25)
        return {
            "elements": elements,
            "letters_per_s": round(elements / (time.perf_counter() - ready_at)),
            "longest_scrape_s": round(longest_scrape, 3),
            "event_loop_lag_max_s_at_most": _lag_bound(page),
        }
    finally:
        worker.terminate()
        worker.wait(60)


def _counted(page: str) -> float:
    """Measurements accepted or rejected: a run that rejects some ends (and fails) rather than waits."""
    return (_metric(page, "slostream_ingest_measurements_accepted_total")
            + _metric(page, "slostream_ingest_measurements_rejected_total{"))


def _lag_bound(page: str) -> float:
    """The least bucket bound of the event-loop lag histogram that holds every probe."""
    lags = [(float(line.split('le="')[1].split('"')[0]), float(line.rsplit(" ", 1)[1]))
            for line in page.splitlines() if line.startswith("slostream_event_loop_lag_seconds_bucket")]
    probes = max(count for _, count in lags)
    return min(bound for bound, count in lags if count == probes)


LIVE_WORKER_WARMUP_S = 90  # series are made in the first 15 s and their first windows close
LIVE_WORKER_SPAN_S = 240


def _live_worker(broker: BenchBroker, series: int, partitions: int) -> dict:
    """``series`` latency series sending live through a worker on ``partitions`` partitions with its
    default settings (on more than one, every measurement of these unkeyed records is forwarded to
    its owner): each second the measurements of a fifteenth of them (each series every 15 s, event
    time = now) in unkeyed zstd records of 1,000. The worker process's CPU time (user and system,
    from /proc) over ``LIVE_WORKER_SPAN_S`` after a warm-up, as a share of one core: ingest,
    window closes, SLI output, checkpoints and their changelog writes. The broker and this
    producer share the machine."""
    prefix = f"{broker.namespace}live{series}p{partitions}"
    asyncio.run(_create_topics(broker, (prefix,), {prefix: partitions}))
    worker, port = _start_worker(broker, f"{prefix}.", partitions, {})
    try:
        _wait_ready(port, worker)
        core_share, sent = asyncio.run(_send_live(broker, f"{prefix}.measurements", series, partitions, worker.pid))
        page, _ = _scrape(port)
        _check_nothing_rejected(page, prefix)
        return {"series": series, "partitions": partitions, "core_share": round(core_share, 3),
                "measurements_sent": sent,
                "measurements_accepted": round(_metric(page, "slostream_ingest_measurements_accepted_total"))}
    finally:
        worker.terminate()
        worker.wait(60)


async def _send_live(broker: BenchBroker, topic: str, series: int, partitions: int,
                     pid: int) -> tuple[float, int]:
    """Send as ``_live_worker`` says; the worker's share of a core after the warm-up, and how many
    measurements were sent."""
    producer = broker.client(AIOKafkaProducer, linger_ms=5, max_batch_size=1 << 20, max_request_size=8 << 20,
                             compression_type="zstd")
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
        wall = time.time()  # the pipeline's wall clock: after all of the (past) data
        proc = PartitionProcessor(0, pipeline_config(Settings(partitions=1, policies=policies)), now=wall)
        for offset, payload in enumerate(steps):
            proc.process([SourceRecord("bench", 0, offset, t0 + offset * 10, None, payload)], now=wall)
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


def _cardinality(series: int, drift: bool = True) -> dict:
    """``_cardinality_run`` in a fresh process, so its RSS growth is the pipeline's alone."""
    code = ("import json; from slostream.bench.cardinality import _cardinality_run; "
            f"print(json.dumps(_cardinality_run({series}, {drift})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _cardinality_run(series: int, drift: bool = True) -> dict:
    """A backlog of ``series`` latency series, 4 measurements a minute each over 10 minutes of event
    time, through one processor: RSS growth per series, processing time per closed SLI window
    (ingest, closes, sketch merges, SLI events, checkpoints once a second), and catch-up rate;
    ``drift=False``: with drift switched off."""
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
    settings = Settings(partitions=1) if drift else Settings(partitions=1, drift=DRIFT_OFF)
    wall = time.time()  # the pipeline's wall clock: after all of the (past) data
    proc = PartitionProcessor(0, pipeline_config(settings), now=wall)
    busy = 0.0
    windows = 0
    pacer = CheckpointPacer(Settings().checkpoint_interval_s)  # checkpoints paced as the worker paces them
    for offset, payload in enumerate(payloads):
        started = time.perf_counter()
        out = proc.process([SourceRecord("bench", 0, offset, t0 + CARDINALITY_SPAN_S, None, payload)], now=wall)
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
        "drift": drift,
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
    code = f"import json; from slostream.bench.cardinality import _live_run; print(json.dumps(_live_run({series})))"
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
    wall = time.time()  # the pipeline's wall clock: after all of the (past) data
    proc = PartitionProcessor(0, pipeline_config(Settings(partitions=1)), now=wall)
    pacer = CheckpointPacer(Settings().checkpoint_interval_s)
    busy = 0.0
    windows = 0
    for second, payload in enumerate(payloads):
        now = wall + second
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
