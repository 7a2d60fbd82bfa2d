"""server.proxy.front's body feed over a real socket: a proxied request's
body reaches the tunnel as the caller's reads, uncopied.

The reads queued while the tunnel was full were joined into one piece
before they were written on: one more copy of every byte of an upload
(5% of the relay's CPU time). The tunnel keeps a ``bytes`` object
uncopied (``sluice.ssh_send``), so each read goes on as it is. Seen in the
process's memory (tracemalloc) while the queued reads are taken, and in the
bytes taken: every byte, in order, also past the feed's high-water mark
(where the caller's reads pause and resume).
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from typing import cast

from server.proxy.front import Front, FrontProtocol, _BodyFeed, _Request
from server.web.services import Services
from tests.support.waiting import wait_until

KiB = 1024
MiB = 1024 * KiB


class Taking(FrontProtocol):
    """The real front, its request served by taking the body: first once
    *hold* bytes of it have arrived (so the caller's reads queue up), then
    piece by piece, as the tunnel's writer takes it."""

    def __init__(self, front: Front, hold: int) -> None:
        super().__init__(front)
        self.hold = hold
        self.pieces: list[bytes] = []
        self.grown = -1  # bytes allocated while the queued reads were taken
        self.done = asyncio.Event()

    async def _serve(self, request: _Request, body: bytes | _BodyFeed | None) -> None:
        assert isinstance(body, _BodyFeed)
        feed = body
        await wait_until(lambda: request.length - feed.remaining >= self.hold, what="the held part")
        pieces = aiter(feed)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            taken = 0
            while taken < self.hold:
                piece = await anext(pieces)
                self.pieces.append(piece)
                taken += len(piece)
            self.grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        async for piece in pieces:
            self.pieces.append(piece)
        self.done.set()


async def _upload(body: bytes, hold: int) -> Taking:
    """PUT *body* through the front with a Content-Length; the protocol that took it."""
    front = Front(cast(Services, None), max_header_bytes=8190, max_headers=100, idle_timeout=30)
    made: list[Taking] = []

    def protocol() -> Taking:
        made.append(Taking(front, hold))
        return made[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            b"PUT /v1/connections/c1/proxy/up HTTP/1.1\r\nHost: relay\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        writer.write(head)
        for at in range(0, len(body), 64 * KiB):  # as a caller's writes
            writer.write(body[at : at + 64 * KiB])
            await writer.drain()
        await wait_until(lambda: bool(made), what="the caller's connection")
        await asyncio.wait_for(made[0].done.wait(), 20)
        assert made[0].transport is not None
        made[0].transport.close()
        await asyncio.wait_for(made[0].gone.wait(), 10)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return made[0]


def _body(size: int) -> bytes:
    return b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(size // 32))


async def test_queued_reads_reach_the_tunnel_uncopied() -> None:
    body = _body(768 * KiB)  # under the high-water mark: every read queues
    taking = await _upload(body, hold=len(body))
    assert b"".join(taking.pieces) == body
    # Joined, the queued reads were copied into one new object of their size.
    assert 0 <= taking.grown < 64 * KiB, taking.grown
    assert len(taking.pieces) > 1  # each read as it came


async def test_a_body_past_the_high_water_mark_arrives_whole() -> None:
    body = _body(5 * MiB)  # the caller's reads pause at 1 MiB queued, then resume
    taking = await _upload(body, hold=MiB)
    assert b"".join(taking.pieces) == body
