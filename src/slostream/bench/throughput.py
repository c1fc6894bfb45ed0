"""Throughput against a same-run ceiling (keyed, unkeyed, with and without SLOs), and the cost and
latency of SLO evaluation."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from slostream.bench.common import (
    DRIFT_OFF,
    SERVICES,
    UNKEYED_PARTITIONS,
    BenchBroker,
    _ceiling,
    _check_nothing_rejected,
    _create_topics,
    _last_sli_time,
    _prepare,
    _scrape,
    _start_worker,
    _wait_ready,
    counted_from,
)
from slostream.config import Settings, pipeline_config
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import PipelineConfig, SourceRecord


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


def _end_to_end(broker: BenchBroker, prefix: str, expected: int, definitions: str | None = None,
                partitions: int = 1, source: str | None = None) -> float:
    """Seconds from a fresh worker's readiness to its last SLI event; ``source``: run the worker
    from another checkout's ``src`` (``bench/compare``)."""
    env = {"PYTHONPATH": source} if source else {}
    if definitions:
        env["SLOSTREAM_DEFINITION_FILES"] = definitions
    launched = time.time()
    worker, port = _start_worker(broker, prefix, partitions, env)
    try:
        ready_at = _wait_ready(port, worker)
        last = asyncio.run(_last_sli_time(broker, f"{prefix}sli", expected, timeout=300))
        _check_nothing_rejected(_scrape(port)[0], prefix)
        return last - counted_from(launched, ready_at, last)
    finally:
        worker.terminate()
        worker.wait(30)


def _core_mps(payloads: list[bytes]) -> float:
    wall = time.time()  # the pipeline's wall clock: after all of the (past) data
    proc = PartitionProcessor(0, pipeline_config(Settings(partitions=1)), now=wall)
    records = [SourceRecord("bench", 0, i, time.time(), None, p) for i, p in enumerate(payloads)]
    accepted = 0
    started = time.perf_counter()
    for i in range(0, len(records), 200):
        accepted += proc.process(records[i:i + 200], now=wall).accepted
    return accepted / (time.perf_counter() - started)


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


async def _alert_trials(broker: BenchBroker, prefix: str) -> list[float]:
    producer = broker.client(AIOKafkaProducer, linger_ms=0)
    consumer = broker.client(AIOKafkaConsumer, enable_auto_commit=False, auto_offset_reset="latest",
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


def _alert_latency(broker: BenchBroker, definitions: str) -> list[float]:
    prefix = f"{broker.namespace}alerts"
    asyncio.run(_create_topics(broker, (prefix,)))
    worker, port = _start_worker(broker, f"{prefix}.", 1,
                                 {"SLOSTREAM_DEFINITION_FILES": definitions, "SLOSTREAM_GRACE_S": "2"})
    try:
        _wait_ready(port, worker)
        return asyncio.run(_alert_trials(broker, f"{prefix}."))
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
    tracker = SloTracker(slo, Settings().resolutions)
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


def _core_cost(payloads: list[bytes], chunk: int, configs: tuple[PipelineConfig, PipelineConfig],
               repeats: int = 3) -> float:
    """Extra pipeline time the second config costs over the first, measured in one process: a
    processor of each takes the same chunks in turn (order flipped each chunk), so machine noise
    hits both alike. The end-to-end pairs cannot resolve a few percent on two shared cores. With
    the collector off the baseline is smaller than in the worker, so this errs high."""
    records = [SourceRecord("bench", 0, i, time.time(), None, p) for i, p in enumerate(payloads)]
    spent = [0.0, 0.0]
    for _ in range(repeats):
        wall = time.time()  # the pipeline's wall clock: after all of the (past) data
        processors = [PartitionProcessor(0, config, now=wall) for config in configs]
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


def _core_evaluation_cost(payloads: list[bytes], chunk: int, definitions: str) -> float:
    """What the bench's SLOs and policies cost (``_core_cost``)."""
    from slostream.definitions.native import load_definition_file

    loaded, problems = load_definition_file(definitions)
    if problems:
        raise RuntimeError(f"bench definitions are invalid: {problems}")
    with_definitions = Settings(partitions=1, slos=loaded.slos, policies=loaded.policies)
    return _core_cost(payloads, chunk, (pipeline_config(Settings(partitions=1)), pipeline_config(with_definitions)))


def _core_threshold_models_cost(payloads: list[bytes], chunk: int, definitions: str) -> float:
    """What threshold models, on by default, cost on top of the bench's SLOs and policies (a p99
    policy on every series), in-process (``_core_cost``)."""
    from slostream.definitions.native import load_definition_file

    loaded, _ = load_definition_file(definitions)
    settings = Settings(partitions=1, slos=loaded.slos, policies=loaded.policies)
    return _core_cost(payloads, chunk, (pipeline_config(dataclasses.replace(settings, threshold_models=False)),
                                        pipeline_config(settings)))


def _core_drift_cost(payloads: list[bytes], chunk: int) -> float:
    """What drift, on by default, costs (``_core_cost``)."""
    return _core_cost(payloads, chunk, (pipeline_config(Settings(partitions=1, drift=DRIFT_OFF)),
                                        pipeline_config(Settings(partitions=1))))


def _throughput_rounds(broker: BenchBroker, rounds: int, batched: list[bytes], single: list[bytes],
                       definitions: str, expected: int) -> dict[str, list[float]]:
    """Seconds per worker run, with and without SLOs, interleaved round by round (the order flips
    each round) so both see the same machine: on two shared cores a single pair of runs differs by
    ±15% from noise alone."""
    runs: dict[str, list[float]] = {}
    for number in range(rounds):
        round_prefix = f"{broker.namespace}r{number}"
        sets = {f"{round_prefix}{kind}{tag}": (payloads, 1)
                for kind, payloads in (("b", batched), ("s", single)) for tag in ("", "slo")}
        sets.update({f"{round_prefix}{kind}unkeyed": (payloads, UNKEYED_PARTITIONS)
                     for kind, payloads in (("b", batched), ("s", single))})
        asyncio.run(_prepare(broker, sets))
        for kind, payloads in (("b", batched), ("s", single)):
            seconds, _ = asyncio.run(_ceiling(broker, f"{round_prefix}{kind}.measurements", len(payloads)))
            runs.setdefault(f"ceiling_{kind}", []).append(seconds)
            order = ("", "slo") if number % 2 == 0 else ("slo", "")
            for tag in order:
                run = _end_to_end(broker, f"{round_prefix}{kind}{tag}.", expected, definitions if tag else None)
                runs.setdefault(f"{kind}{tag}", []).append(run)
            run = _end_to_end(broker, f"{round_prefix}{kind}unkeyed.", expected, partitions=UNKEYED_PARTITIONS)
            runs.setdefault(f"{kind}unkeyed", []).append(run)
    return runs
