"""Background tasks that are kept referenced, logged on failure and cancelled on close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any

import structlog

log = structlog.get_logger("sluice.tasks")


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<TaskSet running={len(self._tasks)}>"

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run *coro* as a task of this set; once the set has closed, never
        (the task returned is cancelled before it starts, and *coro* runs no
        code at all: not its ``finally`` blocks either).

        What the owner closes after its tasks (a relay's store) must not
        see new work from a callback that fires late: a timer armed for the
        end of a token's grace, a connection lost after the stop's wait.
        """
        loop = asyncio.get_running_loop()
        if self._closed:
            coro.close()  # never started, so no "was never awaited" warning
            log.debug("task_refused_after_close", task=name)
            refused = loop.create_task(_nothing(), name=name)
            refused.cancel()
            return refused
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), error=repr(task.exception()))

    async def close(self, timeout: float = 5.0) -> None:
        """Let running tasks finish for up to *timeout* seconds, then cancel
        them; from now on the set starts no task."""
        self._closed = True
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _nothing() -> None:
    return None


async def cancel_until_done(
    tasks: Iterable[asyncio.Task[Any]], timeout: float, every: float = 0.1
) -> set[asyncio.Task[Any]]:
    """Cancel *tasks*, and again every *every* seconds those still running,
    for up to *timeout* seconds; the ones left.

    Once is not always enough: a task cancelled while the database driver
    cleans up after a stalled connection can see a failed query instead of
    the CancelledError, and a loop that outlives a failed query goes on.
    """
    left = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while left:
        for task in left:
            task.cancel()
        wait = min(every, deadline - loop.time())
        if wait <= 0:
            break
        _done, left = await asyncio.wait(left, timeout=wait)
    return left
