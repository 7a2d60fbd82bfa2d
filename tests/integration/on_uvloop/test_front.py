"""The front's caller-side edge cases on uvloop, the loop the relay runs in
production (``sluice.runtime``); the rest of the suite runs asyncio's own.

A caller that resets its connection while the relay still expects its body:
asyncio's transport raised ENOTCONN from the lingering close's half-close
and left the connection registered (``test_proxy_front``); uvloop never did
here, and this keeps it so.
"""

from __future__ import annotations

import asyncio

import uvloop

# The test and its fixtures, collected again here under uvloop.
from tests.integration.test_proxy_front import (  # noqa: F401
    raw,
    relay,
    test_a_caller_leaving_mid_upload_cuts_the_body_and_frees_its_connection,
)


async def test_this_module_runs_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
