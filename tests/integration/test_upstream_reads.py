"""How the agent packs an API's answer into SSH packets, seen on the wire
between agent and relay (AES-GCM leaves each packet's length in clear).

A bulk answer goes in full-size packets: the agent reads an API in reads of
one SSH packet, the size of the relay's whole window for an answer, so the
window is used up by whole packets instead of a read plus the runt left over
(uvloop reads 256,000 bytes; the window is 256 KiB). A lone small answer
still leaves at once, in one packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.relay import Relay
from sluice import sshconfig
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI, noise
from tests.support.byte_pipe import BytePipe

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

MiB = 1024 * 1024
PIECE = 16 * 1024  # what the API writes at a time
BULK = 16 * MiB
_NEWKEYS = 21
_GCM_TAG = 16


def ssh_packets(stream: bytes) -> list[int]:
    """The lengths of the encrypted packets in one direction of an SSH
    connection running AES-GCM (what follows the sender's NEWKEYS)."""
    pos = stream.index(b"\r\n") + 2  # the version line
    while True:  # clear packets: length, padding length, payload, padding
        (length,) = struct.unpack_from(">I", stream, pos)
        kind = stream[pos + 5]
        pos += 4 + length
        if kind == _NEWKEYS:
            break
    lengths = []
    while pos + 4 <= len(stream):
        (length,) = struct.unpack_from(">I", stream, pos)
        lengths.append(length)
        pos += 4 + length + _GCM_TAG
    assert pos == len(stream), "the recording ends inside a packet"
    return lengths


class PieceAPI:
    """An HTTP API that writes every answer in PIECE-sized writes."""

    def __init__(self) -> None:
        self.body = noise(BULK)
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = self.body if head.startswith(b"GET /bulk ") else b'{"ok": true}'
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                if len(body) < PIECE:
                    writer.write(head + body)
                    continue
                writer.write(head)
                with memoryview(body) as view:
                    for start in range(0, len(body), PIECE):
                        writer.write(view[start : start + PIECE])
                        await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def piece_api() -> AsyncIterator[PieceAPI]:
    api = PieceAPI()
    server = await asyncio.start_server(api.serve, "127.0.0.1", 0)
    api.port = server.sockets[0].getsockname()[1]
    try:
        yield api
    finally:
        server.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tuning", ["on", "off"])
async def test_a_bulk_answer_goes_in_full_packets_and_a_small_one_at_once(
    relay: Relay, start_agent: AgentFactory, tuning: str
) -> None:
    host, port = relay.ssh_address
    pipe = BytePipe(host, port)
    await pipe.start()
    try:
        async with piece_api() as api:
            _, token = await start_agent(
                [f"127.0.0.1:{api.port}"],
                relay_address=f"127.0.0.1:{pipe.listen_port}",
                process_env={"SLUICE_SSH_TUNING": tuning},
            )
            [tunnel] = pipe.connections
            http = relay.tunnel_http.session(token.agent_id)
            base = f"http://127.0.0.1:{api.port}"
            async with http.get(f"{base}/small") as resp:  # opens the stream
                assert await resp.read() == b'{"ok": true}'

            # A lone small answer: one packet, sent as soon as it is read.
            before = len(ssh_packets(bytes(tunnel.upstream)))
            began = time.monotonic()
            async with http.get(f"{base}/small") as resp:
                assert await resp.read() == b'{"ok": true}'
            assert time.monotonic() - began < 0.2
            # (stock asyncssh sends an IGNORE packet before each one)
            sent = len(ssh_packets(bytes(tunnel.upstream))) - before
            assert sent == (1 if tuning == "on" else 2)

            digest = hashlib.sha256()
            got = 0
            async with http.get(f"{base}/bulk") as resp:
                async for chunk in resp.content.iter_any():
                    digest.update(chunk)
                    got += len(chunk)
            assert got == BULK
            assert digest.digest() == hashlib.sha256(api.body).digest()
    finally:
        await pipe.close()

    if tuning == "on":  # (stock asyncssh: each read copied, as it comes)
        assert_full_packets(ssh_packets(bytes(tunnel.upstream))[before + 1 :])


def assert_full_packets(packets: list[int]) -> None:
    """Most of a bulk answer travels in packets of the full size, and
    not many more packets go than full ones would need (reads of 256,000
    bytes in a 256 KiB window made twice as many, none of them full; while
    the relay keeps up, the API's first pieces leave as they come)."""
    bulk = [n for n in packets if n > 1024]  # data, not window adjusts
    full = sshconfig.CHANNEL_MAX_PKTSIZE
    assert sum(bulk) >= BULK
    assert sum(n for n in bulk if n >= full) >= 0.5 * BULK, sorted(bulk)[:20]
    assert len(bulk) <= 1.5 * BULK / full, len(bulk)


def read_calls(pid: int) -> int:
    """How many read system calls process *pid* has made (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscr in /proc/{pid}/io")


async def _body(total: int, piece: int) -> AsyncIterator[bytes]:
    block = noise(piece)
    for _ in range(total // piece):
        yield block


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tuning", ["on", "off"])
async def test_the_agent_reads_a_request_body_a_whole_packet_at_a_time(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory, tuning: str
) -> None:
    """Relay to agent: a read of the SSH socket holds whole packets (it used
    to take 256,000 bytes, and every 256 KiB packet took two reads and a join)."""
    agent, token = await start_agent(
        [f"127.0.0.1:{api.port}"], process_env={"SLUICE_SSH_TUNING": tuning}
    )
    http = relay.tunnel_http.session(token.agent_id)
    async with http.get(f"{api.base}/hello") as resp:  # opens the stream
        assert resp.status == 200
    expected = hashlib.sha256(noise(MiB) * (BULK // MiB)).hexdigest()
    reads = []
    for _ in range(3):  # the fewest: a busy machine can split some reads
        before = read_calls(agent.pid)
        async with http.post(f"{api.base}/echo", data=_body(BULK, MiB)) as resp:
            answer = await resp.json()
        reads.append(read_calls(agent.pid) - before)
        assert (answer["bytes"], answer["sha256"]) == (BULK, expected)
    packets = BULK // sshconfig.CHANNEL_MAX_PKTSIZE
    if tuning == "on":  # (stock asyncssh: reads of the event loop's size)
        # Whole packets: about one read each (a packet can still arrive in
        # pieces); reads of 256,000 bytes took 1.6-2 per packet.
        assert min(reads) < 1.3 * packets, (reads, packets)
