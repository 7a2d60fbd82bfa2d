"""``sluice.gathered_write``: several buffers written as one keep flow control
intact on the loops Sluice runs (asyncio and uvloop): a peer that stops
reading pauses the writer once its buffer passes the high-water mark. On
Python 3.12.0-3.12.8 and 3.13.0-3.13.1 asyncio's own ``writelines`` never
paused (CPython gh-127655, PSF-2024-14): this test fails there without the
join. Both ways the tunnel writes are held to it: ``write_parts`` and the
outbox's flush, which makes the same choice inline. And every byte arrives,
in order, on each loop and through a transport that has ``write`` only."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sluice.gathered_write import write_parts
from sluice.send_coalescing import Outbox
from tests.support.loops import loop_runners

HIGH = 64 * 1024
PARTS = [bytes([i]) * (32 * 1024) for i in range(64)]  # 2 MiB, each part its own byte


Write = Callable[[asyncio.WriteTransport, list[bytes]], None]


def _through_the_outbox(transport: asyncio.WriteTransport, parts: list[bytes]) -> None:
    # More than the outbox's limit: written at once, by its flush.
    Outbox(asyncio.get_running_loop()).add(transport, parts)


class _Writer(asyncio.Protocol):
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1


_Seen = tuple[int, int, int, bytes]


async def _write_to_a_stalled_peer(write: Write) -> _Seen:
    """Parts written at once to a socket whose peer does not read yet; then
    the peer reads all. Returns the pauses seen when the write returned, the
    bytes the transport held then, the resumes seen once the peer had read
    all (the transport sent the last bytes, and so resumed, before), and
    what the peer read."""
    ours, theirs = socket.socketpair()
    # A small kernel buffer, whatever this host's default: the transport
    # must hold most of what is written.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, writer = await loop.create_connection(_Writer, sock=ours)
    try:
        transport.set_write_buffer_limits(high=HIGH)
        write(transport, list(PARTS))
        paused, held = writer.paused, transport.get_write_buffer_size()
        received = bytearray()
        async with asyncio.timeout(10):
            while len(received) < sum(map(len, PARTS)):
                received += await loop.sock_recv(theirs, 1 << 20)
        return paused, held, writer.resumed, bytes(received)
    finally:
        transport.close()
        theirs.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("write", [write_parts, _through_the_outbox], ids=["parts", "outbox"])
@pytest.mark.parametrize("run", loop_runners())
def test_a_peer_that_stops_reading_pauses_the_writer(
    run: Callable[[Coroutine[Any, Any, _Seen]], _Seen], write: Write
) -> None:
    paused, held, resumed, received = run(_write_to_a_stalled_peer(write))
    assert held > HIGH  # the kernel took only part of it: the transport holds the rest
    assert paused == 1, f"{held} bytes held, the writer never told to pause"
    assert resumed == 1
    assert received == b"".join(PARTS)


class _WriteOnly:
    """A transport with ``write`` only, as asyncssh's proxy-command tunnel."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def test_a_transport_without_writelines_gets_one_write_of_all() -> None:
    transport = _WriteOnly()
    write_parts(transport, [b"a", bytearray(b"bc"), memoryview(b"def")])
    assert transport.writes == [b"abcdef"]


def test_a_lost_connection_is_no_error_here() -> None:
    class _Lost(_WriteOnly):
        def write(self, data: bytes) -> None:
            super().write(data)
            raise ConnectionResetError

    lost = _Lost()
    write_parts(lost, [b"a", b"b"])  # raises nothing: asyncssh's connection_lost reports it
    assert lost.writes == [b"ab"]  # the write was made, and its error kept in
