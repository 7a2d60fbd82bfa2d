"""``sluice.send_scheduler``: while the tunnel's transport is paused (above its
high-water mark), a channel's data waits in the channel for its turn, even
data that fits one turn (the short turn of a lone channel skips the round
robin only while nothing waits and the transport is not paused): many
window-limited streams writing at once do not pile up in the event loop's
buffer ahead of a small answer. Seen at the transport: what it holds once
every stream has written."""

from __future__ import annotations

import asyncio

import asyncssh

from sluice import send_scheduler
from sluice.ssh_tuning import tune_asyncssh
from tests.support.ssh_pair import OpenServer, connect_local, serve_local

STREAMS = 12
# Each stream's window at the server: one turn's worth or less, so each
# stream's flush could go out whole in one turn.
WINDOW = 128 * 1024


class StalledServer(OpenServer):
    """Stops reading its connection's socket as the connection is made: the
    client's kernel buffers fill, and its transport must hold the rest."""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def auth_completed(self) -> None:
        STALLED.append(self.conn)


STALLED: list[asyncssh.SSHServerConnection] = []


async def _idle(process: asyncssh.SSHServerProcess[bytes]) -> None:
    await process.stdin.read(1)  # the client's end (EOF), once the reads resume
    process.exit(0)


async def test_streams_wait_in_their_channels_while_the_transport_is_paused() -> None:
    assert tune_asyncssh({})
    assert send_scheduler.installed()
    STALLED.clear()
    server, port = await serve_local(StalledServer, process_factory=_idle, window=WINDOW)
    try:
        async with connect_local(port) as conn:
            assert send_scheduler.start(conn)
            writers = []
            for _ in range(STREAMS):
                writer, _, _ = await conn.open_session(encoding=None)
                writers.append(writer)
            (stalled,) = STALLED
            stalled_transport = stalled._transport
            assert stalled_transport is not None
            stalled_transport.pause_reading()
            transport = conn._transport
            assert transport is not None
            for writer in writers:
                writer.write(bytes(WINDOW))
            held = transport.get_write_buffer_size()
            stalled_transport.resume_reading()
            for writer in writers:
                writer.write_eof()
            async with asyncio.timeout(20):
                for writer in writers:
                    await writer.channel.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    # At most the high-water mark and the write that crossed it; every
    # stream's window (1.5 MiB, less the kernel's share) without the pause.
    assert held <= send_scheduler.HIGH_WATER + send_scheduler.QUANTUM, held
