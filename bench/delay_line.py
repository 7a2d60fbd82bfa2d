"""A long link on loopback: a TCP relay that holds every byte half a round trip
in each direction.

This VM's kernel has no ``netem`` (``tc qdisc add … netem`` fails), so the
delay is made in user space. A ``DelayLine`` listens on 127.0.0.1 and joins
each connection to a target; what one side sends reaches the other
``rtt / 2`` seconds later, and nothing else slows it: the line reads as fast
as its peer writes (up to ``MAX_HELD`` bytes held per direction) and writes
each chunk at its due time, so throughput is what the two ends make of the
round trip, as over a WAN with wide TCP windows.

Optionally the line has a bottleneck too (``rate``, bytes/s per direction):
each chunk then leaves only after the ones before it have been "serialised" at
that rate, and the line holds no more than the link carries in half a round
trip plus a small bottleneck queue (``queue_seconds`` of the rate), with small
socket buffers on its own side; so a sender faster than the rate builds its
queue on ITS side (kernel send queue, transport buffers), as on a real link
whose bottleneck is slower than the sender. Off by default.

Bytes fall due on ``time.monotonic()`` and leave when a timerfd wakes the
line at their due time (``bench/line_clock.py``): never early, late by the
loop's turn, and the line costs CPU only for the bytes it moves.

Usable in-process (``async with DelayLine.start(port, rtt)``) from tests and
the bench, or on its own: ``python -m bench.delay_line TARGET_PORT RTT_MS
[--mbps MB_PER_S]`` prints the port it listens on.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

from bench.line_clock import DEFAULT_TIMER, TIMERS, Clock, make_clock, now
from bench.proc import Child, spawn
from sluice.gathered_write import write_parts
from sluice.runtime import install_uvloop

# Held per direction before the line stops reading from the sender: the data
# a link of this round trip carries at full speed must fit (64 MiB holds
# 50 ms of 1.3 GB/s one way).
MAX_HELD = 64 * 1024 * 1024
# With a bandwidth limit: the line's own socket buffers (so that the kernel
# between sender and line does not become a queue of its own), and the
# bottleneck queue it holds beyond what is in flight, in seconds of the rate.
LIMITED_SOCKET_BUFFER = 128 * 1024
QUEUE_SECONDS = 0.005
# glibc's mallopt parameters (malloc.h), and what the line's process sets them to.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_MMAP_THRESHOLD = 16 * 1024 * 1024
_EOF = "eof"
_CLOSE = "close"


class _Direction(asyncio.Protocol):
    """One side's socket: what it reads is held, then written to the other side."""

    def __init__(
        self,
        clock: Clock,
        delay: float,
        peer: _Direction | None = None,
        on_made: Callable[[_Direction], None] | None = None,
        rate: float | None = None,
        queue_seconds: float = QUEUE_SECONDS,
    ) -> None:
        self.clock = clock
        self.arm_token: int | None = None  # the clock's wake-up this side waits for
        self.delay = delay
        self.rate = rate  # bytes/s this side's reads leave at; None: no limit
        # What is held before reading stops: in flight plus the bottleneck queue.
        self.max_held = (
            MAX_HELD if rate is None else max(64 * 1024, int(rate * (delay + queue_seconds)))
        )
        self.busy_until = 0.0  # when the bottleneck has sent everything held
        self.on_made = on_made
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        # (due, data): data is bytes, or _EOF / _CLOSE for what ended this side.
        self.held: collections.deque[tuple[float, bytes | str]] = collections.deque()
        self.held_bytes = 0
        self.most_held = 0  # the most bytes held at once: the most in flight this way
        self.carried = 0  # bytes passed on to the peer so far
        self.reading_paused = False
        self.peer_paused = False
        self.closed = asyncio.get_running_loop().create_future()

    # -- this side's socket --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses.)
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        if self.on_made is not None:
            # Nothing is read until the far side is connected.
            transport.pause_reading()
            self.reading_paused = True
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        self._hold(data)

    def eof_received(self) -> bool:
        self._hold(_EOF)
        return True  # keep the other half open until the EOF has gone through

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        # What this side sent still arrives, then the other side is closed;
        # what was on its way to this side is dropped.
        self._hold(_CLOSE)
        if self.peer is not None:
            self.peer._cancel()
            self.peer.held.clear()
            self.peer.held_bytes = 0

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.peer_paused = True
            self.peer._update_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.peer_paused = False
            self.peer._update_reading()

    # -- holding ---------------------------------------------------------------
    def _hold(self, data: bytes | str) -> None:
        if self.rate is None:
            due = now() + self.delay
        else:
            # The bottleneck sends one chunk after another at the rate, then
            # the chunk takes the delay (an EOF or close queues behind data).
            size = len(data) if isinstance(data, bytes) else 0
            self.busy_until = max(now(), self.busy_until) + size / self.rate
            due = self.busy_until + self.delay
        self.held.append((due, data))
        self.held_bytes += len(data) if isinstance(data, bytes) else 0
        self.most_held = max(self.most_held, self.held_bytes)
        self._update_reading()
        if self.arm_token is None:
            self.clock.arm(self, self.held[0][0])

    def release(self) -> None:
        """Pass on to the peer what is due (the clock calls it at its due time)."""
        if self._waiting_for_peer():
            # Kept until the far side is connected (_connect arms the clock
            # again): bytes a caller sent at once were lost here while the
            # line's connect to a busy target took longer than the delay.
            return
        until = now() + self.clock.early
        out: list[bytes] = []
        mark = ""
        while self.held and self.held[0][0] <= until:
            _, data = self.held.popleft()
            if isinstance(data, str):
                mark = data
                break
            out.append(data)
            self.held_bytes -= len(data)
        target = self.peer.transport if self.peer is not None else None
        if target is not None and not target.is_closing():
            if out:
                write_parts(target, out)  # (asyncio's writelines may not pause: gathered_write)
                self.carried += sum(map(len, out))
            if mark == _EOF and target.can_write_eof():
                target.write_eof()
            elif mark == _CLOSE:
                target.close()
        self._update_reading()
        if self.held:
            self.clock.arm(self, self.held[0][0])

    def _waiting_for_peer(self) -> bool:
        """The caller's side, while the line's connection on to the target is
        not made yet."""
        return self.on_made is not None and (self.peer is None or self.peer.transport is None)

    def _update_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        # (Not reading until the far side is connected: uvloop may start
        # reading after connection_made paused it.)
        want_pause = self.held_bytes > self.max_held or self.peer_paused or self._waiting_for_peer()
        if want_pause and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        elif not want_pause and self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False

    def _cancel(self) -> None:
        self.clock.disarm(self)


class DelayLine:
    """Listens on 127.0.0.1:port; each connection goes on to *target* with the delay."""

    def __init__(
        self,
        target: tuple[str, int],
        rtt: float,
        rate: float | None = None,
        queue_seconds: float = QUEUE_SECONDS,
        timer: str = DEFAULT_TIMER,
    ) -> None:
        if timer not in TIMERS:
            raise ValueError(f"timer: must be one of {', '.join(TIMERS)}, not {timer!r}")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate: must be a positive number of bytes/s, not {rate!r}")
        if queue_seconds < 0:
            raise ValueError(f"queue_seconds: must be 0 or more, not {queue_seconds!r}")
        self.target = target
        self.rtt = rtt
        self.rate = rate
        self.queue_seconds = queue_seconds  # the bottleneck's queue (with a rate only)
        self.timer = timer  # which clock releases held bytes (bench/line_clock.py)
        self.clock: Clock | None = None
        self.server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._sides: list[_Direction] = []
        self.connections = 0

    @property
    def carried_to_target(self) -> int:
        """Bytes the line has passed on from callers to the target, all connections."""
        return sum(side.carried for side in self._sides if side.on_made is not None)

    @property
    def carried_to_caller(self) -> int:
        """Bytes the line has passed on from the target back to callers, all connections."""
        return sum(side.carried for side in self._sides if side.on_made is None)

    @property
    def most_in_flight_to_target(self) -> int:
        """The most bytes any one connection had on their way from caller to
        target at once (held in the line; without a rate limit, what the
        sender had in flight over the link)."""
        return max((side.most_held for side in self._sides if side.on_made is not None), default=0)

    def reset_most_in_flight(self) -> None:
        """Count ``most_in_flight_to_target`` from now on."""
        for side in self._sides:
            side.most_held = side.held_bytes

    def set_rtt(self, rtt: float) -> None:
        """Bytes read from now on take *rtt* (a very long one: a link that
        stalls without closing, as a database behind a dead route does)."""
        self.rtt = rtt
        for side in self._sides:
            side.delay = rtt / 2

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def _protocol(self) -> _Direction:
        assert self.clock is not None
        near = _Direction(
            self.clock,
            self.rtt / 2,
            on_made=self._link,
            rate=self.rate,
            queue_seconds=self.queue_seconds,
        )
        self._sides.append(near)
        return near

    def _link(self, near: _Direction) -> None:
        """A caller connected: connect on to the target, then start reading."""
        self.connections += 1
        task = asyncio.ensure_future(self._connect(near))
        self._links.add(task)
        task.add_done_callback(self._links.discard)

    async def _connect(self, near: _Direction) -> None:
        loop = asyncio.get_running_loop()
        far = _Direction(
            near.clock, self.rtt / 2, peer=near, rate=self.rate, queue_seconds=self.queue_seconds
        )
        near.peer = far
        self._sides.append(far)
        assert near.transport is not None
        try:
            if self.rate is None:
                await loop.create_connection(lambda: far, *self.target)
            else:
                await loop.create_connection(lambda: far, sock=await self._limited_socket())
        except OSError:
            near.transport.close()
            return
        near._update_reading()
        if near.held and near.arm_token is None:  # what came before the connection
            near.clock.arm(near, near.held[0][0])

    @staticmethod
    def _limit_buffers(sock: socket.socket) -> None:
        """Small socket buffers on the line's side (set before connect/listen,
        so that the window scale follows them)."""
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, LIMITED_SOCKET_BUFFER)

    async def _limited_socket(self) -> socket.socket:
        """A socket with small buffers, connected to the target."""
        host, port = self.target
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._limit_buffers(sock)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except OSError:
            sock.close()
            raise
        return sock

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        port: int,
        rtt: float,
        host: str = "127.0.0.1",
        rate: float | None = None,
        timer: str = DEFAULT_TIMER,
    ) -> AsyncIterator[DelayLine]:
        """A delay line to *host*:*port* with round trip *rtt* seconds (and at
        most *rate* bytes/s each way, if given), for a ``with`` block."""
        line = cls((host, port), rtt, rate, timer=timer)
        await line.open()
        try:
            yield line
        finally:
            await line.close()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.clock = make_clock(self.timer, loop)
        if self.rate is None:
            self.server = await loop.create_server(self._protocol, "127.0.0.1", 0, backlog=1024)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._limit_buffers(sock)
        sock.bind(("127.0.0.1", 0))
        self.server = await loop.create_server(self._protocol, sock=sock, backlog=1024)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._links):
            task.cancel()
        for side in self._sides:
            side._cancel()
            if side.transport is not None:
                side.transport.abort()
        if self.clock is not None:
            self.clock.close()
            self.clock = None
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


async def _serve(
    target_port: int, rtt_ms: float, mb_per_s: float | None, queue_ms: float, timer: str
) -> None:
    rate = mb_per_s * 1e6 if mb_per_s else None
    line = DelayLine(("127.0.0.1", target_port), rtt_ms / 1000, rate, queue_ms / 1000, timer)
    await line.open()
    print(line.port, flush=True)
    await asyncio.Event().wait()


def _keep_freed_memory() -> None:
    """Called once in the line's own process: its heap keeps what it frees.

    Every read is a new ~256 KiB bytes object, freed when written on. With
    glibc's defaults each came from a fresh ``mmap``, or from the top of a
    heap trimmed back after the last free, so every read paid its pages'
    faults and zeroing: half the line's CPU per GiB carried."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target_port", type=int)
    parser.add_argument("rtt_ms", type=float)
    parser.add_argument("--mbps", type=float, default=None, help="MB/s each way (none: no limit)")
    parser.add_argument(
        "--queue-ms",
        type=float,
        default=QUEUE_SECONDS * 1000,
        help="the bottleneck's queue with --mbps, ms of the rate",
    )
    parser.add_argument(
        "--timer",
        choices=TIMERS,
        default=DEFAULT_TIMER,
        help="what releases held bytes: timerfd, or the old spinning clock (A/B runs only)",
    )
    args = parser.parse_args()
    if args.mbps is not None and args.mbps <= 0:
        parser.error(f"--mbps: must be positive, not {args.mbps:g}")
    if args.queue_ms < 0:
        parser.error(f"--queue-ms: must be 0 or more, not {args.queue_ms:g}")
    install_uvloop()
    if args.timer != "spin":  # the old line as it was, for A/B runs
        _keep_freed_memory()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.target_port, args.rtt_ms, args.mbps, args.queue_ms, args.timer))
    sys.exit(0)


class TimedEcho(asyncio.Protocol):
    """A target that echoes what it reads and notes when each read arrived
    (``time.monotonic``): a line's pings come back through it, timed at both
    ends (``bench.line_check``, ``tests/unit/test_delay_line.py``)."""

    def __init__(self, arrivals: list[float]) -> None:
        self.arrivals = arrivals
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.arrivals.append(time.monotonic())
        assert self.transport is not None
        self.transport.write(data)


if __name__ == "__main__":
    main()


def line_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the line processes *pids* have run, to the
    nanosecond: the first field of each thread's /proc schedstat (stat's
    utime and stime count 10 ms ticks, coarse beside a line's few ms)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


async def spawn_line(
    target_port: int,
    rtt_ms: float,
    log: Path,
    mb_per_s: float | None = None,
    queue_ms: float | None = None,
    timer: str = DEFAULT_TIMER,
) -> tuple[Child, int]:
    """A delay line to 127.0.0.1:*target_port* in a process of its own (so it
    does not share an event loop with the bench); returns it and its port.
    *mb_per_s*: a bandwidth limit each way (MB/s), none by default;
    *queue_ms*: its bottleneck's queue (default ``QUEUE_SECONDS``);
    *timer*: the line's clock (``spin``, the old one, for A/B runs only)."""
    limit = ["--mbps", f"{mb_per_s:g}"] if mb_per_s else []
    if queue_ms is not None:
        limit += ["--queue-ms", f"{queue_ms:g}"]
    if timer != DEFAULT_TIMER:
        limit += ["--timer", timer]
    child = await spawn(
        f"delay line {rtt_ms:g} ms",
        [sys.executable, "-m", "bench.delay_line", str(target_port), str(rtt_ms), *limit],
        log=log,
        stdout_pipe=True,
    )
    assert child.proc.stdout is not None
    try:
        line = await asyncio.wait_for(child.proc.stdout.readline(), 15)
        return child, int(line)
    except (TimeoutError, ValueError):
        await child.stop()
        raise RuntimeError(f"the delay line did not start:\n{child.tail()}") from None
