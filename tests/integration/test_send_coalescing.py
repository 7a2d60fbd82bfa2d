"""One tunnel write per loop turn (``sluice.send_coalescing``), seen in the
agent's system calls: with 32 kept-alive streams whose answers are ready
together, the agent writes each request to its API (one write each) and the
answers to the relay in a few writes, not one per answer.

The agent finds all of a round's answers ready at once, as a busy agent does
under load: the API holds them until all the round's requests are in, stops
the agent (SIGSTOP), writes every answer, and lets it go on (SIGCONT).
``syscw`` of /proc/<agent pid>/io counts the agent's write and writev calls
(uvloop writes sockets with them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.relay import Relay
from sluice import send_coalescing
from tests.conftest import AgentFactory
from tests.support.waiting import wait_until

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

STREAMS = 32
ROUNDS = 6
BODY = b'{"ok": true}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


class RoundAPI:
    """An HTTP API that answers in rounds: nothing until STREAMS requests
    are in, then every answer of the round while the agent is stopped."""

    def __init__(self) -> None:
        self.port = 0
        self.agent_pid = 0
        self.waiting: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.waiting.append(writer)
                if len(self.waiting) == STREAMS:
                    await self._answer_all()
        writer.close()

    async def _answer_all(self) -> None:
        pid = self.agent_pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_until(lambda: _stopped(pid), timeout=5, what="the agent stopped")
            for each in self.waiting:
                each.write(ANSWER)
            # On loopback a write that left the buffer is in the agent's socket.
            assert all(each.transport.get_write_buffer_size() == 0 for each in self.waiting)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.waiting.clear()


@contextlib.asynccontextmanager
async def round_api() -> AsyncIterator[RoundAPI]:
    api = RoundAPI()
    server = await asyncio.start_server(api.serve, "127.0.0.1", 0)
    api.port = server.sockets[0].getsockname()[1]
    try:
        yield api
    finally:
        server.close()


def write_calls(pid: int) -> int:
    """How many write system calls process *pid* has made (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscw in /proc/{pid}/io")


async def _round(http: aiohttp.ClientSession, url: str) -> None:
    async def one() -> None:
        async with http.get(url) as resp:
            assert (resp.status, await resp.read()) == (200, BODY)

    await asyncio.gather(*(one() for _ in range(STREAMS)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("coalescing", ["on", "off"])
async def test_a_turns_answers_leave_the_agent_in_few_writes(
    relay: Relay, start_agent: AgentFactory, coalescing: str
) -> None:
    async with round_api() as api:
        agent, token = await start_agent(
            [f"127.0.0.1:{api.port}"], process_env={send_coalescing.SWITCH: coalescing}
        )
        api.agent_pid = agent.pid
        http = relay.tunnel_http.session(token.agent_id)
        url = f"http://127.0.0.1:{api.port}/small"
        await _round(http, url)  # opens the 32 streams, kept alive from now on
        before = write_calls(agent.pid)
        for _ in range(ROUNDS):
            await _round(http, url)
        per_request = (write_calls(agent.pid) - before) / (ROUNDS * STREAMS)
    # Each request: one write to the API. Each answer, uncoalesced: one write
    # to the relay (2.0 a request); coalesced: the round's answers in one or
    # a few writes.
    if coalescing == "on":
        assert per_request < 1.25, per_request
    else:
        assert per_request >= 1.9, per_request
    assert f'"send_coalescing": "{coalescing}"' in agent.log()
