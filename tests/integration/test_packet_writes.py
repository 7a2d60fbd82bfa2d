"""A download's packets leave the agent in one write each, even while the
relay reads slower than the agent sends (issue 22): the send scheduler's
low-water mark on the tunnel socket (``sluice.send_scheduler``) follows the
connection's rate, so on a fast link the kernel takes a whole 256 KiB packet
at once. With a fixed 128 KiB mark each packet left in two or more writes
(a system call, an event-loop wake-up and a copy of the rest each) whenever
the relay's socket was full.

The relay here holds a small receive buffer on its tunnel socket, less than
the agent's credit (one window, 1 MiB), so the agent's data always waits in
the agent's kernel, as it does whenever a busy relay falls behind. ``syscw``
of /proc/<agent pid>/io counts the agent's write and writev calls (uvloop
writes sockets with them).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.integration.test_send_coalescing import write_calls
from tests.support.api import InternalAPI, blob_sha256
from tests.support.capture import remember_secret

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

MiB = 1024 * 1024
# What the relay's tunnel socket may hold (the kernel doubles it): well under
# the agent's 1 MiB of credit.
RELAY_RCVBUF = 128 * 1024


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    """A relay whose windows keep their starting size (no window tuner): the
    agent's credit stays one window, whatever the machine's load."""
    relay = await Relay.start(relay_settings(tmp_path, max_inflight_per_agent=0))
    remember_secret(relay.admin_token)
    try:
        yield relay
    finally:
        await relay.close()


async def _download(http: aiohttp.ClientSession, url: str, size: int) -> None:
    digest = hashlib.sha256()
    async with http.get(f"{url}/blob/{size}") as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
    assert digest.hexdigest() == blob_sha256(size)


@pytest.mark.timeout(60)
async def test_a_packet_leaves_in_one_write_while_the_relay_falls_behind(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    agent, token = await start_agent([f"127.0.0.1:{api.port}"])
    http = relay.tunnel_http.session(token.agent_id)
    [tunnel] = relay.registry.replicas(token.agent_id)
    transport = tunnel.ssh._transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_RCVBUF)
    assert tunnel.window >= 4 * tunnel.max_pktsize  # the agent's credit: 4 packets

    # The first transfer on a connection starts at the floor of 128 KiB
    # until the scheduler has taken the connection's rate (~50 ms).
    await _download(http, api.base, 16 * MiB)
    size = 32 * MiB
    runs = []
    for _ in range(2):
        before = write_calls(agent.pid)
        await _download(http, api.base, size)
        runs.append((write_calls(agent.pid) - before) / (size / MiB))
    # Four 256 KiB packets a MiB, a write each (a few more: window adjusts
    # answered, a packet that met a full socket: 4.5-6.7 over 25 runs on an
    # idle machine); with the fixed 128 KiB mark 11-13 in every run. The
    # better of two runs: a machine busy with other work slowed one run to
    # 8.2 (the rate the mark follows fell with it).
    assert min(runs) < 8, f"agent writes per MiB: {runs}"
