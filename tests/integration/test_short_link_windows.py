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
from server.tunnel.registry import Tunnel
from sluice import window_tuning
from sluice.window_tuning import LONG
from tests.conftest import AgentFactory
from tests.support.raw_api import raw_api
from tests.support.waiting import wait_until

BODY = b'{"ok": true}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
REQUESTS = 20
# The agent's login must time the loopback short (under 4 ms), which another
# test's load can stretch.
pytestmark = pytest.mark.serial


async def _short_link_agent(relay: Relay, start_agent: AgentFactory, port: int) -> Tunnel:
    """An agent whose login timed the loopback as short (under the tuner's
    ``LONG``). On a busy machine a login can take 5 ms, which tells a link
    that may be long, the case this test is not about: such an agent logs
    in again (up to five times)."""
    _, token = await relay.store.create_agent("short-link windows")
    agent_id = token.agent_id
    logins: list[float] = []
    for _ in range(5):
        agent, _ = await start_agent([f"127.0.0.1:{port}"], token=token)
        await wait_until(lambda: relay.registry.is_online(agent_id), what="agent online")
        [tunnel] = relay.registry.replicas(agent_id)
        logins.append(tunnel.login_rtt)
        if 0 < tunnel.login_rtt < LONG:
            return tunnel
        await agent.stop()
        await wait_until(lambda: not relay.registry.is_online(agent_id), what="agent offline")
    raise AssertionError(f"no login timed the loopback as short: {logins}")


async def _get(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == BODY


@pytest.mark.timeout(60)
async def test_small_answers_on_a_short_link_run_no_window_code(
    relay: Relay, start_agent: AgentFactory
) -> None:
    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        writer.write(ANSWER)
        await writer.drain()
        return True

    calls: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename == window_tuning.__file__:
            calls.append(frame.f_code.co_qualname)

    async for raw in raw_api(answer):
        tunnel = await _short_link_agent(relay, start_agent, raw.port)
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
