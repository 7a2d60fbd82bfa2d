"""Channel data handed to the session inline (``sluice.ssh_receive``) only
where asyncssh's ``_accept_data``/``_deliver_data`` would just count it and
pass it on: window top-ups, text channels, paused reading and extended data
still take asyncssh's own path, as the peer and the session see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import asyncssh
import pytest

from sluice.ssh_tuning import applied, tune_asyncssh
from tests.support.ssh_pair import OpenServer, connect_local, serve_local
from tests.support.waiting import wait_until


async def _send_what_is_asked(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Reads a command line: 'out N' sends N bytes of a pattern, 'text N'
    N two-byte UTF-8 characters, 'err N' N bytes to stderr; then exits."""
    line = await process.stdin.readline()
    what, count = line.split()
    n = int(count)
    if what == b"out":
        process.stdout.write((bytes(range(251)) * (n // 251 + 1))[:n])
    elif what == b"text":
        process.stdout.write("é".encode() * n)
    else:
        process.stderr.write(b"e" * n)
    process.exit(0)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    assert tune_asyncssh({})
    assert "feed_in_pieces" in applied()
    server, port = await serve_local(OpenServer, process_factory=_send_what_is_asked)
    yield port
    server.close()
    await server.wait_closed()


async def test_a_small_window_is_topped_up(port: int) -> None:
    size = 4 * 1024 * 1024
    async with connect_local(port) as conn:
        # A 64 KiB window: the server can send 4 MiB only if every top-up
        # asyncssh owes goes out.
        writer, reader, _ = await conn.open_session(
            encoding=None, window=64 * 1024, max_pktsize=16 * 1024
        )
        writer.write(b"out %d\n" % size)
        got = await asyncio.wait_for(reader.readexactly(size), timeout=30)
        assert got == (bytes(range(251)) * (size // 251 + 1))[:size]


async def test_text_split_inside_a_character_is_decoded(port: int) -> None:
    async with connect_local(port) as conn:
        # 1,001-byte packets: every packet ends inside a two-byte character.
        writer, reader, _ = await conn.open_session(encoding="utf-8", max_pktsize=1001)
        writer.write("text 50000\n")
        text = await asyncio.wait_for(reader.read(), timeout=30)
        assert isinstance(text, str)
        assert text == "é" * 50000


async def test_stderr_arrives_on_stderr(port: int) -> None:
    async with connect_local(port) as conn:
        writer, reader, errors = await conn.open_session(encoding=None)
        writer.write(b"err 300000\n")
        err = await asyncio.wait_for(errors.read(), timeout=30)
        out = await asyncio.wait_for(reader.read(), timeout=30)
        assert (len(err), out) == (300000, b"")


class _Pausing(asyncssh.SSHClientSession[bytes]):
    """Pauses reading at the first data; counts what comes while paused."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.data = bytearray()
        self.paused = False
        self.while_paused = 0
        self.first = asyncio.Event()
        self.closed = asyncio.Event()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.paused:
            self.while_paused += len(data)
        self.data += data
        if not self.first.is_set():
            assert self.chan is not None
            self.chan.pause_reading()
            self.paused = True
            self.first.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def test_no_data_while_paused_and_all_of_it_after(port: int) -> None:
    size = 200_000  # within the window: it all arrives while paused
    async with connect_local(port) as conn:
        chan, made = await conn.create_session(_Pausing, encoding=None)
        assert isinstance(made, _Pausing)
        session = made
        chan.write(b"out %d\n" % size)
        await asyncio.wait_for(session.first.wait(), timeout=30)
        # The rest arrives and waits in asyncssh's buffer: the exit status,
        # sent after all of the data on the same channel, is in.
        await wait_until(
            lambda: chan.get_exit_status() is not None, timeout=30, what="the exit status"
        )
        assert session.while_paused == 0, "data was delivered while reading was paused"
        assert len(session.data) < size
        session.paused = False
        chan.resume_reading()
        await asyncio.wait_for(session.closed.wait(), timeout=30)
        assert bytes(session.data) == (bytes(range(251)) * (size // 251 + 1))[:size]


class _Closing(asyncssh.SSHClientSession[bytes]):
    """Closes its channel at the first data; counts what comes after."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.after_close = 0
        self.closed = asyncio.Event()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        assert self.chan is not None
        if self.chan.is_closing():
            self.after_close += len(data)
        else:
            self.chan.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def test_no_data_after_the_session_closed_its_channel(port: int) -> None:
    async with connect_local(port) as conn:
        chan, made = await conn.create_session(_Closing, encoding=None)
        assert isinstance(made, _Closing)
        chan.write(b"out 2000000\n")  # more than one packet: some arrive after the close
        await asyncio.wait_for(made.closed.wait(), timeout=30)
        assert made.after_close == 0, "data was delivered after the channel was closed"


class _Failing(asyncssh.SSHClientSession[bytes]):
    """Raises at the first data it is handed (a bug in a session)."""

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        raise RuntimeError("the session's own bug")


async def test_an_error_in_a_session_ends_the_connection_through_asyncssh(port: int) -> None:
    # As asyncssh's own receive path: the connection is closed with the
    # error (asyncssh's internal_error), and the event loop's handler of
    # errors a protocol did not catch never sees it.
    loop = asyncio.get_running_loop()
    uncaught: list[dict[str, object]] = []
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: uncaught.append(context))
    try:
        async with connect_local(port) as conn:
            chan, _ = await conn.create_session(_Failing, encoding=None)
            chan.write(b"out 300000\n")
            await asyncio.wait_for(conn.wait_closed(), timeout=30)
    finally:
        loop.set_exception_handler(before)
    assert uncaught == []


def test_a_channel_class_with_its_own_dispatch_keeps_asyncssh_path() -> None:
    # A channel class that receives packets its own way (its own
    # process_packet or log_received_packet) gets every packet through it:
    # neither its data nor its window adjusts take the tuned path.
    from asyncssh.channel import SSHClientChannel
    from asyncssh.packet import SSHPacket

    from sluice import ssh_receive

    class Dispatching(SSHClientChannel[bytes]):
        def process_packet(
            self, pkttype: int, pktid: int, packet: SSHPacket
        ) -> bool | Awaitable[None]:
            return super().process_packet(pkttype, pktid, packet)

    class Logging(SSHClientChannel[bytes]):
        def log_received_packet(
            self, pkttype: int, pktid: int | None, packet: bytes | SSHPacket, note: str = ""
        ) -> None:
            super().log_received_packet(pkttype, pktid, packet, note)

    for scan in (ssh_receive._plain_channel_classes, ssh_receive._adjusting_channel_classes):
        found = scan()
        assert SSHClientChannel in found
        assert Dispatching not in found
        assert Logging not in found
