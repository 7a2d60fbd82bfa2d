"""Cancelling what is left when a process stops, until it has stopped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings

import pytest

from sluice.tasks import TaskSet, cancel_until_done
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


async def test_a_closed_set_starts_nothing_and_leaves_no_unawaited_coroutine() -> None:
    """A callback that fires after its owner's stop (a timer armed for the end
    of a token's grace) must not start a query on a store closed since."""
    tasks = TaskSet()
    ran = asyncio.Event()

    async def query() -> None:
        ran.set()

    await tasks.spawn(query(), name="before")
    assert ran.is_set()
    ran.clear()
    await tasks.close()
    with warnings.catch_warnings():
        # A "was never awaited" warning, raised as the coroutine is collected,
        # fails the test (as an exception that cannot be raised: pytest reports it).
        warnings.simplefilter("error")
        late = tasks.spawn(query(), name="late")
        with pytest.raises(asyncio.CancelledError):
            await late
        gc.collect()
    assert late.cancelled()
    assert not ran.is_set()
    assert len(tasks) == 0


async def test_close_waits_for_what_runs_then_refuses_what_it_spawns() -> None:
    tasks = TaskSet()
    release = asyncio.Event()
    follow_ups: list[asyncio.Task[None]] = []
    started, waiting = asyncio.Event(), asyncio.Event()

    async def follow_up() -> None:
        started.set()

    async def running() -> None:
        waiting.set()
        await release.wait()
        follow_ups.append(tasks.spawn(follow_up(), name="follow-up"))

    tasks.spawn(running(), name="running")
    await waiting.wait()
    closing = asyncio.ensure_future(tasks.close(timeout=5))
    # Released after close's first step (the loop runs ready callbacks in order).
    asyncio.get_running_loop().call_soon(release.set)
    await asyncio.wait_for(closing, 5)
    await asyncio.wait_for(asyncio.gather(*follow_ups, return_exceptions=True), 5)
    assert [task.cancelled() for task in follow_ups] == [True]
    assert not started.is_set()
