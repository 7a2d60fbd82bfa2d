"""A connection's first credit round that was slow for another reason than the
link (its source paused, a busy machine) does not make a short link look long
(``sluice.window_tuning.WindowBudget.sampled``, issue 28h): the relay grants
a download's agent no more than the stream's window at a time.

Before, the first round alone set the link's round trip: a download whose API
paused 20 ms after its first 1.5 MiB made a loopback tunnel look 20 ms long,
and slow start granted the agent 32 MiB at once, which the next round could
not take back (what the relay may have to hold for a caller that reads
slowly). The agent's upload side had the same: with a 2 MiB starting window
(issue 28b) its first round took the relay's sending of the first 2 MiB,
and the agent buffered up to 39 MB of a 50 MiB echo."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI, noise
from tests.support.relay_wire import window_adjusts
from tests.support.short_link import short_link_agent

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

MiB = 1024 * 1024
FIRST = 3 * MiB // 2  # what the API sends before it pauses
BODY = 16 * MiB


async def _bursty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP API whose one answer pauses 20 ms after its first FIRST bytes."""
    with contextlib.suppress(ConnectionError):
        await reader.readuntil(b"\r\n\r\n")
        body = noise(BODY)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BODY)
        writer.write(body[:FIRST])
        await writer.drain()
        await asyncio.sleep(0.02)  # the API's own pace, not a synchronisation
        writer.write(body[FIRST:])
        await writer.drain()
        await reader.read()
    writer.close()


@pytest.mark.timeout(90)
async def test_a_first_round_slowed_by_the_api_grants_no_more_than_the_window(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    server = await asyncio.start_server(_bursty, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        tunnel, token = await short_link_agent(relay, start_agent, port, "short-link")
        adjusts = window_adjusts(tunnel)
        http = relay.tunnel_http.session(token.agent_id)
        async with http.get(f"http://127.0.0.1:{port}/bursty") as resp:
            got = len(await resp.read())
        assert got == BODY
        assert adjusts, "no window adjust sent"
        # Each top-up at most the stream's window (asyncssh's tops up to it).
        assert max(size for _, size in adjusts) <= tunnel.window, (tunnel.window, adjusts[:4])
    finally:
        server.close()
        await server.wait_closed()
