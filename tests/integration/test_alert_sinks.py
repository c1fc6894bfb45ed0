"""Alert sinks against the real thing: Debian's Alertmanager (queried with amtool) and an HTTP webhook."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import orjson
import pytest

from slostream.io.broker import free_port
from tests.conftest import consume, produce
from tests.integration.alert_streams import DEFINITIONS, alerts_of, incident_history

AM_CONFIG = """
route:
  receiver: blackhole
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: blackhole
"""


@pytest.fixture
def alertmanager(tmp_path):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary and shutil.which("amtool"), \
        "Alertmanager is missing: scripts/setup test installs Debian's prometheus-alertmanager"
    (tmp_path / "am.yml").write_text(AM_CONFIG)
    port = free_port()
    with open(tmp_path / "alertmanager.log", "wb") as log:  # Alertmanager keeps its own descriptor
        process = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Alertmanager did not start; see {tmp_path / 'alertmanager.log'}")
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(10)


def amtool_alerts(url: str) -> list[dict]:
    result = subprocess.run(["amtool", "alert", "query", f"--alertmanager.url={url}", "-o", "json"],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout or "[]")


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alertmanager_and_webhook_receive_firing_then_resolved(kafka, make_worker, tmp_path, alertmanager):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.received = []
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS)
    worker = make_worker("sinks", SLOSTREAM_DEFINITION_FILES=str(definitions),
                         SLOSTREAM_ALERTMANAGER_URL=alertmanager, SLOSTREAM_ALERT_RESEND_S="2",
                         SLOSTREAM_WEBHOOK_URLS=f"http://127.0.0.1:{server.server_port}/hook").start()
    prefix = make_worker.prefix
    base = float(int(time.time()) - 3 * 3600)
    outage = (7200, 7500)
    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=incident_history(base, 0, 7400, outage))
    events = consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "firing", "page"))
    fingerprint = alerts_of(events, "firing", "page")[0]["data"]["fingerprint"]

    deadline = time.monotonic() + 30
    active = []
    while time.monotonic() < deadline:
        active = [a for a in amtool_alerts(alertmanager) if a["labels"].get("slo") == "checkout-availability"
                  and a["labels"].get("severity") == "page"]
        if active:
            break
        time.sleep(0.5)
    assert active, "the page never reached Alertmanager"
    assert active[0]["labels"]["alertname"] == "SLOErrorBudgetBurn"
    assert active[0]["annotations"]["runbook_url"] == "https://runbooks.example/checkout"
    assert active[0]["status"]["state"] == "active"
    time.sleep(5)  # outlives several resend intervals: re-posting must not duplicate it
    assert len([a for a in amtool_alerts(alertmanager) if a["labels"].get("severity") == "page"]) == 1

    produce(kafka.bootstrap, f"{prefix}measurements", [], keyed=incident_history(base, 7400, 9900, outage))
    consume(kafka.bootstrap, f"{prefix}alerts", lambda ev: alerts_of(ev, "resolved", "page"), timeout=90)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(a["labels"].get("severity") == "page"
                                              for a in amtool_alerts(alertmanager)):
        time.sleep(0.5)
    assert not any(a["labels"].get("severity") == "page" for a in amtool_alerts(alertmanager)), \
        "Alertmanager still shows the page after it resolved"

    def hooked() -> list[str]:
        return [e["type"] for e in Receiver.received if e.get("data", {}).get("fingerprint") == fingerprint]

    deadline = time.monotonic() + 30  # the webhook is a sink of its own: it may post after Alertmanager's
    while time.monotonic() < deadline and len(hooked()) < 2:
        time.sleep(0.2)
    assert hooked() == ["slostream.alert.firing", "slostream.alert.resolved"]
    _, metrics = worker.get("/metrics")
    assert b'slostream_sink_deliveries_total{outcome="delivered",sink="alertmanager"}' in metrics
    server.shutdown()
    # The page is over; the ticket (3x over 1d and 2h) may still hold, uninhibited now.
    still = [a for a in orjson.loads(worker.get("/api/alerts")[1])["alerts"] if a["labels"]["severity"] == "page"]
    assert still == []
    assert worker.stop() == 0
