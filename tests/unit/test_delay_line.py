"""bench's delay line: every byte arrives intact, half a round trip later in
each direction, and an EOF or a close passes through behind the data."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from bench.delay_line import DelayLine


async def test_bytes_arrive_intact_half_a_round_trip_later_each_way() -> None:
    rtt = 0.08
    payload = os.urandom(3 * 1024 * 1024)
    answered: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        answered.set_result(time.monotonic())
        writer.write(payload)  # then close: the data must still get through
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with DelayLine.start(port, rtt) as line:
            reader, writer = await asyncio.open_connection("127.0.0.1", line.port)
            sent = time.monotonic()
            writer.write(b"hello")
            got = await asyncio.wait_for(reader.read(-1), 20)  # to EOF
            back = time.monotonic()
            writer.close()
            await writer.wait_closed()
            assert line.connections == 1
    finally:
        server.close()
        await server.wait_closed()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert answered.result() - sent >= rtt / 2 - 0.005  # one way there
    assert back - answered.result() >= rtt / 2 - 0.005  # and one way back
    assert back - sent < rtt + 2.0


async def test_an_eof_passes_behind_the_data_and_the_line_stays_open_the_other_way() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(-1)  # until the caller's EOF
        writer.write(hashlib.sha256(data).hexdigest().encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = os.urandom(200_000)
    try:
        async with DelayLine.start(port, 0.02) as line:
            reader, writer = await asyncio.open_connection("127.0.0.1", line.port)
            writer.write(body)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(-1), 10)
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert answer == hashlib.sha256(body).hexdigest().encode()


async def test_a_bandwidth_limit_holds_the_rate_and_the_sender_waits() -> None:
    """With ``rate``, a fast sender's bytes arrive no faster than the rate
    (and not much slower), and the line holds only a little of them: the
    rest waits on the sender's side."""
    rate = 20e6  # bytes/s
    size = 8 * 1024 * 1024
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < size:
            chunk = await reader.read(1 << 20)
            assert chunk
            got += len(chunk)
        done.set_result(time.monotonic())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    held_most = 0
    try:
        async with DelayLine.start(port, 0.02, rate=rate) as line:
            _, writer = await asyncio.open_connection("127.0.0.1", line.port)
            start = time.monotonic()
            writer.write(os.urandom(size))
            while not done.done():
                held_most = max(held_most, *(side.held_bytes for side in line._sides))
                await asyncio.sleep(0.01)
            seconds = done.result() - start
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    achieved = size / seconds
    assert achieved <= rate * 1.05, f"{achieved / 1e6:.1f} MB/s over a {rate / 1e6:g} MB/s line"
    assert achieved >= rate * 0.7, f"{achieved / 1e6:.1f} MB/s on a {rate / 1e6:g} MB/s line"
    # Half a round trip in flight plus 5 ms of queue, plus one read's chunk.
    assert held_most <= rate * (0.01 + 0.005) + 300_000, held_most


def test_a_bandwidth_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate"):
        DelayLine(("127.0.0.1", 1), 0.01, rate=0)


async def test_the_round_trip_is_the_one_asked_for_not_a_millisecond_more() -> None:
    """A one-byte ping-pong through a 50 ms line takes 50 ms: bytes are never
    released early, and the loop's millisecond timers do not add to it (they
    made it 52 ms, which the long-link targets of RTT + 3 ms would pay for)."""
    rtt = 0.05

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
        finally:
            writer.close()  # not left to the garbage collector after the loop closed

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    times: list[float] = []
    try:
        async with DelayLine.start(port, rtt) as line:
            reader, writer = await asyncio.open_connection("127.0.0.1", line.port)
            for _ in range(30):
                sent = time.monotonic()
                writer.write(b"x")
                await asyncio.wait_for(reader.readexactly(1), 5)
                times.append(time.monotonic() - sent)
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    times.sort()
    assert times[0] >= rtt - 0.0007, times  # at most 0.3 ms early each way
    # The lower quartile: what a busy machine adds to some samples is not
    # the line's (the old line's quartile was 1-2 ms over at every RTT).
    assert times[len(times) // 4] <= rtt + 0.0006, times
