"""A bulk answer's body goes from the tunnel stream to the caller without a
wake-up per packet (issue 22): each decrypted packet's data is written to
the caller's socket from the channel's ``data_received``
(``Http1Response.piped``, ``_SocketSink.pipe``); the reader's coroutine
wakes only when the caller's socket fills or the answer ends. The caller
still gets every byte, in order.

The relay runs in this process: ``sys.setprofile`` counts the Python calls
it makes in its body path while the caller downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections import Counter
from types import FrameType
from urllib.parse import urlsplit

import pytest

from tests.conftest import AgentFactory
from tests.integration.test_repeated_answers import _plain_connection
from tests.support.capture import APIClient
from tests.support.raw_api import raw_api
from tests.support.waiting import wait_until

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

BODY = os.urandom(8 * 1024 * 1024)
MIB = len(BODY) / (1024 * 1024)
# What waking the reader per piece of the body costs: the wait for the next
# piece, its read, the sink's write and the wait for room in the caller.
PER_PIECE = {"_wait", "readany", "iter_any", "drain"}
# At most this many of those per MiB of body (measured: about 1 with the
# pipe, as many as the body's packets, 10 or more, without it).
PER_PIECE_PER_MIB = 4


async def test_a_bulk_answer_is_piped_to_the_caller(
    client: APIClient, start_agent: AgentFactory
) -> None:
    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY)
        )
        for start in range(0, len(BODY), 64 * 1024):
            writer.write(BODY[start : start + 64 * 1024])
            await writer.drain()
        return True

    async for raw in raw_api(answer):
        _, token = await start_agent([f"127.0.0.1:{raw.port}"])
        conn_id = await _plain_connection(client, "piped answers", token.agent_id, raw.port)
        first, counted, calls = await _download(client, conn_id)

    digest = hashlib.sha256(BODY).hexdigest()
    assert first == digest
    assert counted == digest
    waking = sum(calls[name] for name in PER_PIECE)
    assert waking <= PER_PIECE_PER_MIB * MIB, calls


async def test_a_piped_answer_stops_while_the_caller_reads_nothing(
    client: APIClient, start_agent: AgentFactory
) -> None:
    """The pipe stops when the caller's socket fills: the relay stops reading
    the stream, and the API stops being read, well short of the body; the
    caller that reads again gets all of it, in order."""
    size = 128 * 1024 * 1024
    piece = os.urandom(1024 * 1024)
    sent = [0]
    blocked = [False]
    looks = {"sent": -1, "still": 0}

    def stalled() -> bool:
        """The API has waited to write, having written nothing more, for 10
        looks in a row (0.2 s)."""
        if blocked[0] and sent[0] == looks["sent"]:
            looks["still"] += 1
        else:
            looks["still"] = 0
        looks["sent"] = sent[0]
        return looks["still"] >= 10

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while sent[0] < size:
            writer.write(piece)
            sent[0] += len(piece)
            blocked[0] = True
            await writer.drain()
            blocked[0] = False
        return True

    async for raw in raw_api(answer):
        _, token = await start_agent([f"127.0.0.1:{raw.port}"])
        conn_id = await _plain_connection(client, "stalled caller", token.agent_id, raw.port)
        front = urlsplit(client.base)
        assert front.hostname is not None
        reader, writer = await asyncio.open_connection(front.hostname, front.port)
        try:
            writer.write(
                f"GET /v1/connections/{conn_id}/proxy/big HTTP/1.1\r\n"
                f"Host: relay\r\nAuthorization: Bearer {client.token}\r\n\r\n".encode()
            )
            await reader.readuntil(b"\r\n\r\n")  # then nothing, for a while
            await wait_until(stalled, timeout=30, what="the API's writes to stall")
            assert sent[0] <= size // 2, sent[0]
            digest = hashlib.sha256()
            got = 0
            async with asyncio.timeout(30):
                while got < size:
                    data = await reader.read(4 * 1024 * 1024)
                    assert data, got
                    digest.update(data)
                    got += len(data)
        finally:
            writer.close()
    assert got == size
    assert digest.hexdigest() == hashlib.sha256(piece * 128).hexdigest()


async def _download(client: APIClient, conn_id: str) -> tuple[str, str, Counter[str]]:
    """Two downloads on one caller connection (the first warms the stream
    up), the second's body path calls counted: the bodies' digests and the counts."""
    front = urlsplit(client.base)
    assert front.hostname is not None
    reader, writer = await asyncio.open_connection(front.hostname, front.port)
    request = (
        f"GET /v1/connections/{conn_id}/proxy/blob HTTP/1.1\r\n"
        f"Host: relay\r\nAuthorization: Bearer {client.token}\r\n\r\n"
    ).encode()

    async def call() -> str:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"\r\nContent-Length: %d\r\n" % len(BODY) in head, head
        return hashlib.sha256(await reader.readexactly(len(BODY))).hexdigest()

    calls: Counter[str] = Counter()
    modules = ("server/tunnel/http1.py", "server/proxy/front.py", "server/proxy/exchange.py")

    def profile(frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        if event == "call" and code.co_filename.endswith(modules):
            calls[code.co_name] += 1

    try:
        async with asyncio.timeout(30):
            first = await call()
            sys.setprofile(profile)
            try:
                counted = await call()
            finally:
                sys.setprofile(None)
    finally:
        writer.close()
    return first, counted, calls
