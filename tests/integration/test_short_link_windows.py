"""A tunnel whose login timed its link short (loopback, a LAN) gives its
streams windows that stay as they start (``sluice.window_tuning.ShortWindow``,
issue 22): the relay's window code runs for no delivery of a stream its
reader does not hold back. The tuner's ``received`` (about 90 bytecodes and
a call a packet in the relay and in the agent) ran for every small request
and answer, on a link where nothing it decides can change the window.

What the window does on the wire while a reader holds a stream back (what
waits counts against it) is the tuner's, and is tested with it
(``tests/integration/test_window_tuning.py``) and against it
(``tests/unit/test_window_tuning.py``)."""

from __future__ import annotations

import asyncio
import sys
from types import FrameType

import aiohttp
import pytest

from server.relay import Relay
from sluice import window_tuning
from tests.conftest import AgentFactory
from tests.support.raw_api import fixed_answer, raw_api
from tests.support.short_link import short_link_agent

BODY = b'{"ok": true}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
REQUESTS = 20
# The agent's login must time the loopback short (under 4 ms), which another
# test's load can stretch.
pytestmark = pytest.mark.serial


async def _get(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == BODY


@pytest.mark.timeout(60)
async def test_small_answers_on_a_short_link_run_no_window_code(
    relay: Relay, start_agent: AgentFactory
) -> None:
    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename == window_tuning.__file__:
            calls.append(frame.f_code.co_qualname)

    async for raw in raw_api(fixed_answer(ANSWER)):
        tunnel, _ = await short_link_agent(relay, start_agent, raw.port, "short-link windows")
        http = relay.tunnel_http.session(tunnel.agent_id)
        url = f"http://127.0.0.1:{raw.port}/small"
        async with asyncio.timeout(30):
            for _ in range(3):
                await _get(http, url)  # the stream and its windows settle
            sys.setprofile(profile)
            try:
                for _ in range(REQUESTS):
                    await _get(http, url)
            finally:
                sys.setprofile(None)
        # Every answer came back on the stream the warm-up left in the pool.
        assert raw.connections == 1
    # (A WindowTuner's received() for each answer: 20 or more.)
    assert calls == [], calls[:5]
