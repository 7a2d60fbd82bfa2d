"""A loop that takes every cancellation for a failed round and goes on: what
a cluster loop does when a database driver, cleaning up after a stalled
connection, raises its own error in place of the CancelledError."""

from __future__ import annotations

import asyncio
import contextlib


class StubbornLoop:
    """Runs until ``give_in()``; every CancelledError before that is swallowed."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()  # it has reached its first wait
        self._going = True
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._going:
            with contextlib.suppress(asyncio.CancelledError):
                self.waiting.set()
                await asyncio.Event().wait()

    def give_in(self) -> None:
        """The next cancellation ends it."""
        self._going = False

    async def stop(self) -> None:
        self.give_in()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
