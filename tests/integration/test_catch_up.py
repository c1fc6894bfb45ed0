"""A backlog written while no worker ran is caught up exactly: a day of unkeyed traffic over four
partitions, then a worker starts."""

import asyncio
import time

import pytest

from slostream.bench.catchup import backlog, send_backlog
from slostream.bench.common import BenchBroker
from slostream.config import Settings
from tests.conftest import consume
from tests.integration.streams import PARTITIONS, in_process_events, read_sli, truth_of

ENV = {"SLOSTREAM_GRACE_S": "2", "SLOSTREAM_IDLE_AFTER_S": "3"}


def test_a_day_of_unkeyed_backlog_is_caught_up_exactly(kafka, make_worker, tmp_path):
    t0 = (time.time() - 86400 - 600) // 60 * 60
    records = backlog(t0, 24 * 60, services=5, hosts=3)  # coarse: 30 measurements a minute
    items = [m for _, batch in records for m in batch]
    broker = BenchBroker(Settings(broker=kafka.url), str(tmp_path))
    asyncio.run(send_backlog(broker, f"{make_worker.prefix}measurements", records))  # no worker runs
    worker = make_worker(SLOSTREAM_PARTITIONS=str(PARTITIONS), **ENV).start()
    truth = truth_of(items)
    assert read_sli(kafka.bootstrap, make_worker.prefix, truth, timeout=120) == truth
    letters = consume(kafka.bootstrap, f"{make_worker.prefix}deadletter", lambda ev: False, timeout=2)
    assert [e["data"]["reason"] for e in letters] == []  # nothing too_late
    # Every window as one partition reading the day in order reports it.
    expected = in_process_events(sorted(items, key=lambda m: m["ts"]), ENV, "sli", per_record=30)
    got = {e["id"]: e for e in consume(kafka.bootstrap, f"{make_worker.prefix}sli",
                                       lambda ev: expected.keys() <= {e["id"] for e in ev}, timeout=30)}
    # The mean is a float sum, added in the order measurements arrived: equal to the last bits.
    assert {i: {**got[i]["data"], "mean": pytest.approx(got[i]["data"]["mean"], rel=1e-12)} for i in expected} == {
        i: e["data"] for i, e in expected.items()}
    assert worker.stop() == 0
