"""Alert sinks against the real thing: Debian's Alertmanager (queried with amtool) and an HTTP webhook."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import orjson
import pytest

from slostream.bench.sinks import alertmanager as run_alertmanager
from slostream.bench.sinks import pages_while_a_webhook_hangs
from tests.conftest import consume, produce
from tests.integration.alert_streams import DEFINITIONS, alerts_of, incident_history


@pytest.fixture
def alertmanager(tmp_path):
    assert shutil.which("amtool"), "amtool is missing: scripts/setup test installs Debian's prometheus-alertmanager"
    with run_alertmanager(tmp_path) as url:
        yield url


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


def test_pages_reach_alertmanager_while_a_webhook_hangs(alertmanager):
    """Each sink has its own queue and task: a webhook that never answers holds only its own."""
    latencies, held = asyncio.run(pages_while_a_webhook_hangs(alertmanager, 50, 0.01))
    assert held >= 1  # the webhook held a delivery the whole time
    assert len(latencies) == 50
    pages = {a["labels"]["slo"] for a in amtool_alerts(alertmanager) if a["labels"].get("alertname") == "BenchPage"}
    assert pages == {f"bench-{n}" for n in range(50)}
