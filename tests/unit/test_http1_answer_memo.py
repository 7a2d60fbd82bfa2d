"""server.tunnel.http1 remembers a kept-alive stream's last answer head: the
same bytes again are not parsed by llhttp (issue 22: about a dozen Python
callbacks and the parse per answer of a repeated request), and everything
else an answer can be still is (a new Date, a HEAD, a closing answer, bytes
past the body)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from server.errors import TunnelLost
from server.tunnel.http1 import Http1Stream
from tests.support.stream_socket import api_end

GET = b"GET /x HTTP/1.1\r\nHost: api\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nHost: api\r\n\r\n"
BODY = b'{"ok": true}'


def answer(date: bytes = b"Sat, 05 Dec 2026 00:00:00 GMT", *extra: bytes) -> bytes:
    fields = b"".join(extra)
    return (
        b"HTTP/1.1 200 OK\r\nServer: api\r\nDate: %s\r\nContent-Type: application/json\r\n"
        b"%sContent-Length: %d\r\n\r\n" % (date, fields, len(BODY))
    )


class Counted(Http1Stream):
    """An Http1Stream that counts the header fields llhttp hands it."""

    def __init__(self) -> None:
        self.idle: list[Http1Stream] = []
        super().__init__(self.idle.append)
        self.fields_parsed = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields_parsed += 1
        super().on_header(name, value)


@dataclass
class Pair:
    stream: Counted
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def exchange(
        self, data: bytes, request: bytes = GET
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One request on the stream, answered with *data* in one write."""
        head_only = request.startswith(b"HEAD")
        task = asyncio.ensure_future(
            self.stream.exchange(request, None, None, "late", head_only=head_only)
        )
        await self.reader.readuntil(b"\r\n\r\n")
        self.writer.write(data)
        await self.writer.drain()
        got = await task
        body = await got.read()
        return got.status, list(got.raw_headers), body


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    stream = Counted()
    async with api_end(stream) as (reader, writer):
        yield Pair(stream, reader, writer)


async def test_the_same_head_again_is_not_parsed_and_gives_the_same_answer(pair: Pair) -> None:
    async with asyncio.timeout(10):
        first = await pair.exchange(answer() + BODY)
        parsed = pair.stream.fields_parsed
        again = [await pair.exchange(answer() + BODY) for _ in range(3)]
    assert parsed == 4
    assert pair.stream.fields_parsed == parsed  # no field went through llhttp again
    assert first[0] == 200
    assert first[2] == BODY
    assert (b"Content-Length", b"%d" % len(BODY)) in first[1]
    assert again == [first] * 3
    assert len(pair.stream.idle) == 4  # each exchange handed the stream back


async def test_a_body_in_pieces_after_a_remembered_head(pair: Pair) -> None:
    async with asyncio.timeout(10):
        await pair.exchange(answer() + BODY)
        task = asyncio.ensure_future(pair.stream.exchange(GET, None, None, "late"))
        await pair.reader.readuntil(b"\r\n\r\n")
        pair.writer.write(answer() + BODY[:3])
        await pair.writer.drain()
        got = await task
        pair.writer.write(BODY[3:])
        await pair.writer.drain()
        assert await got.read() == BODY
    assert pair.stream.fields_parsed == 4
    assert len(pair.stream.idle) == 2


async def test_a_new_date_is_parsed_and_passed_on(pair: Pair) -> None:
    later = b"Sat, 05 Dec 2026 00:00:01 GMT"
    async with asyncio.timeout(10):
        await pair.exchange(answer() + BODY)
        status, fields, body = await pair.exchange(answer(later) + BODY)
        await pair.exchange(answer(later) + BODY)
    assert (b"Date", later) in fields
    assert (status, body) == (200, BODY)
    assert pair.stream.fields_parsed == 8  # the new head once, then remembered


async def test_a_head_request_is_parsed_whatever_its_head(pair: Pair) -> None:
    async with asyncio.timeout(10):
        await pair.exchange(answer() + BODY)
        status, _fields, body = await pair.exchange(answer(), HEAD)
        # The stream stays in step: the next GET's answer is read whole.
        assert (await pair.exchange(answer() + BODY))[2] == BODY
    assert (status, body) == (200, b"")
    assert pair.stream.fields_parsed == 8


async def test_a_closing_answer_is_not_remembered(pair: Pair) -> None:
    closing = answer(b"Sat, 05 Dec 2026 00:00:00 GMT", b"Connection: close\r\n")
    async with asyncio.timeout(10):
        assert (await pair.exchange(closing + BODY))[2] == BODY
    assert pair.stream.closed
    assert pair.stream.idle == []


async def test_bytes_past_a_remembered_answer_break_the_stream(pair: Pair) -> None:
    async with asyncio.timeout(10):
        await pair.exchange(answer() + BODY)
        task = asyncio.ensure_future(pair.stream.exchange(GET, None, None, "late"))
        await pair.reader.readuntil(b"\r\n\r\n")
        pair.writer.write(answer() + BODY + b"HTTP/1.1 200 OK\r\n")
        await pair.writer.drain()
        got = await task
        assert await got.read() == BODY
    assert pair.stream.closed  # out of step: never used again


async def test_an_answer_cut_off_after_a_remembered_head_fails(pair: Pair) -> None:
    async with asyncio.timeout(10):
        await pair.exchange(answer() + BODY)
        task = asyncio.ensure_future(pair.stream.exchange(GET, None, None, "late"))
        await pair.reader.readuntil(b"\r\n\r\n")
        pair.writer.write(answer())
        await pair.writer.drain()
        got = await task
        pair.writer.close()
        with pytest.raises(TunnelLost, match="cut off"):
            await got.read()
    assert pair.stream.closed
