"""The ``fuzz`` part: hostile records through the pure pipeline, a million per input path
(measurement records, record headers, state changelog records at a restore), and a hundred thousand
through a real worker on the bench's broker. Reported: how many went in, how many raised (a crash
of a worker; the goal is 0), how many outputs had a number that is not finite (the goal is 0), and
the dead letters by reason.

The records come from a seeded generator (the test suite's Hypothesis strategies are not a runtime
dependency): any bytes, JSON of any shape, measurements with hostile fields (long and multi-byte
names, many labels, numbers near the double's limits, NaN and 1e400 as JSON literals, odd
timestamps), valid records with bytes flipped, cut or appended, and headers that claim to be
forwards or progress marks.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable

import orjson

from slostream.bench.common import BenchBroker, _create_topics, _metric, _scrape, _start_worker, _wait_ready
from slostream.config import Settings, pipeline_config
from slostream.core.budget import default_tiers
from slostream.core.objectives import GoodRule, Policy, Slo, SloWindow
from slostream.pipeline.alignment import PROGRESS_HEADER
from slostream.pipeline.ownership import FORWARD_HEADER
from slostream.pipeline.partition import PartitionProcessor
from slostream.pipeline.types import Output, PipelineConfig, SourceRecord

PIPELINE_RECORDS = 1_000_000  # per input path
WORKER_RECORDS = 100_000
CHUNK = 200  # records per process() call
NOW = 1_800_010_000.0
_SLO = Slo(name="co", service="checkout", metric="http", objective=0.999, window=SloWindow(rolling_s=86400),
           good=GoodRule("ok"), tiers=default_tiers(86400))
_POLICY = Policy("co-p95", "checkout", "http", "p95", 60, "above", warning=90.0, critical=140.0)
_NAMES = ["checkout", "api", "search", "é" * 129, "\U0001f600" * 65, "x" * 257, "y" * 256, "", " ", "\x00",
          "名前", "a\\ud800", "checkout\\u0000"]
_NUMBERS = ["1", "0", "-0.0", "12.5", "1e308", "-1e308", "1.7976931348623157e308", "5e-324", "1e100", "1e101",
            "NaN", "Infinity", "-Infinity", "1e400", "9" * 400, "-" + "9" * 30, "1e-400", '"12"', "true", "null",
            "[]", "{}"]
_VALID = [b'{"service":"checkout","metric":"http","value":120.5,"ok":true}',
          b'[{"service":"api","metric":"lat","value":3,"labels":{"k":"a"}},{"service":"checkout","metric":"http",'
          b'"ok":false,"outcome":1,"id":"x"}]']


def _config(partitions: int) -> PipelineConfig:
    return pipeline_config(Settings(partitions=partitions, slos=(_SLO,), policies=(_POLICY,), label_keys=("k",)))


def _text(rng: random.Random) -> str:
    """A JSON string literal: a hostile name, or random code points (escaped by json.dumps)."""
    if rng.random() < 0.7:
        name = rng.choice(_NAMES)
        return '"' + name + '"' if "\\" in name else json.dumps(name, ensure_ascii=rng.random() < 0.5)
    return json.dumps("".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(12))))


def _measurement(rng: random.Random, ts: float) -> str:
    fields = []
    for name in ("service", "metric"):
        if rng.random() < 0.97:
            fields.append(f'"{name}":' + (_text(rng) if rng.random() < 0.95 else rng.choice(_NUMBERS)))
    if rng.random() < 0.8:
        fields.append('"value":' + (rng.choice(_NUMBERS) if rng.random() < 0.3 else repr(rng.lognormvariate(4, 1))))
    if rng.random() < 0.6:
        fields.append('"ok":' + rng.choice(["true", "false", "1", '"yes"', "null"]))
    if rng.random() < 0.7:
        stamp = ts - rng.uniform(0, 900) if rng.random() < 0.8 else rng.choice(
            [ts * 1000, -5, 0, ts + 1e9, 1e300, '"2027-01-15T08:00:00Z"', '"3237-01-01T00:00:00+00:00"', '"noon"'])
        fields.append(f'"ts":{stamp}')
    if rng.random() < 0.3:
        labels = ",".join(f"{_text(rng)}:{_text(rng)}" for _ in range(rng.choice([0, 1, 3, 32, 33, 40])))
        fields.append('"labels":{' + labels + "}")
    if rng.random() < 0.05:
        fields.append('"outcome":' + rng.choice(["0", "1", "2", "true"]))
    if rng.random() < 0.05:
        fields.append('"id":' + _text(rng))
    return "{" + ",".join(fields) + "}"


def _mutated(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    if rng.random() < 0.3:
        data = data[:rng.randrange(len(data) + 1)]
    return bytes(data) + rng.randbytes(rng.choice([0, 0, 1, 8]))


def fuzzed_value(rng: random.Random, ts: float) -> bytes:
    """One hostile measurement record."""
    kind = rng.random()
    if kind < 0.1:
        return rng.randbytes(rng.randrange(200))
    if kind < 0.2:
        return _mutated(rng, rng.choice(_VALID))
    if kind < 0.25:
        depth = rng.choice([10, 1000, 100_000])
        return rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"1e999999", b""])
    if kind < 0.6:
        return _measurement(rng, ts).encode("utf-8", "surrogatepass")
    return ("[" + ",".join(_measurement(rng, ts) for _ in range(rng.randint(0, 6))) + "]").encode(
        "utf-8", "surrogatepass")


def fuzzed_headers(rng: random.Random) -> tuple:
    """Headers a producer may set: slostream's own names with any value, or anything."""
    headers = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        name = rng.choice([FORWARD_HEADER, PROGRESS_HEADER, "x", "", "\x00"])
        value = rng.choice([b"0", b"1", b"7", b"1023", b"-1", b"99999", b"1" * 5000, None, rng.randbytes(4)])
        headers.append((name, value))
    return tuple(headers)


class _Tally:
    """What went in, what raised, outputs with a number not finite, and dead letters by reason."""

    def __init__(self):
        self.records = 0
        self.crashes = 0
        self.not_finite = 0
        self.reasons: Counter[str] = Counter()
        self.accepted = 0
        self.first_crash: str | None = None

    def output(self, out: Output) -> None:
        self.accepted += out.accepted
        self.reasons.update(event["data"]["reason"] for _, event in out.deadletter)
        for name in ("sli", "deadletter", "alerts", "breaches", "drift", "recommendations"):
            for _, event in getattr(out, name):
                if not _finite(event):
                    self.not_finite += 1

    def crashed(self, exc: Exception) -> None:
        self.crashes += 1
        if self.first_crash is None:
            self.first_crash = f"{type(exc).__name__}: {exc}"[:300]

    def report(self, seconds: float) -> dict:
        return {"records": self.records, "crashes": self.crashes, "first_crash": self.first_crash,
                "outputs_not_finite": self.not_finite, "accepted": self.accepted,
                "dead_lettered": dict(sorted(self.reasons.items())), "seconds": round(seconds, 1)}


def _finite(event) -> bool:
    orjson.dumps(event)
    stack = [event]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _through(config: PipelineConfig, partition: int, records: int,
             make: Callable[[random.Random, int, float], SourceRecord]) -> dict:
    """``records`` made by ``make(rng, offset, now)`` through one processor, in chunks, with a tick
    every 50 chunks; a crash replaces the processor (a worker restarting)."""
    rng = random.Random(25)
    tally = _Tally()
    proc = PartitionProcessor(partition, config, now=NOW)
    started = time.perf_counter()
    now = NOW
    for first in range(0, records, CHUNK):
        now += 1.0
        chunk = [make(rng, offset, now) for offset in range(first, min(first + CHUNK, records))]
        tally.records += len(chunk)
        try:
            tally.output(proc.process(chunk, now))
            if first // CHUNK % 50 == 49:
                tally.output(proc.tick(now))
        except Exception as exc:
            tally.crashed(exc)
            proc = PartitionProcessor(partition, config, now=now)
    return tally.report(time.perf_counter() - started)


def _measurement_path(records: int) -> dict:
    def make(rng: random.Random, offset: int, now: float) -> SourceRecord:
        key = rng.choice([None, b"checkout", b"api", rng.randbytes(4)])
        return SourceRecord("m", 0, offset, now - rng.uniform(0, 5), key, fuzzed_value(rng, now))

    return _through(_config(1), 0, records, make)


def _forwards_to_mutate(config: PipelineConfig) -> list[bytes]:
    """Genuine forward and progress records, for mutated copies with genuine headers."""
    proc = PartitionProcessor(0, config, now=NOW)
    out = proc.process([SourceRecord("m", 0, i, NOW, None, value) for i, value in enumerate(_VALID * 5)], NOW)
    return [forward.value for forward in out.forwards] + [forward.value for forward in proc.progress(NOW).forwards]


def _header_path(records: int) -> dict:
    config = _config(2)
    genuine = _forwards_to_mutate(config)

    def make(rng: random.Random, offset: int, now: float) -> SourceRecord:
        headers = fuzzed_headers(rng)
        if headers and rng.random() < 0.5:
            value = _mutated(rng, rng.choice(genuine)) if rng.random() < 0.8 else rng.choice(genuine)
        else:
            value = fuzzed_value(rng, now) if rng.random() < 0.5 else rng.choice(_VALID)
        return SourceRecord("m", 1, offset, now - rng.uniform(0, 5), rng.choice([None, b"checkout"]), value, headers)

    return _through(config, 1, records, make)


def _valid_state(config: PipelineConfig) -> list[tuple[str, bytes]]:
    """A partition's state records: series with labels, an SLO tracker, a policy and its model,
    drift watches, an alert book."""
    proc = PartitionProcessor(0, config, now=NOW)
    values = [orjson.dumps({"service": service, "metric": metric, "value": 100.0 + i, "ok": i % 3 > 0,
                            "ts": NOW - 600 + i, "labels": {"k": str(i % 3)}})
              for i in range(300) for service, metric in (("checkout", "http"), ("api", "lat"))]
    proc.process([SourceRecord("m", 0, i, NOW, None, v) for i, v in enumerate(values)], NOW)
    proc.tick(NOW + 3600)
    writes, _ = proc.checkpoint(final=True)
    return [(key, value) for key, value in writes if value is not None]


def _changelog_path(records: int) -> dict:
    config = _config(1)
    valid = _valid_state(config)
    rng = random.Random(25)
    tally = _Tally()
    unreadable = 0
    later = [SourceRecord("m", 0, 10_000 + i, NOW + 3600, None, v) for i, v in enumerate(_VALID)]
    started = time.perf_counter()
    while tally.records < records:
        items = list(valid)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(items))
            items[at] = (items[at][0], _mutated(rng, items[at][1]))
        if rng.random() < 0.3:
            prefix = items[rng.randrange(len(items))][0][:4]
            items.append((prefix + rng.randbytes(6).decode("latin-1"), rng.randbytes(rng.randrange(64))))
        rng.shuffle(items)
        tally.records += len(items)
        try:
            proc = PartitionProcessor.restore(0, config, items, NOW + 3600)
            unreadable += proc.unreadable_state
            tally.output(proc.process(later, NOW + 3600))
            tally.output(proc.tick(NOW + 7200))
            list(proc.checkpoint(final=True)[0])
        except Exception as exc:
            tally.crashed(exc)
    return {**tally.report(time.perf_counter() - started), "state_records_unreadable": unreadable}


def _worker_path(broker: BenchBroker, records: int) -> dict:
    """Fuzzed records (with fuzzed headers and keys) over 2 partitions, then a worker reads them all."""
    prefix, partitions = f"{broker.namespace}fuzz", 2
    rng = random.Random(25)
    now = time.time()
    genuine = _forwards_to_mutate(_config(partitions))
    asyncio.run(_create_topics(broker, (prefix,), {prefix: partitions}))
    asyncio.run(_send(broker, f"{prefix}.measurements", [
        (i % partitions, rng.choice([None, b"checkout", rng.randbytes(3)]),
         fuzzed_value(rng, now) if rng.random() < 0.9 else _mutated(rng, rng.choice(genuine)),
         fuzzed_headers(rng)) for i in range(records)]))
    worker, port = _start_worker(broker, f"{prefix}.", partitions, {})
    started = time.perf_counter()
    try:
        _wait_ready(port, worker)
        # Done when nothing is left to read and the counts have not moved for 10 s (progress marks
        # keep arriving, so the records read never settle).
        counted, settled_at, failed_scrapes, page = -1.0, time.monotonic(), 0, ""
        while worker.poll() is None and time.monotonic() - settled_at < 10:
            time.sleep(1)
            try:
                page, _ = _scrape(port)
            except OSError:
                failed_scrapes += 1
                continue
            now_counted = (_metric(page, "slostream_ingest_measurements_accepted_total")
                           + _metric(page, "slostream_ingest_measurements_rejected_total{"))
            if now_counted != counted or _metric(page, "slostream_consumer_lag_records{"):
                counted, settled_at = now_counted, time.monotonic()
        consumed = _metric(page, "slostream_ingest_records_total")
        reasons = {line.split('reason="')[1].split('"')[0]: int(float(line.rsplit(" ", 1)[1]))
                   for line in page.splitlines()
                   if line.startswith("slostream_ingest_measurements_rejected_total{") and not line.endswith(" 0.0")}
        return {"records": records, "crashes": 0 if worker.poll() is None else 1,
                "records_consumed": int(consumed), "failed_scrapes": failed_scrapes,
                "accepted": int(_metric(page, "slostream_ingest_measurements_accepted_total")),
                "dead_lettered": reasons, "seconds": round(time.perf_counter() - started, 1)}
    finally:
        worker.terminate()
        worker.wait(60)


async def _send(broker: BenchBroker, topic: str, records: list[tuple[int, bytes | None, bytes, tuple]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = broker.client(AIOKafkaProducer, linger_ms=5, max_request_size=8 << 20)
    await producer.start()
    try:
        for partition, key, value, headers in records:
            # aiokafka takes header values as bytes only: a null value is sent as empty.
            await producer.send(topic, value, key=key, partition=partition,
                                headers=[(name, value or b"") for name, value in headers])
        await producer.flush()
    finally:
        await producer.stop()


def fuzz_counts(broker: BenchBroker) -> dict:
    return {"fuzz": {"measurements": _measurement_path(PIPELINE_RECORDS), "headers": _header_path(PIPELINE_RECORDS),
                     "changelog": _changelog_path(PIPELINE_RECORDS), "worker": _worker_path(broker, WORKER_RECORDS)}}
