"""An API that resets its connection while the agent is not reading it, then
the relay's half-close of that stream: the agent's tunnel stays up.

The agent stops reading an API's socket while the relay does not take what
it sent (a slow caller). A reset that arrives meanwhile goes unnoticed, and
when the relay then half-closes the stream, the agent's half-close of the
API's socket raised ENOTCONN under asyncio's loop (SLUICE_NO_UVLOOP=1),
inside asyncssh's packet handling: the agent's whole SSH connection closed,
every stream on it with it (the relay's front had the same fault, 2993d68).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from server.relay import Relay
from sluice.connect import Target
from tests.conftest import AgentFactory
from tests.support.waiting import wait_until

MiB = 1024 * 1024


class _Slow(asyncio.Protocol):
    """The relay's caller: takes nothing once paused."""

    def __init__(self) -> None:
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)


@pytest.mark.timeout(60)
async def test_an_api_reset_before_the_relay_half_closes_keeps_the_tunnel(
    relay: Relay, start_agent: AgentFactory
) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(bytes(32 * MiB))  # far more than the window and every buffer hold

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, token = await start_agent([f"127.0.0.1:{port}"], process_env={"SLUICE_NO_UVLOOP": "1"})
        [tunnel] = relay.registry.replicas(token.agent_id)
        transport, _, _ = await tunnel.open_stream(Target("127.0.0.1", port))
        caller = _Slow()
        transport.set_protocol(caller)
        transport.pause_reading()
        await wait_until(lambda: bool(writers), what="the API's connection")
        api = writers[0].transport
        # The agent has stopped reading: the API cannot send what is left.
        await wait_until(lambda: 0 < api.get_write_buffer_size() < 32 * MiB, what="the agent full")
        sock = api.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        api.abort()  # a reset, not a close
        transport.write_eof()
        # The same tunnel carries the next stream (the EOF went before it).
        again, _, _ = await tunnel.open_stream(Target("127.0.0.1", port))
        # Its API connection too, so that the end closes it (on a busy
        # machine its handler ran after this test; the connection, left to
        # the garbage collector, failed the next test's setup).
        await wait_until(lambda: len(writers) == 2, what="the second API connection")
        again.close()
        assert relay.registry.replicas(token.agent_id) == [tunnel]
        transport.close()
    finally:
        # Every API connection (the second stream's floods on).
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()
