"""The lazy keepalive timer (``sluice.ssh_keepalive``, issue 22): a read only
notes its time, yet keepalives go out as asyncssh's own would: none while
packets keep coming, one the interval after the last packet once they stop.
Seen at the peer: the server's count of keepalive requests it received."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncssh
import pytest

from sluice.ssh_tuning import applied, tune_asyncssh
from tests.support.ssh_pair import OpenServer, connect_local, echo, serve_local
from tests.support.waiting import wait_until

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

INTERVAL = 0.5  # long enough that a loaded machine's stall between round trips is shorter
RECEIVED = "Received OpenSSH keepalive request"


@pytest.fixture
async def ssh(caplog: pytest.LogCaptureFixture) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A tuned client with a short keepalive interval, to a tuned echo server
    whose keepalive requests received are logged (asyncssh's debug level 2)."""
    assert tune_asyncssh({})
    assert "lazy_keepalive" in applied()
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    asyncssh.set_debug_level(2)
    server, port = await serve_local(OpenServer, process_factory=echo)
    try:
        async with connect_local(port, keepalive_interval=INTERVAL) as conn:
            yield conn
    finally:
        asyncssh.set_debug_level(1)
        server.close()
        await server.wait_closed()


def _keepalives(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for record in caplog.records if RECEIVED in record.getMessage())


async def test_no_keepalive_while_packets_come_and_one_the_interval_after_they_stop(
    ssh: asyncssh.SSHClientConnection, caplog: pytest.LogCaptureFixture
) -> None:
    writer, reader, _ = await ssh.open_session(encoding=None)
    # Back-to-back round trips for four intervals: the timer fires every
    # interval, finds packets read since, and sets itself again.
    end = time.monotonic() + 4 * INTERVAL
    rounds = 0
    while time.monotonic() < end:
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        rounds += 1
    last_read = time.monotonic()
    assert rounds > 20
    assert _keepalives(caplog) == 0, "a keepalive went out while packets kept coming"
    # Silence: the keepalive goes out the interval after the last packet read.
    await wait_until(lambda: _keepalives(caplog) > 0, timeout=10, what="a keepalive request")
    waited = time.monotonic() - last_read
    assert waited >= INTERVAL * 0.9, f"keepalive after {waited:.3f} s of silence"
    # And the connection answers as before.
    writer.write(b"pong")
    assert await reader.readexactly(4) == b"pong"
    writer.write_eof()


class _DribblePipe:
    """A loopback TCP pipe in front of the server: while ``dribble`` is set it
    passes what the server sends on in *piece*-byte reads, *gap* apart (a
    slow link, on which one packet takes many reads to arrive)."""

    def __init__(self, port: int, piece: int = 256, gap: float = 0.02) -> None:
        self.port = port
        self.piece = piece
        self.gap = gap
        self.dribble = False
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        for task in (
            asyncio.create_task(self._copy(reader, up_writer, slow=False)),
            asyncio.create_task(self._copy(up_reader, writer, slow=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, slow: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if slow and self.dribble:
                    for start in range(0, len(data), self.piece):
                        writer.write(data[start : start + self.piece])
                        await writer.drain()
                        await asyncio.sleep(self.gap)  # the link's pace, not a wait for an event
                else:
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_reads_of_one_slow_packet_keep_the_connection_alive() -> None:
    """asyncssh resets its keepalive timer on every read, whole packet or not:
    a packet arriving over a slow link in many reads for longer than the
    interval keeps the connection up (keepalive_count_max=1: the first
    missed round closes it). The tuned receive path must do the same for
    reads that only carry part of a packet."""
    assert tune_asyncssh({})
    server, port = await serve_local(OpenServer, process_factory=echo)
    pipe = _DribblePipe(port)
    await pipe.start()
    try:
        async with connect_local(
            pipe.listen_port, keepalive_interval=INTERVAL, keepalive_count_max=1
        ) as conn:
            writer, reader, _ = await conn.open_session(encoding=None)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            # One echoed packet of 24 KiB, in 96 reads 20 ms apart: some
            # 2 s, four intervals, with no whole packet read meanwhile.
            pipe.dribble = True
            body = bytes(range(256)) * 96
            began = time.monotonic()
            writer.write(body)
            try:
                echoed = await asyncio.wait_for(reader.readexactly(len(body)), timeout=30)
            except asyncio.IncompleteReadError as exc:
                raise AssertionError(
                    f"the connection closed after {time.monotonic() - began:.2f} s of"
                    f" reads of one packet (interval {INTERVAL} s)"
                ) from exc
            took = time.monotonic() - began
            assert echoed == body
            assert took > 2 * INTERVAL, f"the packet came in {took:.2f} s: not slow enough"
            pipe.dribble = False
            writer.write(b"pong")
            assert await reader.readexactly(4) == b"pong"
    finally:
        await pipe.close()
        server.close()
        await server.wait_closed()
