"""server.tunnel.http1's raw-body mode over a real socket: a Content-Length
body after the read that held its head is passed on as it arrives, exactly
the announced length, with no parse and no copy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from server.errors import TunnelLost
from server.tunnel.http1 import Http1Stream
from tests.support.stream_socket import api_end

GET = b"GET /x HTTP/1.1\r\nHost: api\r\n\r\n"


class Recorded(Http1Stream):
    """An Http1Stream that keeps every piece the transport handed it."""

    def __init__(self) -> None:
        self.idle: list[Http1Stream] = []
        super().__init__(self.idle.append)
        self.pieces: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        super().data_received(data)


@dataclass
class Pair:
    stream: Recorded
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> None:
        """The API side reads one request head."""
        await self.reader.readuntil(b"\r\n\r\n")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    stream = Recorded()
    async with api_end(stream) as (reader, writer):
        yield Pair(stream, reader, writer)


async def test_a_body_that_looks_like_http_arrives_whole_and_uncopied(pair: Pair) -> None:
    lookalike = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    parts = [b"first;", lookalike, b";" + lookalike + b"\r\n\r\n", b"last"]
    body = b"".join(parts)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with asyncio.timeout(10):
        answer_task = asyncio.ensure_future(pair.stream.exchange(GET, None, None, "late"))
        await pair.request()
        await pair.send(head + parts[0])
        answer = await answer_task
        got = [await answer.readany()]
        for part in parts[1:]:
            await pair.send(part)
            got.append(await answer.readany())
        assert await answer.readany() == b""
    assert b"".join(got) == body
    # After the read that held the head, each piece is the transport's own object.
    raw = pair.stream.pieces[1:]
    assert len(raw) == len(parts) - 1
    assert all(piece is mine for piece, mine in zip(raw, got[1:], strict=True))
    # The exchange ended cleanly: the stream is offered again, and works.
    assert pair.stream.idle == [pair.stream]
    async with asyncio.timeout(10):
        again = asyncio.ensure_future(pair.stream.exchange(GET, None, None, "late"))
        await pair.request()
        await pair.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert await (await again).read() == b"ok"


async def test_a_short_body_is_a_definite_error(pair: Pair) -> None:
    async with asyncio.timeout(10):
        answer_task = asyncio.ensure_future(pair.stream.exchange(GET, None, None, "late"))
        await pair.request()
        await pair.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        answer = await answer_task
        assert await answer.readany() == b"abc"
        await pair.send(b"defg")
        assert await answer.readany() == b"defg"
        pair.writer.close()
        with pytest.raises(TunnelLost, match="cut off"):
            await answer.read()
    assert pair.stream.idle == []


async def test_bytes_past_the_length_drop_the_stream_not_the_answer(pair: Pair) -> None:
    async with asyncio.timeout(10):
        answer_task = asyncio.ensure_future(pair.stream.exchange(GET, None, None, "late"))
        await pair.request()
        await pair.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        answer = await answer_task
        assert await answer.readany() == b"hello"
        await pair.send(b"worldHTTP/1.1 200 OK\r\n\r\n")
        assert await answer.read() == b"world"
    assert pair.stream.idle == []
    assert pair.stream.closed
