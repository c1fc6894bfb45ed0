"""Close aiokafka's fetcher without raising the cancellation of its own fetches.

``Fetcher.close`` (aiokafka 0.14) cancels each pending fetch and awaits it. A fetch that failed
sleeps its retry backoff outside the ``try`` that ends a cancelled fetch quietly, so while the
broker is unreachable (every fetch fails) the await re-raises the fetch's ``CancelledError``
out of ``AIOKafkaConsumer.stop``. In Faust's consumer thread that ended the thread before it told
the worker it had shut down: a worker told to stop during a broker outage waited out mode's
60 s shutdown timeout before it went on stopping. This close ends those fetches as aiokafka's own
fetch routine does when the assignment is lost: cancelled, awaited, their cancellation absorbed.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.consumer import fetcher


async def _close(self: fetcher.Fetcher) -> None:
    self._closed = True
    self._fetch_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await self._fetch_task
    for waiter in self._fetch_waiters:  # fail every pending fetchone/fetchall call
        self._notify(waiter)
    for task in self._pending_tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def install() -> None:
    """Make aiokafka's fetcher close this way (process-wide: the worker's consumer and its reader)."""
    fetcher.Fetcher.close = _close
