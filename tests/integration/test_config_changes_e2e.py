"""Through a worker: an SLO removed between restarts resolves its page and leaves no state key
(issue 25, point 7); every list of the JSON API is paged (point 9)."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from slostream.io.topics import STATE_TABLE
from slostream.pipeline.state_keys import SEP
from tests.conftest import consume, produce
from tests.integration.alert_streams import DEFINITIONS, alerts_of, incident_history

SLO = "checkout-availability"
WITHOUT_SLO = DEFINITIONS[DEFINITIONS.index("policies:"):]


def compacted(bootstrap: str, topic: str) -> dict[str, bytes | None]:
    """A topic read to its end as compaction leaves it: each key's newest value (None: deleted)."""

    async def run():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()  # fetches the metadata
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(parts)
            ends = await consumer.end_offsets(parts)
            latest: dict[str, bytes | None] = {}
            reading = set(parts)
            while reading:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    latest.update((record.key.decode(), record.value) for record in batch)
                reading = {tp for tp in reading if await consumer.position(tp) < ends[tp]}
            return latest
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_an_slo_removed_between_restarts_resolves_its_page_and_deletes_its_keys(kafka, make_worker, tmp_path):
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS)
    first = make_worker("removed", SLOSTREAM_DEFINITION_FILES=str(definitions)).start()
    prefix = make_worker.prefix
    base = float(int(time.time()) - 3 * 3600)
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=incident_history(base, 0, 7400, (7200, 7500)))
    page = alerts_of(consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "firing", "page")),
                     "firing", "page")[0]
    assert first.stop() == 0
    changelog = f"{prefix}removed-{STATE_TABLE}-changelog"

    def slo_keys(log: dict) -> dict:
        return {key: value for key, value in log.items()
                if key.split(SEP)[1] in ("S", "s") and key.endswith(SEP + SLO)}

    # Spilled open buckets' keys are deleted (None) as they close; the others hold the SLO's state.
    kept = {key: value for key, value in slo_keys(compacted(kafka.bootstrap, changelog)).items() if value is not None}
    assert kept

    definitions.write_text(WITHOUT_SLO)
    second = make_worker("removed", SLOSTREAM_DEFINITION_FILES=str(definitions)).start()
    events = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "resolved", "page"))
    resolved = alerts_of(events, "resolved", "page")
    assert [e["data"]["fingerprint"] for e in resolved] == [page["data"]["fingerprint"]]
    assert resolved[0]["data"]["status"] == "resolved" and resolved[0]["data"]["endsAt"] > page["data"]["startsAt"]
    firing = orjson.loads(second.get("/api/alerts")[1])["alerts"]
    assert [a for a in firing if "slo" in a["labels"]] == []  # the policy's alert, still configured, may fire
    assert second.stop() == 0
    deleted = slo_keys(compacted(kafka.bootstrap, changelog))
    assert deleted.keys() >= kept.keys()
    assert all(value is None for value in deleted.values())


def test_every_api_list_is_paged_with_a_cursor(kafka, make_worker, tmp_path):
    services = 230
    definitions = tmp_path / "slos.yaml"
    definitions.write_text("slos:\n" + "".join(
        f"  - {{name: slo-{n:03}, service: s{n}, metric: http, objective: 0.99, window: 1d, good: ok}}\n"
        for n in range(services)))
    worker = make_worker("paged", SLOSTREAM_DEFINITION_FILES=str(definitions)).start()
    now = time.time()
    produce(kafka.bootstrap, f"{make_worker.prefix}measurements", [],
            keyed=[(f"s{n}".encode(), orjson.dumps({"service": f"s{n}", "metric": "http", "ok": True, "ts": now}))
                   for n in range(services)])

    def pages(limit: int) -> tuple[list[str], list[str], int]:
        statuses, configured, cursor, count = [], [], "", 0
        while cursor is not None:
            status, body = worker.get(f"/api/slos?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
            assert status == 200
            page = orjson.loads(body)
            assert len(page["slos"]) <= limit and len(page["configured"]) <= limit
            statuses += [s["slo"] for s in page["slos"]]
            configured += page["configured"]
            cursor, count = page["next"], count + 1
        return statuses, configured, count

    names = [f"slo-{n:03}" for n in range(services)]
    deadline = time.monotonic() + 60
    while len(pages(1000)[0]) < services and time.monotonic() < deadline:
        time.sleep(0.5)
    statuses, configured, count = pages(100)
    assert statuses == configured == names  # each once, in order
    assert count == 3
    default = orjson.loads(worker.get("/api/slos")[1])
    assert len(default["slos"]) == 100 and default["next"] is not None
    assert worker.get("/api/slos?limit=0")[0] == 400
    assert worker.get("/api/alerts?cursor=forged")[0] == 400
    assert worker.stop() == 0
