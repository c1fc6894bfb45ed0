"""Alert sinks: Alertmanager's API v2 and generic webhooks.

Each sink (Alertmanager, each webhook) has a bounded queue and a delivery task of its own, so a
slow or dead endpoint never blocks the stream nor another sink: while a webhook hangs, pages still
reach Alertmanager at once. A full queue drops its oldest item (counted per sink, and logged when a
sink starts dropping); each delivery is retried with exponential backoff.

Alertmanager semantics: a firing alert is posted without ``endsAt`` and
re-posted every ``resend_s`` while it fires (Alertmanager resolves alerts it
stops hearing about after its ``resolve_timeout``); a resolved alert is
posted once with ``endsAt`` (``send_resolved``). Alerts silenced in
slostream are not posted; acknowledged ones are, with ``acknowledged_by``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import aiohttp
import mode

from slostream.config import Secret, Settings, redact_url

log = logging.getLogger("slostream.sinks")

QUEUE_LIMIT = 10_000  # per sink
MAX_ATTEMPTS = 8
BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 30.0
ATTEMPT_TIMEOUT_S = 10.0


def alertmanager_payload(alert: dict) -> dict:
    """Alertmanager's postable alert from slostream's alert model."""
    body = {"labels": alert["labels"], "annotations": alert["annotations"], "startsAt": alert["startsAt"]}
    if alert["status"] == "resolved":
        body["endsAt"] = alert["endsAt"]
    return body


def alertmanager_headers(settings: Settings) -> dict[str, str]:
    """The Authorization header for Alertmanager (or the proxy in front of it), if one is set."""
    if settings.alertmanager_bearer_token is not None:
        return {"Authorization": f"Bearer {settings.alertmanager_bearer_token.reveal()}"}
    if settings.alertmanager_password is not None:
        login = aiohttp.encode_basic_auth(settings.alertmanager_username, settings.alertmanager_password.reveal())
        return {"Authorization": login}
    return {}


class Sink:
    """One endpoint: its queue of bodies (each with the monotonic time it was queued), its counts.
    Its ``name`` is what logs and metrics show: never the URL, which often holds a token."""

    def __init__(self, name: str, url: Secret, on_delivered: Callable[[str, float], None],
                 headers: dict[str, str] | None = None):
        self.name = name
        self.url = url
        self.headers = headers or {}
        self.on_delivered = on_delivered  # (name, seconds from queued to accepted)
        self.queue: deque[tuple[float, object]] = deque()
        self.wakeup = asyncio.Event()
        self.delivered = self.failed = self.dropped = 0
        self._dropping = False  # dropping since the queue last had room: logged once

    def put(self, body) -> None:
        if len(self.queue) >= QUEUE_LIMIT:
            self.queue.popleft()
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("sink %s: queue full (%d alerts), dropping the oldest", self.name, QUEUE_LIMIT)
        elif self._dropping and len(self.queue) < QUEUE_LIMIT // 2:
            self._dropping = False
        self.queue.append((time.monotonic(), body))
        self.wakeup.set()

    async def run(self, session: aiohttp.ClientSession, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            if not self.queue:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout=1.0)
                except TimeoutError:
                    continue
            if self.queue:
                queued_at, body = self.queue.popleft()
                if await self._post_with_retries(session, body):
                    self.delivered += 1
                    self.on_delivered(self.name, time.monotonic() - queued_at)
                else:
                    self.failed += 1

    async def _post_with_retries(self, session: aiohttp.ClientSession, body) -> bool:
        url = self.url.reveal()
        delay = BACKOFF_START_S
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with session.post(url, json=body, headers=self.headers) as response:
                    if response.status < 300:
                        return True
                    if 400 <= response.status < 500 and response.status != 429:
                        text = await response.text()
                        log.error("sink %s refused an alert (%d: %s); not retried", self.name, response.status,
                                  text[:200])
                        return False
                    problem = f"HTTP {response.status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # aiohttp puts the URL in some errors' text
                problem = repr(exc).replace(url, redact_url(url))
            if attempt == MAX_ATTEMPTS:
                break
            log.warning("sink %s: %s; retry %d in %.1fs", self.name, problem, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP_S)
        log.error("sink %s: gave up after %d attempts", self.name, MAX_ATTEMPTS)
        return False


class AlertSinks(mode.Service):
    """Alertmanager, and the webhooks named ``webhook-1``, ``webhook-2``, ... (in the order of
    ``webhook_urls``)."""

    def __init__(self, settings: Settings, firing_alerts: Callable[[], list[dict]],
                 on_delivered: Callable[[str, float], None], **kwargs):
        super().__init__(**kwargs)
        self.resend_s = settings.alert_resend_s
        self.firing_alerts = firing_alerts
        base = settings.alertmanager_url.rstrip("/") if settings.alertmanager_url else None
        self.alertmanager = None if base is None else Sink(
            "alertmanager", Secret(f"{base}/api/v2/alerts"), on_delivered, alertmanager_headers(settings))
        self.webhooks = [Sink(f"webhook-{number}", url, on_delivered)
                         for number, url in enumerate(settings.webhook_urls, 1)]
        self.sinks = [*([self.alertmanager] if self.alertmanager else []), *self.webhooks]
        self.session: aiohttp.ClientSession | None = None

    def submit(self, event: dict) -> None:
        """Queue one alert CloudEvent for every sink; never waits."""
        alert = event["data"]
        if self.alertmanager is not None and event["type"] != "slostream.alert.silenced":
            self.alertmanager.put([alertmanager_payload(alert)])
        for webhook in self.webhooks:
            webhook.put(event)

    async def on_start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S))
        for sink in self.sinks:
            self.add_future(sink.run(self.session, lambda: self.should_stop))

    async def on_stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    @mode.Service.task
    async def _resend(self) -> None:
        while not self.should_stop and self.alertmanager is not None:
            await asyncio.sleep(self.resend_s)
            firing = [alertmanager_payload(a) for a in self.firing_alerts() if not a.get("silencedBy")]
            if firing:
                self.alertmanager.put(firing)
