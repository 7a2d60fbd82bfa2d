"""bench's delay line: every byte arrives intact, half a round trip later in
each direction, and an EOF or a close passes through behind the data."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import statistics
import time
from pathlib import Path

import pytest

from bench.delay_line import DelayLine, TimedEcho, line_cpu_seconds, spawn_line
from bench.line_clock import _Timerfd
from tests.support.waiting import wait_until

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial


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


def test_the_timer_must_be_one_the_line_knows() -> None:
    with pytest.raises(ValueError, match="timer: must be one of timerfd, spin, not 'sleep'"):
        DelayLine(("127.0.0.1", 1), 0.01, timer="sleep")


async def test_the_round_trip_is_the_one_asked_for_not_a_millisecond_more() -> None:
    """A one-byte ping-pong through a 50 ms line (in this process, on the
    stock loop) takes 50 ms: bytes are never released early, and the loop's
    millisecond timers do not add to it (they made it 52 ms, which the
    long-link targets of RTT + 3 ms would pay for)."""
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
    assert times[0] >= rtt, times  # never early
    # The lower quartile: what a busy machine adds to some samples is not
    # the line's (a line on the loop's millisecond timers was 1-2 ms over at
    # every RTT). Here in one process the test's own four hops and the echo
    # take their loop turns too: 0.4-0.7 ms alone, 1.0 ms once in the full
    # suite (the bound was 1 ms then).
    # Plus what this host adds now to each of the round trip's two sleeps of
    # half of it (the process idles between the line's wake-ups): while this
    # VM's host ran slow a timerfd armed for 25 ms woke 0.4-0.5 ms late (one
    # for 2 ms 0.05-0.1 ms), and this quartile was 51.6-52.5 ms.
    woken_late = await _timerfd_lateness(rtt / 2)
    assert times[len(times) // 4] <= rtt + 0.0015 + 2 * woken_late, (woken_late, times)


async def _timerfd_lateness(after: float, wakeups: int = 10) -> float:
    """The median lateness, seconds, of a timerfd armed *after* seconds ahead
    on this loop (the clock the line releases bytes by: bench.line_clock)."""
    loop = asyncio.get_running_loop()
    timer = _Timerfd()
    late: list[float] = []
    try:
        for _ in range(wakeups):
            fired: asyncio.Future[None] = loop.create_future()

            def wake(done: asyncio.Future[None] = fired) -> None:
                if not done.done():
                    done.set_result(None)

            due = time.monotonic() + after
            loop.add_reader(timer.fd, wake)
            timer.set(due)
            try:
                await asyncio.wait_for(fired, 1)
            finally:
                loop.remove_reader(timer.fd)
            late.append(time.monotonic() - due)
            timer.clear()
    finally:
        timer.close()
    return sorted(late)[wakeups // 2]


async def test_a_line_process_is_never_early_and_late_by_well_under_a_millisecond(
    tmp_path: Path,
) -> None:
    """The bench's line (a process of its own, on uvloop) holds one-byte pings
    half the round trip each way: never less (the old line released bytes up
    to 0.3 ms early), and rarely more than a fraction of a millisecond (its
    loop's millisecond timers made a 50 ms line a 52 ms one)."""
    rtt_ms = 10
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    server = await loop.create_server(lambda: TimedEcho(arrivals), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    answers: asyncio.Queue[float] = asyncio.Queue()

    class Pinger(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            answers.put_nowait(time.monotonic())

    child, line_port = await spawn_line(port, rtt_ms, tmp_path / "line.log")
    there: list[float] = []
    back: list[float] = []
    try:
        transport, _ = await loop.create_connection(Pinger, "127.0.0.1", line_port)
        for _ in range(60):
            # A pause first, not for synchronisation: pings fall at every
            # phase of the loop's millisecond clock.
            await asyncio.sleep(random.uniform(0, 0.002))
            arrivals.clear()
            sent = time.monotonic()
            transport.write(b"x")
            answered = await asyncio.wait_for(answers.get(), 5)
            there.append(arrivals[0] - sent)
            back.append(answered - arrivals[0])
        transport.close()
    finally:
        await child.stop()
        server.close()
        await server.wait_closed()
    half = rtt_ms / 2000
    late_ms = sorted((t - half) * 1000 for t in there + back)
    assert late_ms[0] >= 0, f"a byte came {-late_ms[0]:.3f} ms early: {late_ms}"
    # The median: a busy machine delays some samples, not the line's doing.
    # Plus what this host adds now to a timerfd's wake-up after half the
    # round trip (the line's process idles between pings): CI's host once
    # made the median 0.57 ms, its best sample 0.21 ms, where a quiet host's
    # timerfd wakes 0.12 ms late and the median stays under 0.5 ms.
    woken_late = await _timerfd_lateness(half)
    assert statistics.median(late_ms) <= 0.5 + woken_late * 1000, (woken_late, late_ms)
    round_trips = sorted(t + b for t, b in zip(there, back, strict=True))
    bound = (rtt_ms + 1) / 1000 + 2 * woken_late
    assert statistics.median(round_trips) <= bound, (woken_late, round_trips)


async def test_a_line_process_costs_cpu_for_what_it_carries_not_for_waiting(
    tmp_path: Path,
) -> None:
    """64 KiB requests and answers one after another through a 10 ms line
    (a line in its own process, as the bench runs it): the line wakes when
    bytes are due and moves them, and costs little CPU besides. The old line
    spun its loop for the last 0.7 ms before every release: 1.4 ms of CPU
    per round trip, 14% of a core for as long as anything was on its way."""
    rtt_ms = 10
    message = os.urandom(64 * 1024)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: TimedEcho([]), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    child, line_port = await spawn_line(port, rtt_ms, tmp_path / "line.log")
    round_trips = 100
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", line_port)
        writer.write(message)  # a first round trip: the connection made, the line warm
        await asyncio.wait_for(reader.readexactly(len(message)), 5)
        cpu0 = line_cpu_seconds([child.pid])
        own0 = time.process_time()
        began = time.monotonic()
        for _ in range(round_trips):
            writer.write(message)
            assert await asyncio.wait_for(reader.readexactly(len(message)), 5) == message
        wall = time.monotonic() - began
        own = time.process_time() - own0
        cpu = line_cpu_seconds([child.pid]) - cpu0
        writer.close()
    finally:
        await child.stop()
        server.close()
        await server.wait_closed()
    carried_mib = round_trips * 2 * len(message) / 2**20
    # Against this process's own CPU for the same bytes (the caller and the
    # echo: as many reads and writes as the line's), which a slow machine
    # slows alike: the line took 20-22 ms (moving 12.5 MiB, 200 wake-ups) when
    # a fixed 50 ms was the bound, and 41-51 ms against its caller's 41-48
    # while this VM's host was slow; the old line five times the former.
    assert cpu <= 2 * own, (
        f"{cpu * 1000:.0f} ms CPU for {carried_mib:g} MiB in {wall:.2f} s "
        f"(the caller and echo: {own * 1000:.0f} ms)"
    )


def _listen_overflows() -> int:
    """SYNs the kernel dropped at full accept queues, since boot (all sockets)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    names, values = (line.split() for line in lines if line.startswith("TcpExt:"))
    return int(values[names.index("ListenOverflows")])


async def test_what_a_caller_sends_at_once_waits_for_a_slow_connect_to_the_target(
    tmp_path: Path,
) -> None:
    """A caller's first bytes reach the target even when the line's own
    connection on to it takes longer than the delay (a busy target: here one
    whose accept queue is full, so the line's SYN is retried after a second).
    The line (on uvloop, in its own process) read them at once and, with no
    far side yet, dropped them: a GET beside a download sometimes never came
    back."""
    loop = asyncio.get_running_loop()
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(0)  # room for one connection not yet accepted
    target.setblocking(False)
    filler = socket.create_connection(target.getsockname(), timeout=5)
    child, line_port = await spawn_line(target.getsockname()[1], 10, tmp_path / "line.log")
    accepted: list[socket.socket] = []
    try:
        dropped = _listen_overflows()
        _, writer = await asyncio.open_connection("127.0.0.1", line_port)
        writer.write(b"hello")
        # The line's SYN dropped (the kernel counts it), then room for its retry.
        await wait_until(lambda: _listen_overflows() > dropped, timeout=5, what="a dropped SYN")
        accepted.append((await asyncio.wait_for(loop.sock_accept(target), 5))[0])  # the filler
        line_side, _ = await asyncio.wait_for(loop.sock_accept(target), 5)
        accepted.append(line_side)
        line_side.setblocking(False)
        got = b""
        with contextlib.suppress(TimeoutError):
            while len(got) < 5:
                chunk = await asyncio.wait_for(loop.sock_recv(line_side, 100), 3)
                if not chunk:
                    break
                got += chunk
        writer.close()
    finally:
        await child.stop()
        for sock in (*accepted, filler, target):
            sock.close()
    assert got == b"hello"
