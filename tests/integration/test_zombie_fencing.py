"""Two workers share the partitions; one is paused (SIGSTOP) past its session timeout, the other
takes its partitions, then the paused one resumes (SIGCONT): nothing it wrote as a member of its
old generation reaches the outputs or the changelog after the pause, and no rejected record of
the pause is lost."""

import asyncio
import base64
import re
import signal
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from slostream.io.producer import WRITER_HEADER
from tests.conftest import consume, produce

T0 = int(time.time()) // 60 * 60 - 3600
SERVICES = [f"svc{i}" for i in range(8)]  # over both partitions


def _measurements(start: int, stop: int) -> list[tuple[bytes, bytes]]:
    return [(s.encode(), orjson.dumps({"service": s, "metric": "latency_ms", "value": 1.0, "ts": T0 + t}))
            for t in range(start, stop) for s in SERVICES]


def _rejected(tag: str) -> list[tuple[bytes, bytes]]:
    """Records without value or ok (dead-lettered at once), marked ``tag``."""
    return [(s.encode(), orjson.dumps({"service": s, "metric": tag})) for s in SERVICES]


def _records(bootstrap: str, topics: list[str]) -> list[tuple[str, int, dict[str, bytes]]]:
    """(topic, CreateTime ms, headers) of every record of ``topics``."""
    async def run():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()  # metadata of every topic
            tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            out = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(r.topic, r.timestamp, dict(r.headers)) for r in batch]
            return out
        finally:
            await consumer.stop()
    return asyncio.run(run())


def test_paused_worker_writes_nothing_after_the_takeover(kafka, make_worker):
    prefix = make_worker.prefix
    env = {"SLOSTREAM_CHECKPOINT_INTERVAL_S": "0.2"}
    zombie = make_worker(**env).start()
    survivor = make_worker(**env).start()
    topic = f"{prefix}measurements"
    produce(kafka.bootstrap, topic, [], keyed=_measurements(0, 120) + _rejected("before"))
    consume(kafka.bootstrap, f"{prefix}deadletter", lambda ev: len(ev) >= len(SERVICES))
    time.sleep(2)  # both checkpointed
    zombie.process.send_signal(signal.SIGSTOP)
    paused_at = time.time()
    produce(kafka.bootstrap, topic, [], keyed=_measurements(120, 240) + _rejected("paused"))
    # The survivor takes every partition (after the session timeout) and dead-letters the pause's records.
    consume(kafka.bootstrap, f"{prefix}deadletter",
                      lambda ev: sum(b'"paused"' in base64.b64decode(e["data"]["value_b64"]) for e in ev)
                      >= len(SERVICES), timeout=60)
    zombie.process.send_signal(signal.SIGCONT)
    # It resumes with the old assignment and fetch positions, and rejoins; then new traffic.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and zombie.get("/ready")[0] != 200:
        time.sleep(0.2)
    produce(kafka.bootstrap, topic, [], keyed=_measurements(240, 300) + _rejected("after"))
    letters = consume(kafka.bootstrap, f"{prefix}deadletter",
                      lambda ev: sum(b'"after"' in base64.b64decode(e["data"]["value_b64"]) for e in ev)
                      >= len(SERVICES), timeout=60)

    paused = [e for e in letters if b'"paused"' in base64.b64decode(e["data"]["value_b64"])]
    assert {e["id"] for e in paused} and len({e["id"] for e in paused}) == len(SERVICES)
    # Every output and changelog record names its writer: the zombie's old generation wrote nothing after the pause.
    outputs = [f"{prefix}{name}" for name in ("sli", "deadletter", "alerts")] + [f"{prefix}slo-sli-state-changelog"]
    records = _records(kafka.bootstrap, outputs)
    writers = [(topic, ts, headers[WRITER_HEADER].decode()) for topic, ts, headers in records]
    assert writers and all(WRITER_HEADER in headers for _, _, headers in records)
    mine = [(topic, ts, int(writer.rsplit("/", 1)[1])) for topic, ts, writer in writers
            if writer.split("/")[1] == str(zombie.process.pid)]
    old_generations = {generation for _, ts, generation in mine if ts < paused_at * 1000}
    assert old_generations
    late = [(topic, ts) for topic, ts, generation in mine
            if ts >= paused_at * 1000 and generation <= max(old_generations)]
    assert late == []
    assert re.search(rb"group lease ran out", zombie.log_path.read_bytes())
    assert zombie.process.poll() is None and survivor.process.poll() is None
