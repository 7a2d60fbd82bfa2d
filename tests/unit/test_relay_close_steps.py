"""The steps of a relay's stop: each bounded, and those that need the
database sharing one budget, so that a database that stalls is waited for
once and a step stuck behind a task that outlives its cancellation does not
hold the stop."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from server.relay import _Budget, _step
from tests.support.stubborn import StubbornLoop

pytestmark = pytest.mark.timeout(10)


async def test_a_step_waiting_for_a_task_that_goes_on_is_left_behind() -> None:
    stubborn = StubbornLoop()

    async def close() -> None:  # the component's close(): cancel, then wait
        stubborn.task.cancel()
        await stubborn.task

    began = asyncio.get_running_loop().time()
    with capture_logs() as logs:
        await _step("stubborn", close(), timeout=0.2)
    assert asyncio.get_running_loop().time() - began < 1
    assert logs == [
        {
            "event": "relay_close_step_failed",
            "step": "stubborn",
            "error": "timeout",
            "log_level": "warning",
        }
    ]
    await stubborn.stop()


async def test_a_stalled_database_is_waited_for_once_across_the_steps() -> None:
    budget = _Budget(0.5)
    stall = asyncio.Event()  # never set: a database that does not answer
    loop = asyncio.get_running_loop()
    began = loop.time()
    with capture_logs() as logs:
        for name in ("draining", "health_lease", "presence", "change_feed"):
            await budget.step(name, stall.wait())
        await budget.step("store", asyncio.sleep(0))  # needs no answer: done
    took = loop.time() - began
    # The first step has the whole budget, the later ones only the least.
    assert 0.5 <= took < 0.5 + 3 * 0.2 + 0.5, took
    assert [(e["step"], e["error"]) for e in logs] == [
        ("draining", "timeout"),
        ("health_lease", "timeout"),
        ("presence", "timeout"),
        ("change_feed", "timeout"),
    ]


async def test_a_failing_step_is_logged_and_the_next_runs() -> None:
    async def fails() -> None:
        raise ConnectionResetError

    ran = []

    async def runs() -> None:
        ran.append(True)

    with capture_logs() as logs:
        await _step("first", fails())
        await _step("second", runs())
    assert [(e["step"], e["error"]) for e in logs] == [("first", "ConnectionResetError")]
    assert ran == [True]
