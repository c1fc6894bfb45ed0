"""Broker outages: the worker waits them out. This module says so in the log, once per change.

aiokafka's clients retry by themselves (metadata, fetches, heartbeats, produce requests; the output
producers' batches never expire, ``io.producer``), and log an error on every attempt: thousands of
lines a minute. While the broker is unreachable those lines are held back, and the watch logs
one line per probe instead, with exponential backoff: ``broker unreachable since …, retrying in …``
and, at the end, ``broker back after …``.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("slostream")

PROBE_INTERVAL_S = 1.0  # while the broker answers
FIRST_RETRY_S = 1.0  # then doubled after each failed probe, up to MAX_RETRY_S
MAX_RETRY_S = 30.0
CONNECT_TIMEOUT_S = 2.0


class BrokerWatch(logging.Filter):
    """Probes the bootstrap hosts (a TCP connect); a filter for aiokafka's loggers while they fail."""

    def __init__(self, hosts: list[str]):
        super().__init__()
        self.hosts = hosts
        self.down_since: float | None = None  # wall time of the first failed probe
        self.back_after_s: list[float] = []  # each outage's length, as seen by the probes

    def filter(self, record: logging.LogRecord) -> bool:
        return self.down_since is None or record.levelno >= logging.CRITICAL

    async def reachable(self) -> bool:
        for host in self.hosts:
            name, _, port = host.rpartition(":")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(name, int(port)), CONNECT_TIMEOUT_S)
            except (TimeoutError, OSError):
                continue
            writer.close()
            return True
        return False

    async def run(self) -> None:
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if name.split(".")[0] == "aiokafka" and isinstance(logger, logging.Logger):
                logger.addFilter(self)  # a logger's filters see only its own records, not its children's
        retry_s = FIRST_RETRY_S
        while True:
            if await self.reachable():
                if self.down_since is not None:
                    outage = time.time() - self.down_since
                    self.back_after_s.append(outage)
                    log.warning("broker back after %.0f s; reconnecting", outage)
                    self.down_since = None
                retry_s = FIRST_RETRY_S
                await asyncio.sleep(PROBE_INTERVAL_S)
                continue
            if self.down_since is None:
                self.down_since = time.time()
            log.warning("broker unreachable since %s (%.0f s), retrying in %.0f s; outputs and commits wait",
                        time.strftime("%H:%M:%S", time.localtime(self.down_since)), time.time() - self.down_since,
                        retry_s)
            await asyncio.sleep(retry_s)
            retry_s = min(2 * retry_s, MAX_RETRY_S)
