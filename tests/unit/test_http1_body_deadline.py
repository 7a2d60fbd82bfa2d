"""server.tunnel.http1's body deadline over a real socket: one timer per
answer, not one per wait for more of its body (a bulk answer waits once a
packet), and still the same deadline: an answer whose reader waits past it
fails, and what had arrived before it is read first."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import AsyncIterator
from types import FrameType

import pytest

from server.errors import UpstreamTimeout
from server.tunnel.http1 import Http1Stream
from tests.support.stream_socket import api_end

GET = b"GET /x HTTP/1.1\r\nHost: api\r\n\r\n"
PIECES = 20
PIECE = b"x" * 1000

Pair = tuple[Http1Stream, asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    idle: list[Http1Stream] = []
    stream = Http1Stream(idle.append)
    async with api_end(stream) as (reader, writer):
        yield stream, reader, writer


def _head(length: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length


async def test_a_body_in_many_pieces_arms_one_deadline_timer(pair: Pair) -> None:
    stream, reader, writer = pair
    loop = asyncio.get_running_loop()
    timers = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal timers
        caller = frame.f_back
        if (
            event == "call"
            and frame.f_code.co_name == "call_at"
            and caller is not None
            and caller.f_code.co_filename.endswith("http1.py")
        ):
            timers += 1

    async with asyncio.timeout(10):
        began = stream.begin(GET, None, loop.time() + 60, "late")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_head(PIECES * len(PIECE)))
        await writer.drain()
        answer = await began
        got = []
        sys.setprofile(profile)
        try:
            for _ in range(PIECES):
                waiting = asyncio.ensure_future(answer.readany())
                await asyncio.sleep(0)  # the reader waits for the piece (not a sync: a yield)
                writer.write(PIECE)
                got.append(await waiting)
        finally:
            sys.setprofile(None)
        assert await answer.readany() == b""
    assert b"".join(got) == PIECE * PIECES
    assert timers == 1


async def test_a_reader_waiting_past_the_deadline_fails(pair: Pair) -> None:
    stream, reader, writer = pair
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        began = stream.begin(GET, None, loop.time() + 0.2, "body too slow")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_head(3 * len(PIECE)) + PIECE)
        await writer.drain()
        answer = await began
        assert await answer.readany() == PIECE
        start = loop.time()
        with pytest.raises(UpstreamTimeout, match="body too slow"):
            await answer.readany()
        assert loop.time() - start < 2
    assert stream.closed


async def test_what_arrived_before_the_deadline_is_read_then_the_next_wait_fails(
    pair: Pair,
) -> None:
    """The deadline passes while the reader is busy elsewhere (its timer
    fires with nobody waiting): the piece that had arrived is still read, and
    the wait for the rest fails at once."""
    stream, reader, writer = pair
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        began = stream.begin(GET, None, loop.time() + 0.2, "body too slow")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_head(3 * len(PIECE)) + PIECE)
        await writer.drain()
        answer = await began
        assert await answer.readany() == PIECE
        waiting = asyncio.ensure_future(answer.readany())  # arms the deadline's timer
        writer.write(PIECE)
        assert await waiting == PIECE
        writer.write(PIECE[:10])
        await writer.drain()
        await asyncio.sleep(0.4)  # the scenario itself: past the deadline, not a sync
        assert await answer.readany() == PIECE[:10]  # arrived: read, no wait
        start = loop.time()
        with pytest.raises(UpstreamTimeout, match="body too slow"):
            await answer.readany()
        assert loop.time() - start < 0.1


async def test_an_answer_read_to_its_end_leaves_no_timer_and_the_stream_serves_on(
    pair: Pair,
) -> None:
    """The deadline's timer of an answer that ended (read in pieces, so the
    timer was armed) is gone with it: nothing keeps the answer alive, and
    the kept-alive stream carries the next answer past the first deadline."""
    stream, reader, writer = pair
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        began = stream.begin(GET, None, loop.time() + 0.2, "first too slow")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_head(2 * len(PIECE)) + PIECE)
        answer = await began
        assert await answer.readany() == PIECE
        waiting = asyncio.ensure_future(answer.readany())  # arms the deadline's timer
        await asyncio.sleep(0)  # the reader waits for the piece (not a sync: a yield)
        writer.write(PIECE)
        assert await waiting == PIECE
        assert await answer.readany() == b""
        gone = weakref.ref(answer)
        del answer, waiting, began
        gc.collect()
        assert gone() is None, "a timer still holds the answer that ended"

        began = stream.begin(GET, None, loop.time() + 60, "second too slow")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_head(2 * len(PIECE)) + PIECE)
        second = await began
        assert await second.readany() == PIECE
        rest = asyncio.ensure_future(second.readany())
        await asyncio.sleep(0.4)  # the scenario itself: past the first deadline, not a sync
        writer.write(PIECE)
        assert await rest == PIECE
        assert await second.readany() == b""
    assert not stream.closed
