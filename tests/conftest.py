"""Shared fixtures. Integration tests talk to a real Kafka-protocol broker over TCP.

The broker is the embedded Tansu by default, or Apache Kafka in a container when
Docker exists and ``SLOSTREAM_TEST_KAFKA=testcontainers``. A broker that cannot
start fails the tests; it never skips them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from slostream.io.broker import EmbeddedBroker, S3Server, free_port


def pytest_collection_modifyitems(items):
    """The tests in ``tests/integration`` use a real broker and start workers: they are marked
    ``broker`` and ``slow`` (``-m "not broker"`` runs the pure tests)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.broker)
            item.add_marker(pytest.mark.slow)


class Background:
    """A command started as soon as the tests are collected, when a selected test asks for it by
    the fixture ``name``: ``slostream demo`` runs 75 s of wall time on its own broker, mostly
    waiting, so it runs while the tests before it run. Its test reads the outcome (``result``)."""

    started: dict[str, Background] = {}  # noqa: RUF012

    def __init__(self, name: str, args: list[str], timeout: float):
        import tempfile

        self.args, self.timeout = args, timeout
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 (open while the command runs)
        self.err = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "slostream", *args], stdout=self.out,
                                        stderr=self.err)
        self.deadline = time.monotonic() + timeout
        Background.started[name] = self

    def result(self) -> subprocess.CompletedProcess:
        """The finished command's outcome, as ``subprocess.run(..., capture_output=True, text=True,
        timeout=...)`` gives it, the timeout counted from its start."""
        try:
            self.process.wait(max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, self._read(self.out),
                                           self._read(self.err))

    @staticmethod
    def _read(file) -> str:
        file.seek(0)
        return file.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


BACKGROUND = {"demo_run": (["demo", "--duration", "75"], 180.0)}


def pytest_collection_finish(session):
    """Starts each background command (``BACKGROUND``) that a selected test uses."""
    if session.config.option.collectonly:
        return
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ()) if name in BACKGROUND}
    for name in sorted(wanted):
        Background(name, *BACKGROUND[name])


def pytest_sessionfinish(session):
    for background in Background.started.values():
        background.stop()


@pytest.fixture(scope="session")
def demo_run() -> Background:
    """``slostream demo --duration 75``, started when the tests were collected."""
    return Background.started["demo_run"]


@dataclass
class Broker:
    url: str
    bootstrap: str


@pytest.fixture(scope="session")
def kafka():
    if os.environ.get("SLOSTREAM_TEST_KAFKA") == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            bootstrap = container.get_bootstrap_server()
            yield Broker(f"kafka://{bootstrap}", bootstrap)
        return
    broker = EmbeddedBroker()
    try:
        broker.start()
    except Exception as exc:  # a broker test must fail, never skip
        pytest.fail(f"the embedded Kafka broker (Tansu) could not start: {exc}")
    try:
        yield Broker(broker.url, broker.bootstrap)
    finally:
        broker.stop()


_names = itertools.count()


class Worker:
    """A real ``slostream run`` process."""

    def __init__(self, broker: Broker, prefix: str, app_id: str, env: dict[str, str], log_path,
                 config: str | None = None):
        self.config = config
        self.broker = broker
        self.prefix = prefix
        self.app_id = app_id
        self.port = free_port()
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> Worker:
        env = {**os.environ, "SLOSTREAM_GRACE_S": "2", "SLOSTREAM_IDLE_AFTER_S": "3",
               "SLOSTREAM_PARTITIONS": "2", "SLOSTREAM_LOG_LEVEL": "info", **self.env}
        with open(self.log_path, "ab") as log:  # the worker keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "slostream", "run", "--broker", self.broker.url,
                 "--topic-prefix", self.prefix, "--app-id", self.app_id, "--web-port", str(self.port),
                 *(["--config", self.config] if self.config else [])],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready()
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early ({self.process.returncode}); see {self.log_path}")
            try:
                if self.get("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout}s; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        return self.process.wait(timeout)


@pytest.fixture
def s3_kafka():
    """A broker of its own on S3 storage (a local moto server): ``restart()`` keeps its port, topics
    and committed offsets."""
    storage = S3Server()
    try:
        broker = EmbeddedBroker(storage=storage.start()).start()
    except Exception as exc:  # a broker test must fail, never skip
        storage.stop()
        pytest.fail(f"the S3-backed Tansu broker could not start: {exc}")
    try:
        yield broker
    finally:
        broker.stop()
        storage.stop()


@pytest.fixture
def make_worker(kafka, tmp_path):
    yield from _workers(kafka, tmp_path)


@pytest.fixture
def make_s3_worker(s3_kafka, tmp_path):
    """``make_worker`` on ``s3_kafka``."""
    yield from _workers(Broker(s3_kafka.url, s3_kafka.bootstrap), tmp_path)


def _workers(kafka: Broker, tmp_path):
    workers: list[Worker] = []
    prefix = f"t{next(_names)}-{os.getpid()}."

    def factory(app_id: str = "slo", config: str | None = None, **env: str) -> Worker:
        """A worker of group ``app_id``, with the YAML settings file ``config`` and settings in ``env``."""
        worker = Worker(kafka, prefix, f"{prefix}{app_id}", env, tmp_path / f"worker{len(workers)}.log", config)
        workers.append(worker)
        return worker

    factory.prefix = prefix
    yield factory
    for worker in workers:
        if worker.process is not None and worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(10)


def produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = b"k",
            keyed: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send ``values`` under one key, or ``keyed`` (key, value) pairs in order."""
    pairs = keyed if keyed is not None else [(key, v) for v in values]

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 << 20)
        await producer.start()
        try:
            for k, value in pairs:
                await producer.send(topic, value, key=k)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def consume(bootstrap: str, topic: str, until, timeout: float = 60.0) -> list[dict]:
    """Read a topic from the start until ``until(events)`` holds or the time is up."""

    async def run():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic)
            deadline = time.monotonic() + 10
            while not parts and time.monotonic() < deadline:
                await consumer.force_metadata_update()
                parts = consumer.partitions_for_topic(topic)
            consumer.assign([TopicPartition(topic, p) for p in parts or {0}])
            events: list[dict] = []
            deadline = time.monotonic() + timeout
            while not until(events) and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    events.extend(orjson.loads(r.value) for r in batch)
            return events
        finally:
            await consumer.stop()

    return asyncio.run(run())
