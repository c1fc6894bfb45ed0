"""SLI events sent in batches land where Kafka's default partitioner puts their key."""

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from slostream.io.producer import key_hash


@pytest.mark.parametrize("partitions", [1, 3, 4, 12])
def test_key_hash_picks_the_default_partitioners_partition(partitions):
    rng = random.Random(7)
    keys = [b"", b"svc-1", b"x" * 40] + [bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
                                         for _ in range(500)]
    every = list(range(partitions))
    for key in keys:
        assert every[key_hash(key) % partitions] == DefaultPartitioner()(key, every, every)
