"""Produce one gzip record batch whose compressed bytes are not gzip (valid CRC), then one good
record: ``python -m tests.integration.corrupt_batch BOOTSTRAP TOPIC PARTITION GOOD_JSON``.

A separate process, because aiokafka must load its pure-Python record builder (whose gzip
encoder can be replaced) before anything imports its C extension.
"""

import asyncio
import os
import sys

os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"

import aiokafka.record.default_records as records
from aiokafka import AIOKafkaProducer


async def main(bootstrap: str, topic: str, partition: int, good: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip")
    await producer.start()
    try:
        real = records.gzip_encode
        records.gzip_encode = lambda payload, *args, **kwargs: b"these bytes are not gzip"
        await producer.send_and_wait(topic, good * 20, partition=partition)  # long enough to be "compressed"
        records.gzip_encode = real
        await producer.send_and_wait(topic, good, partition=partition)
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()))
