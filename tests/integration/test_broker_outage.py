"""The broker restarts, or is away for longer than the session timeout, under a running worker
(Tansu on S3 storage keeps topics and offsets): the worker waits, says so, reconnects, and its
windows and alerts come out exact, each event id with one payload. The 3-minute outage is in the
bench (``slostream bench --only outage``); here the outage outlasts the session timeout, so the
worker is fenced and rejoins as it does after any longer one."""

import collections
import re
import signal
import subprocess
import threading
import time

import orjson
import pytest

from tests.conftest import consume, produce
from tests.integration.alert_streams import DEFINITIONS, alerts_of, incident_history
from tests.integration.streams import read_sli, send_records, truth_of

CHUNK = 400
SERVICES = 3
# A worker told to stop while the broker is down exits within this (see README, Zombie writers).
STOP_BOUND_S = 30.0


@pytest.mark.parametrize("down_s", [0, 15], ids=["restart", "outage_15s"])
def test_broker_restart_or_outage_loses_and_doubles_nothing(s3_kafka, make_s3_worker, tmp_path, down_s):
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS)
    prefix = make_s3_worker.prefix
    worker = make_s3_worker(SLOSTREAM_DEFINITION_FILES=str(definitions), SLOSTREAM_CHECKPOINT_INTERVAL_S="0.2").start()
    base = float(int(time.time()) // 60 * 60 - 3 * 3600)
    # Two hours of good requests, then failures from 7200 s on: the ticket and the page fire.
    records = incident_history(base, 0, 7560, (7200, 7500))
    closer = {"service": "checkout", "metric": "http", "ts": base + 7700, "ok": True}
    records.append((b"checkout", orjson.dumps(closer)))
    chunks = [records[i:i + CHUNK] for i in range(0, len(records), CHUNK)]
    halfway, go_on = threading.Event(), threading.Event()

    def feed():
        for number, chunk in enumerate(chunks):
            if number == len(chunks) // 2:
                halfway.set()
                go_on.wait()
            produce(s3_kafka.bootstrap, f"{prefix}measurements", [], keyed=chunk)
            time.sleep(0.05)

    feeder = threading.Thread(target=feed)
    feeder.start()
    assert halfway.wait(60)
    s3_kafka.restart(down_s)  # the worker still reading the first half
    go_on.set()
    feeder.join()

    truth = collections.Counter((orjson.loads(value)["metric"], int(orjson.loads(value)["ts"] // 60 * 60))
                                for _, value in records[:-1])
    events = consume(s3_kafka.bootstrap, f"{prefix}sli", lambda ev: len({e["id"] for e in ev}) >= len(truth),
                     timeout=120)
    payloads = collections.defaultdict(set)
    for event in events:
        payloads[event["id"]].add(orjson.dumps(event["data"], option=orjson.OPT_SORT_KEYS))
    assert [key for key, values in payloads.items() if len(values) > 1] == []
    counts = {(e["data"]["metric"], e["data"]["window_start"]): e["data"]["count"] for e in events}
    assert counts == truth
    alerts = consume(s3_kafka.bootstrap, f"{prefix}alerts", lambda ev: len(alerts_of(ev, "firing", "page")) >= 1)
    assert alerts_of(alerts, "firing", "page") and alerts_of(alerts, "firing", "ticket")
    alert_payloads = collections.defaultdict(set)
    for event in alerts:
        alert_payloads[event["id"]].add(orjson.dumps(event["data"], option=orjson.OPT_SORT_KEYS))
    assert [key for key, values in alert_payloads.items() if len(values) > 1] == []
    assert worker.process.poll() is None  # it waited, it did not exit
    log = worker.log_path.read_bytes()
    if down_s:
        assert b"broker unreachable since" in log and b"broker back after" in log
    assert worker.stop() == 0


def _measurements(base: float, start_s: int, stop_s: int) -> list[dict]:
    return [{"service": f"svc{n}", "metric": "http", "ts": base + t, "ok": t % 7 != 0}
            for t in range(start_s, stop_s, 5) for n in range(SERVICES)]


def _keyed(items: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(item["service"].encode(), orjson.dumps(item)) for item in items]


@pytest.mark.parametrize("broker_state", ["stopped", "frozen"])
def test_sigterm_during_outage_stops_in_bound_and_successor_is_exact(s3_kafka, make_s3_worker, broker_state):
    """SIGTERM while the broker is stopped, or frozen (SIGSTOP: it takes connections and answers
    nothing): the worker exits within ``STOP_BOUND_S`` with code 0, and a successor started once the
    broker is back replays from the last commit, every window exact. (Frozen, the stopped worker's
    last changelog batch can land after it, with no fence behind it: the successor fences first.)"""
    prefix = make_s3_worker.prefix
    # Event time only moves with the data here: an idle watermark would close the window the stop
    # cuts in two while the test waits for the successor.
    settings = {"SLOSTREAM_CHECKPOINT_INTERVAL_S": "0.2", "SLOSTREAM_IDLE_AFTER_S": "3600"}
    first = make_s3_worker(**settings).start()
    base = float(int(time.time()) // 60 * 60 - 3 * 3600)
    before, after = _measurements(base, 0, 1830), _measurements(base, 1830, 3600)  # cut inside a window
    send_records(s3_kafka.bootstrap, f"{prefix}measurements", _keyed(before))
    closed_before = {key: n for key, n in truth_of(before).items() if key[1] < base + 1740}
    assert read_sli(s3_kafka.bootstrap, prefix, closed_before) == closed_before  # the first worker is at work

    if broker_state == "stopped":
        s3_kafka.stop()
        deadline = time.monotonic() + 10
        while b"broker unreachable since" not in first.log_path.read_bytes():  # the worker sees it gone
            assert time.monotonic() < deadline, f"the worker did not see the broker go; see {first.log_path}"
            time.sleep(0.1)
    else:
        s3_kafka.process.send_signal(signal.SIGSTOP)
        time.sleep(2)  # requests sent now wait for an answer
    asked = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    try:
        code = first.process.wait(STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running {STOP_BOUND_S:.0f} s after SIGTERM with the broker "
                             f"{broker_state}; see {first.log_path}") from None
    finally:
        if broker_state == "frozen":
            s3_kafka.process.send_signal(signal.SIGCONT)
    stop_s = time.monotonic() - asked
    assert code == 0, f"exit code {code} after {stop_s:.1f} s; see {first.log_path}"
    if broker_state == "stopped":
        assert b"stopping with the broker unreachable since" in first.log_path.read_bytes()
        s3_kafka.start()

    successor = make_s3_worker(**settings).start()
    closers = [{"service": f"svc{n}", "metric": "http", "ts": base + 3900, "ok": True} for n in range(SERVICES)]
    send_records(s3_kafka.bootstrap, f"{prefix}measurements", _keyed(after + closers))
    truth = truth_of(before + after)
    assert read_sli(s3_kafka.bootstrap, prefix, truth, timeout=120) == truth
    # Every partition's state is recovered whole (frozen, without the start-up fence, one came back
    # without its checkpoint in every run; exact only when replaying happened to make up for it).
    restored = re.findall(rb"partition \d+: restored (\d+) series and \d+ SLOs, resuming after offset (-?\d+)",
                          successor.log_path.read_bytes())
    assert len(restored) == 2 and all(int(series) > 0 and int(offset) >= 0 for series, offset in restored), restored
