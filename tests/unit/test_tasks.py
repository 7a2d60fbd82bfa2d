"""Cancelling what is left when a process stops, until it has stopped."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sluice.tasks import cancel_until_done
from tests.support.stubborn import StubbornLoop

pytestmark = pytest.mark.timeout(10)


async def _takes_one_cancellation_for_an_error(
    waiting: asyncio.Event, stopped: asyncio.Event
) -> None:
    """A loop whose first CancelledError reaches it as a failed round (what a
    database driver cleaning up a stalled connection can make of it)."""
    with contextlib.suppress(asyncio.CancelledError):
        waiting.set()
        await asyncio.Event().wait()
    try:
        await asyncio.Event().wait()
    finally:
        stopped.set()


async def test_a_task_that_goes_on_after_a_cancellation_is_cancelled_again() -> None:
    waiting, stopped = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_takes_one_cancellation_for_an_error(waiting, stopped))
    await waiting.wait()
    left = await cancel_until_done({task}, timeout=2, every=0.05)
    assert left == set()
    assert stopped.is_set()
    assert task.cancelled()


async def test_what_does_not_stop_is_given_back_after_the_timeout() -> None:
    stubborn = StubbornLoop()
    await stubborn.waiting.wait()
    loop = asyncio.get_running_loop()
    began = loop.time()
    left = await cancel_until_done({stubborn.task}, timeout=0.3, every=0.05)
    assert left == {stubborn.task}
    assert loop.time() - began < 1
    stubborn.give_in()
    assert await cancel_until_done(left, timeout=2) == set()
