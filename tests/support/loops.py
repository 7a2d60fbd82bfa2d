"""The event loops Sluice runs on, as pytest parameters for synchronous tests
that start their own loop (``run(coroutine)``): asyncio's, and uvloop's
where it is installed (a dependency of the relay and agent)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest


def loop_runners() -> list[Any]:
    """``asyncio.run`` and ``uvloop.run``, as ``pytest.param``s named after the loop."""
    runners: list[Any] = [pytest.param(asyncio.run, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency of the relay and agent
        return runners
    return [*runners, pytest.param(uvloop.run, id="uvloop")]
