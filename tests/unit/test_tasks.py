"""Cancelling what is left when a process stops, until it has stopped."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sluice.tasks import cancel_until_done

pytestmark = pytest.mark.timeout(10)


async def _takes_one_cancellation_for_an_error(stopped: asyncio.Event) -> None:
    """A loop whose first CancelledError reaches it as a failed round (what a
    database driver cleaning up a stalled connection can make of it)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    try:
        await asyncio.Event().wait()
    finally:
        stopped.set()


async def test_a_task_that_goes_on_after_a_cancellation_is_cancelled_again() -> None:
    stopped = asyncio.Event()
    task = asyncio.create_task(_takes_one_cancellation_for_an_error(stopped))
    await asyncio.sleep(0)  # it is waiting
    left = await cancel_until_done({task}, timeout=2, every=0.05)
    assert left == set()
    assert stopped.is_set()
    assert task.cancelled()


async def test_what_does_not_stop_is_given_back_after_the_timeout() -> None:
    deaf = True

    async def ignores_cancellations() -> None:
        while deaf:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()

    task = asyncio.create_task(ignores_cancellations())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    left = await cancel_until_done({task}, timeout=0.3, every=0.05)
    assert left == {task}
    assert loop.time() - began < 1
    deaf = False
    assert await cancel_until_done(left, timeout=2) == set()
