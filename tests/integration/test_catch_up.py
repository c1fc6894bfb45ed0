"""A backlog written while no worker ran is caught up exactly: a day of unkeyed traffic over four
partitions, then a worker starts; or hours of it, then two workers, one held back."""

import asyncio
import signal
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


@pytest.mark.parametrize("stamped", ["when_measured", "when_replayed"])
def test_a_backlog_read_by_two_workers_one_paused_is_caught_up_exactly(kafka, make_worker, tmp_path, stamped):
    """Two workers share the four partitions; one is paused (SIGSTOP, within the session timeout)
    just after it starts reading. The other would read its partitions' six hours while the paused
    one's stay unread (the base ring of an SLO holds about one). Records stamped when measured: it
    holds them at its read-ahead limit until the paused one catches up. A replay, every record
    stamped within a second when re-sent: nothing holds it, and its series wait, holding the hours
    open, until the paused one has read its share."""
    t0 = (time.time() - 6 * 3600 - 600) // 60 * 60
    records = backlog(t0, 6 * 60, services=5, hosts=3)
    items = [m for _, batch in records for m in batch]
    end = t0 + 6 * 3600 + 300  # every series lives on a while later: its last backlog window closes
    closers = [(end, [{"service": f"svc-{s}", "metric": "http", "ok": True, "ts": end} for s in range(5)])] * PARTITIONS
    if stamped == "when_replayed":
        now = time.time()
        records = [(now, batch) for _, batch in records]
        closers = [(now + 1, batch) for _, batch in closers]
    broker = BenchBroker(Settings(broker=kafka.url), str(tmp_path))
    asyncio.run(send_backlog(broker, f"{make_worker.prefix}measurements", records + closers))
    env = {"SLOSTREAM_PARTITIONS": str(PARTITIONS), **ENV}
    # Started together, they join one generation (the broker holds a join for the rebalance timeout).
    fast, paused = make_worker(**env).start(wait_ready=False), make_worker(**env).start(wait_ready=False)
    paused.wait_ready()
    paused.process.send_signal(signal.SIGSTOP)
    try:
        fast.wait_ready()
        time.sleep(6)  # less than the session timeout: the paused one keeps its partitions
    finally:
        paused.process.send_signal(signal.SIGCONT)
    truth = truth_of(items)
    assert read_sli(kafka.bootstrap, make_worker.prefix, truth, timeout=120) == truth
    letters = consume(kafka.bootstrap, f"{make_worker.prefix}deadletter", lambda ev: False, timeout=2)
    assert [e["data"]["reason"] for e in letters] == []  # nothing too_late
    assert fast.stop() == 0 and paused.stop() == 0
