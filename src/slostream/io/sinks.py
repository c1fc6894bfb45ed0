"""Alert sinks: Alertmanager's API v2 and generic webhooks.

Deliveries run in a background task from a bounded queue, so a slow or dead
endpoint never blocks the stream: the queue drops its oldest item when full
(counted), and each delivery is retried with exponential backoff.

Alertmanager semantics: a firing alert is posted without ``endsAt`` and
re-posted every ``resend_s`` while it fires (Alertmanager resolves alerts it
stops hearing about after its ``resolve_timeout``); a resolved alert is
posted once with ``endsAt`` (``send_resolved``). Alerts silenced in
slostream are not posted; acknowledged ones are, with ``acknowledged_by``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable

import aiohttp
import mode

from slostream.config import Settings, redact_url

log = logging.getLogger("slostream.sinks")

QUEUE_LIMIT = 10_000
MAX_ATTEMPTS = 8
BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 30.0


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


class AlertSinks(mode.Service):
    """Webhooks are named ``webhook-1``, ``webhook-2``, ... (in the order of ``webhook_urls``) in logs and
    metrics: their URLs often hold a token."""

    def __init__(self, settings: Settings, firing_alerts: Callable[[], list[dict]], **kwargs):
        super().__init__(**kwargs)
        self.alertmanager_url = settings.alertmanager_url.rstrip("/") if settings.alertmanager_url else None
        self.alertmanager_headers = alertmanager_headers(settings)
        self.webhook_urls = {f"webhook-{number}": url for number, url in enumerate(settings.webhook_urls, 1)}
        self.resend_s = settings.alert_resend_s
        self.firing_alerts = firing_alerts
        self.queue: deque[tuple[str, object]] = deque()
        self.wakeup = asyncio.Event()
        self.delivered: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.dropped = 0
        self.session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.alertmanager_url or self.webhook_urls)

    def submit(self, event: dict) -> None:
        """Queue one alert CloudEvent for every sink; never waits."""
        if not self.enabled:
            return
        alert = event["data"]
        if self.alertmanager_url and event["type"] != "slostream.alert.silenced":
            self._put(("alertmanager", [alertmanager_payload(alert)]))
        for name in self.webhook_urls:
            self._put((name, event))

    def _put(self, item) -> None:
        if len(self.queue) >= QUEUE_LIMIT:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(item)
        self.wakeup.set()

    async def on_start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def on_stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    @mode.Service.task
    async def _deliver(self) -> None:
        while not self.should_stop:
            if not self.queue:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout=1.0)
                except TimeoutError:
                    continue
            if self.queue:
                target, body = self.queue.popleft()
                await self._post_with_retries(target, body)

    @mode.Service.task
    async def _resend(self) -> None:
        while not self.should_stop and self.alertmanager_url:
            await asyncio.sleep(self.resend_s)
            firing = [alertmanager_payload(a) for a in self.firing_alerts() if not a.get("silencedBy")]
            if firing:
                self._put(("alertmanager", firing))

    async def _post_with_retries(self, target: str, body) -> None:
        if target == "alertmanager":
            url, headers = f"{self.alertmanager_url}/api/v2/alerts", self.alertmanager_headers
        else:
            url, headers = self.webhook_urls[target].reveal(), {}
        delay = BACKOFF_START_S
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.session.post(url, json=body, headers=headers) as response:
                    if response.status < 300:
                        self.delivered[target] += 1
                        return
                    if 400 <= response.status < 500 and response.status != 429:
                        text = await response.text()
                        log.error("sink %s refused an alert (%d: %s); not retried", target, response.status, text[:200])
                        self.failed[target] += 1
                        return
                    problem = f"HTTP {response.status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # aiohttp puts the URL in some errors' text
                problem = repr(exc).replace(url, redact_url(url))
            if attempt == MAX_ATTEMPTS:
                break
            log.warning("sink %s: %s; retry %d in %.1fs", target, problem, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP_S)
        self.failed[target] += 1
        log.error("sink %s: gave up after %d attempts", target, MAX_ATTEMPTS)
