"""aiokafka's fetcher closes without raising its own fetches' cancellation: a fetch that failed
(the broker is down) and sleeps its retry backoff when closed no longer breaks the consumer's stop
(which ended Faust's consumer thread and held a stopping worker for 60 s)."""

import asyncio
import types

import pytest
from aiokafka.consumer import fetcher

from slostream.io import fetcher_close


async def _failed_fetch() -> bool:
    # As aiokafka's ``_proc_fetch_request`` after a send failed: the backoff is outside the try
    # that ends a cancelled fetch quietly.
    await asyncio.sleep(3600)
    return False


async def _idle_routine() -> None:
    await asyncio.sleep(3600)


def _fetcher_in_backoff() -> types.SimpleNamespace:
    return types.SimpleNamespace(_closed=False, _fetch_task=asyncio.create_task(_idle_routine()), _fetch_waiters=set(),
                                 _pending_tasks={asyncio.create_task(_failed_fetch())}, _notify=lambda waiter: None)


def test_aiokafka_close_raises_a_cancelled_fetch():
    async def close():
        stub = _fetcher_in_backoff()
        await asyncio.sleep(0)  # the fetch is in its backoff
        await fetcher.Fetcher.close(stub)

    # When aiokafka closes quietly by itself, ``fetcher_close`` can go.
    assert fetcher.Fetcher.close is not fetcher_close._close, "installed by an app made earlier in this process"
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(close())


def test_close_ends_a_fetch_in_its_backoff():
    async def close():
        stub = _fetcher_in_backoff()
        await asyncio.sleep(0)
        await fetcher_close._close(stub)
        return stub

    stub = asyncio.run(close())
    assert stub._closed and stub._fetch_task.cancelled()
    assert all(task.cancelled() for task in stub._pending_tasks)
