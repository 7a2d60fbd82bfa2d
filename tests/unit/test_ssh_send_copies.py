"""``sluice.ssh_send``: ``bytes`` written to a channel wait for its window
uncopied (asyncssh copied every write into a bytearray, and copied the rest
of it again when a packet cut at the window's edge dropped its front); what
a caller may reuse (a bytearray, a view) is still copied before ``write``
returns. The relay's uploads are written so, as the caller's reads.

Seen in the process's memory (tracemalloc) while the data waits, and at the
peer, a stock asyncssh server: every byte in order, across packets cut at the
window's edge and across key exchanges (where asyncssh's own flush cuts them).
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc

import asyncssh
import pytest

from sluice.ssh_tuning import tune_asyncssh
from tests.support.ssh_pair import OpenServer, connect_local, serve_local

MiB = 1024 * 1024
# As the relay writes an upload: reads of the event loop's size.
PIECE = 256_000
PIECES = 64
# Not a multiple of PIECE: packets are cut at the window's edge.
WINDOW = 1_000_003


def _piece(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest() * (PIECE // 32)


async def _write_all(pieces: list[bytes], rekey_bytes: int) -> tuple[str, int]:
    """Write *pieces* to a stock asyncssh server in one loop turn, then wait
    for them to arrive. Returns the server's digest of what it got and the
    new memory traced right after the writes."""
    assert tune_asyncssh()
    total = sum(len(p) for p in pieces)

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        data = await process.stdin.readexactly(total)
        process.stdout.write(hashlib.sha256(data).hexdigest().encode())
        process.exit(0)

    server, port = await serve_local(
        OpenServer,
        process_factory=handle,
        window=WINDOW,
        max_pktsize=256 * 1024,
        rekey_bytes=rekey_bytes,
    )
    try:
        async with (
            connect_local(port, rekey_bytes=rekey_bytes) as conn,
            conn.create_process("sum", encoding=None) as proc,
        ):
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for piece in pieces:
                    proc.stdin.write(piece)
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            await proc.stdin.drain()
            got = await asyncio.wait_for(proc.stdout.read(), 30)
    finally:
        server.close()
        await server.wait_closed()
    return got.decode(), grown


@pytest.mark.parametrize("rekey_bytes", [1 << 30, 3 * MiB], ids=["no-rekey", "rekeys"])
async def test_bytes_wait_for_the_window_uncopied(rekey_bytes: int) -> None:
    pieces = [_piece(i) for i in range(PIECES)]
    expected = hashlib.sha256(b"".join(pieces)).hexdigest()
    got, grown = await _write_all(pieces, rekey_bytes)
    assert got == expected
    # 16 MB written, at most the window's worth sent in that loop turn: the
    # rest waited. Copied, it cost its own size in new memory (15+ MB); now
    # what was sent (encrypted packets the transport holds) and little else.
    assert grown < 4 * MiB, grown


async def test_a_reused_buffer_is_copied_before_write_returns() -> None:
    # The agent writes views of the buffer it reads its next answer into.
    buffer = bytearray(PIECE)
    expected = hashlib.sha256(b"".join(_piece(i) for i in range(8))).hexdigest()

    async def write_and_overwrite() -> str:
        assert tune_asyncssh()

        async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
            data = await process.stdin.readexactly(8 * PIECE)
            process.stdout.write(hashlib.sha256(data).hexdigest().encode())
            process.exit(0)

        server, port = await serve_local(
            OpenServer, process_factory=handle, window=WINDOW, max_pktsize=256 * 1024
        )
        try:
            async with (
                connect_local(port) as conn,
                conn.create_process("sum", encoding=None) as proc,
            ):
                for i in range(8):
                    buffer[:] = _piece(i)
                    with memoryview(buffer) as view:
                        proc.stdin.write(view)
                buffer[:] = bytes(PIECE)  # reused: what waits must not change
                await proc.stdin.drain()
                got: bytes = await asyncio.wait_for(proc.stdout.read(), 30)
        finally:
            server.close()
            await server.wait_closed()
        return got.decode()

    assert await write_and_overwrite() == expected


class _WritesWhenResumed(asyncssh.SSHClientSession[bytes]):
    """Writes more ``bytes`` to its channel from ``resume_writing``, inside
    the flush that resumed it (as asyncio's SSLProtocol does with the TLS
    records it holds: an HTTPS request through the tunnel); counts what the
    echo sends back."""

    def __init__(self, more: int) -> None:
        self.more = more
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.received = 0
        self.arrived = asyncio.Event()
        self.expected = 0

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def resume_writing(self) -> None:
        if self.more and self.chan is not None:
            self.more -= 1
            self.chan.write(_piece(self.more))

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.received += len(data)
        if self.received >= self.expected:
            self.arrived.set()


async def _echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
    while data := await process.stdin.read(65536):
        process.stdout.write(data)
    process.exit(0)


async def test_bytes_written_inside_a_flush_are_sent_whole() -> None:
    """A session that writes from ``resume_writing`` writes inside the flush
    that resumed it, where asyncssh's own flush cuts the data it sends off
    the front of each entry: a ``bytes`` entry kept uncopied must be made a
    bytearray there too, or the cut fails and takes the connection down."""
    assert tune_asyncssh()
    server, port = await serve_local(
        OpenServer, process_factory=_echo, window=128 * 1024, max_pktsize=32 * 1024
    )
    try:
        async with connect_local(port) as conn:
            session = _WritesWhenResumed(8)
            session.expected = 9 * PIECE
            chan, _ = await conn.create_session(lambda: session, encoding=None)
            chan.write(_piece(99))  # more than the window: reading it pauses, then resumes
            closed = asyncio.ensure_future(conn.wait_closed())
            arrived = asyncio.ensure_future(session.arrived.wait())
            try:
                await asyncio.wait({closed, arrived}, timeout=30, return_when="FIRST_COMPLETED")
            finally:
                closed.cancel()
                arrived.cancel()
            assert (session.more, session.received) == (0, 9 * PIECE)
    finally:
        server.close()
        await server.wait_closed()
