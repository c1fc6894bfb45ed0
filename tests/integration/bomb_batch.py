"""Produce one gzip record batch (valid CRC) whose payload inflates to INFLATED_MIB mebibytes of
zeros, a decompression bomb: ``python -m tests.integration.bomb_batch BOOTSTRAP TOPIC PARTITION
INFLATED_MIB``. The bomb is compressed in a stream, so this process never holds it inflated.

A separate process, because aiokafka must load its pure-Python record builder (whose gzip
encoder can be replaced) before anything imports its C extension.
"""

import asyncio
import os
import sys
import zlib

os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"

import aiokafka.record.default_records as records
from aiokafka import AIOKafkaProducer


def bomb(mebibytes: int) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)  # a gzip stream
    zeros = bytes(1 << 20)
    return b"".join([deflater.compress(zeros) for _ in range(mebibytes)] + [deflater.flush()])


async def main(bootstrap: str, topic: str, partition: int, mebibytes: int) -> None:
    payload = bomb(mebibytes)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", max_request_size=8 << 20)
    await producer.start()
    try:
        records.gzip_encode = lambda data, *args, **kwargs: payload
        # Longer than the bomb: aiokafka sends a batch uncompressed when compressing does not shrink it.
        await producer.send_and_wait(topic, bytes(2 * len(payload)), partition=partition)
    finally:
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
