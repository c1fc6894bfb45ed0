"""What the bench parts share: the broker and its clients, data sets, producing, topics, a worker
process and its metrics."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from slostream.config import Settings
from slostream.core.drift_rules import DriftRule, DriftRules
from slostream.io.broker import free_port
from slostream.io.security import SECURITY_ENV, kafka_client_options, security_environment

SERVICES = 10
UNKEYED_PARTITIONS = 4
SPAN_S = 600  # event time covered by each data set
REPORT_S = 60
GRACE_S = 30
DRIFT_OFF = DriftRules(default=DriftRule(enabled=False))  # to measure what drift, on by default, costs

Client = TypeVar("Client", AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient)


class BenchBroker:
    """The broker a bench run uses (the embedded one, or ``--broker``) and the one way the bench
    reaches it: every client it makes and every worker it starts gets the settings' security."""

    def __init__(self, settings: Settings, secrets_dir: str, namespace: str = ""):
        self.settings = settings
        self.url = settings.broker
        self.bootstrap = settings.broker_hosts
        # Put before every topic and group name: an external broker keeps what earlier runs made.
        self.namespace = namespace
        self.worker_security = security_environment(settings, secrets_dir)

    def client(self, kind: type[Client], **options) -> Client:
        """An aiokafka producer, consumer or admin client of this broker."""
        return kind(bootstrap_servers=self.bootstrap, **kafka_client_options(self.settings), **options)

    def worker_env(self, env: dict[str, str]) -> dict[str, str]:
        """A worker's environment: this process's with the bench's security in place of any
        inherited, then ``env``."""
        inherited = {name: value for name, value in os.environ.items() if name not in SECURITY_ENV}
        return {**inherited, **self.worker_security, **env}


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


async def _produce(broker: BenchBroker, topic: str, payloads: list[bytes], partitions: int = 1,
                   markers: list[bytes] = (), compression: str | None = None) -> None:
    """Records round-robin over the topic's partitions, as unkeyed producers spread them; then every
    marker to every partition."""
    producer = broker.client(AIOKafkaProducer, linger_ms=5, max_batch_size=1 << 20, max_request_size=8 << 20,
                             compression_type=compression)
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


async def _ceiling(broker: BenchBroker, topic: str, records: int) -> tuple[float, int]:
    consumer = broker.client(AIOKafkaConsumer, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
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
    """When the worker was first asked and found ready (what the bench's rates count from)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with code {worker.returncode} before it was ready")
        asked = time.time()  # a busy worker answers late: the answer's time can follow all its work
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                if response.status == 200:
                    return asked
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.01)
    raise RuntimeError("worker did not become ready")


def counted_from(launched: float, ready_at: float, last: float) -> float:
    """When a worker's run is timed from: when it was found ready, or, for a run it finished before
    it said so (the worker reads as soon as it has its partitions, a moment before ``/ready``
    answers), from its launch, start-up included: slower, never negative.

    >>> counted_from(launched=10.0, ready_at=20.0, last=25.0), counted_from(10.0, 20.0, last=19.5)
    (20.0, 10.0)
    """
    return ready_at if last > ready_at else launched


async def _last_sli_time(broker: BenchBroker, topic: str, expected: int, timeout: float) -> float:
    consumer = broker.client(AIOKafkaConsumer, enable_auto_commit=False, auto_offset_reset="earliest")
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


def _start_worker(broker: BenchBroker, prefix: str, partitions: int,
                  env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "slostream", "run", "--broker", broker.url, "--topic-prefix", prefix,
         "--partitions", str(partitions), "--web-port", str(port), "--app-id", f"bench-{prefix.strip('.')}"],
        env=broker.worker_env({"SLOSTREAM_LOG_LEVEL": "warning", **env}),
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


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


TOPICS = ("measurements", "repartition", "sli", "deadletter", "alerts", "breaches", "control")


async def _create_topics(broker: BenchBroker, prefixes: tuple[str, ...],
                         partitions: dict[str, int] | None = None) -> None:
    """Every topic of each prefix; the measurement and repartition topics with ``partitions[prefix]``
    partitions (1)."""
    admin = broker.client(AIOKafkaAdminClient)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(f"{p}.{name}", (partitions or {}).get(p, 1) if name in ("measurements", "repartition") else 1, 1)
            for p in prefixes for name in TOPICS])
    finally:
        await admin.close()


async def _prepare(broker: BenchBroker, sets: dict[str, tuple[list[bytes], int]]) -> None:
    """One topic set per worker run (a run's SLI output must not mix with another's):
    prefix -> (payloads, partitions of its measurement topic)."""
    await _create_topics(broker, tuple(sets), {prefix: partitions for prefix, (_, partitions) in sets.items()})
    for prefix, (payloads, partitions) in sets.items():
        # The markers go to every partition: a series read from several partitions closes a window
        # when all of them have passed it (or after idle_after_s, 30 s, for one that stopped).
        await _produce(broker, f"{prefix}.measurements", payloads[:-SERVICES], partitions,
                       markers=payloads[-SERVICES:])
