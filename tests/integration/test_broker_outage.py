"""The broker restarts, or is away for longer than the session timeout, under a running worker
(Tansu on S3 storage keeps topics and offsets): the worker waits, says so, reconnects, and its
windows and alerts come out exact, each event id with one payload. The 3-minute outage is in the
bench (``slostream bench --only outage``); here the outage outlasts the session timeout, so the
worker is fenced and rejoins as it does after any longer one."""

import collections
import threading
import time

import orjson
import pytest

from tests.conftest import consume, produce
from tests.integration.alert_streams import DEFINITIONS, alerts_of, incident_history

CHUNK = 400


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
