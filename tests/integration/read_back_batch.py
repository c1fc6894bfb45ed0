"""Read partition 0 of the measurement topic as a worker does, in one process: first the read-back
of a forward's source record at offset 0 (``IngestService._holds``), then the worker's own consumer.
Print as JSON how many skipped batches each reported:
``python -m tests.integration.read_back_batch BOOTSTRAP TOPIC_PREFIX``.

A separate process, because the skipping fetcher (``io.undecodable``) is installed process-wide.
"""

import asyncio
import sys

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from slostream.config import load_settings
from slostream.io.app import create_app


async def main(bootstrap: str, prefix: str) -> None:
    settings = load_settings(None, {"SLOSTREAM_BROKER": f"kafka://{bootstrap}", "SLOSTREAM_TOPIC_PREFIX": prefix,
                                    "SLOSTREAM_PARTITIONS": "1"}, {})
    ingest = create_app(settings).ingest
    await ingest._holds(0, 0)
    await ingest.stop_reader()
    by_read_back = ingest.undecodable_batches
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(ingest.topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        await consumer.getmany(tp, timeout_ms=5000)
    finally:
        await consumer.stop()
    print(orjson.dumps({"read_back": by_read_back, "consumer": ingest.undecodable_batches - by_read_back}).decode())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
