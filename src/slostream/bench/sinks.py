"""Alert sinks under a hanging webhook: how long a page takes to reach a real Alertmanager (Debian's
``prometheus-alertmanager``) while another sink, a webhook that accepts connections and never
answers, holds every delivery sent to it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np

from slostream.config import Secret, Settings
from slostream.core.alerts import fingerprint
from slostream.core.events import rfc3339
from slostream.io.broker import free_port
from slostream.io.sinks import AlertSinks

ALERTMANAGER_CONFIG = """
route:
  receiver: blackhole
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: blackhole
"""
SINK_PAGES = 500
SINK_PAGE_INTERVAL_S = 0.01


@contextlib.contextmanager
def alertmanager(workdir: Path) -> Iterator[str]:
    """A local Alertmanager on a free loopback port: its URL, once ready."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise RuntimeError("Alertmanager is missing: scripts/setup test installs Debian's prometheus-alertmanager")
    (workdir / "am.yml").write_text(ALERTMANAGER_CONFIG)
    port = free_port()
    with open(workdir / "alertmanager.log", "wb") as log:  # Alertmanager keeps its own descriptor
        process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'am.yml'}", f"--storage.path={workdir / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Alertmanager did not start; see {workdir / 'alertmanager.log'}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@contextlib.asynccontextmanager
async def hanging_webhook() -> AsyncIterator[tuple[str, list]]:
    """A webhook on loopback that reads each request and never answers: its URL, and the
    connections it holds."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", held
    finally:
        for writer in held:
            writer.close()
        server.close()


def page_event(number: int, at: float) -> dict:
    """A firing page as the alerts topic carries it."""
    labels = {"alertname": "BenchPage", "severity": "page", "slo": f"bench-{number}"}
    return {"type": "slostream.alert.firing", "data": {
        "labels": labels, "annotations": {}, "startsAt": rfc3339(at), "endsAt": "0001-01-01T00:00:00Z",
        "status": "firing", "fingerprint": fingerprint(labels)}}


async def pages_while_a_webhook_hangs(alertmanager_url: str, pages: int, interval_s: float) -> tuple[list[float], int]:
    """Submit ``pages`` pages, one every ``interval_s``, to Alertmanager and a hanging webhook: the
    seconds from each page's submission until Alertmanager accepted it, and the connections the
    webhook held meanwhile."""
    latencies: list[float] = []

    def delivered(sink: str, seconds: float) -> None:
        if sink == "alertmanager":
            latencies.append(seconds)

    async with hanging_webhook() as (hook_url, held):
        settings = Settings(alertmanager_url=alertmanager_url, webhook_urls=(Secret(hook_url),), alert_resend_s=3600.0)
        sinks = AlertSinks(settings, list, delivered)
        await sinks.start()
        try:
            for number in range(pages):
                sinks.submit(page_event(number, time.time()))
                await asyncio.sleep(interval_s)
            deadline = time.monotonic() + 60
            while len(latencies) < pages and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await sinks.stop()
        return latencies, len(held)


def sink_latency(workdir: str) -> dict:
    with alertmanager(Path(workdir)) as url:
        latencies, held = asyncio.run(pages_while_a_webhook_hangs(url, SINK_PAGES, SINK_PAGE_INTERVAL_S))
    return {
        "pages": SINK_PAGES,
        "pages_delivered": len(latencies),
        "webhook_connections_held": held,
        "alertmanager_page_latency_p50_s": round(float(np.percentile(latencies, 50)), 4),
        "alertmanager_page_latency_p99_s": round(float(np.percentile(latencies, 99)), 4),
        "alertmanager_page_latency_max_s": round(max(latencies), 4),
    }
