"""server.tunnel.http1's head deadline over a real socket: one timer per
stream, moved on only when it fires early, must still fail each exchange at
its own deadline, whatever the exchanges before it asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.errors import UpstreamTimeout
from server.tunnel.http1 import Http1Stream
from tests.support.stream_socket import api_end

GET = b"GET /x HTTP/1.1\r\nHost: api\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Http1Stream, asyncio.StreamReader, asyncio.StreamWriter]]:
    idle: list[Http1Stream] = []
    stream = Http1Stream(idle.append)
    async with api_end(stream) as (reader, writer):
        yield stream, reader, writer


async def test_a_shorter_deadline_after_a_long_one_still_fails_in_time(
    pair: tuple[Http1Stream, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """The first exchange sets the timer an hour out; the second, on the
    same kept-alive stream, allows 0.2 s (its connection's timeouts were
    edited): it fails after about that, not after an hour."""
    stream, reader, writer = pair
    loop = asyncio.get_running_loop()
    first = stream.begin(GET, None, loop.time() + 3600, "one hour")
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK)
    await writer.drain()
    answer = await asyncio.wait_for(first, 5)
    assert answer.status == 200
    assert await answer.read() == b"ok"

    began = loop.time()
    second = stream.begin(GET, None, began + 0.2, "api did not answer in time")
    await reader.readuntil(b"\r\n\r\n")  # read, never answered
    with pytest.raises(UpstreamTimeout, match="api did not answer in time"):
        await asyncio.wait_for(second, 5)
    assert loop.time() - began < 2
    assert stream.closed


async def test_a_long_deadline_after_a_short_one_is_not_cut_short(
    pair: tuple[Http1Stream, asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """The timer armed for the first exchange's short deadline fires while
    the second (a longer one) waits: it moves on, and the answer that comes
    after the first deadline but before the second is taken."""
    stream, reader, writer = pair
    loop = asyncio.get_running_loop()
    first = stream.begin(GET, None, loop.time() + 0.3, "short")
    await reader.readuntil(b"\r\n\r\n")
    writer.write(OK)
    await writer.drain()
    answer = await asyncio.wait_for(first, 5)
    assert await answer.read() == b"ok"

    second = stream.begin(GET, None, loop.time() + 30, "long")
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(0.6)  # the scenario itself: past the first deadline, not a sync
    assert not second.done()
    writer.write(OK)
    await writer.drain()
    answer = await asyncio.wait_for(second, 5)
    assert answer.status == 200
    assert not stream.closed
