"""``sluice.send_coalescing`` on a real asyncssh connection: what it holds,
when it lets go, and that nothing of asyncssh's own waits behind it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncssh
import pytest
from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import String

from sluice import send_coalescing
from sluice.gathered_write import write_parts
from sluice.ssh_tuning import tune_asyncssh
from tests.support.ssh_pair import OpenServer, connect_local, echo


class _Recording:
    """The connection's transport, recording each write call's bytes."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.calls: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.calls.append(bytes(data))
        self.inner.write(data)

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(b"".join(data))
        write_parts(self.inner, data)  # as the outbox writes to a real transport

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
async def ssh() -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A client connection to an echo server, both tuned, the client's writes coalesced."""
    assert tune_asyncssh({})
    assert send_coalescing.installed()
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        OpenServer, "127.0.0.1", 0, server_host_keys=[key], process_factory=echo, encoding=None
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with connect_local(port) as conn:
            assert send_coalescing.start(conn)
            yield conn
    finally:
        server.close()
        await server.wait_closed()


async def test_a_turns_channel_writes_leave_in_one_write_as_the_turn_ends(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    procs = [await ssh.create_process("echo", encoding=None) for _ in range(8)]
    assert ssh._transport is not None
    wire = _Recording(ssh._transport)
    ssh._transport = wire  # type: ignore[assignment]
    for i, proc in enumerate(procs):
        proc.stdin.write(b"request %d" % i)
    assert wire.calls == []  # held until the turn ends
    await asyncio.sleep(0)  # (the turn ends: the loop runs what is ready)
    assert len(wire.calls) == 1
    for i, proc in enumerate(procs):
        assert await asyncio.wait_for(proc.stdout.read(100), 5) == b"request %d" % i
        proc.stdin.write_eof()


async def test_a_packet_of_asyncssh_own_does_not_wait_and_keeps_its_place(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    proc = await ssh.create_process("echo", encoding=None)
    assert ssh._transport is not None
    wire = _Recording(ssh._transport)
    ssh._transport = wire  # type: ignore[assignment]
    proc.stdin.write(b"before")
    assert wire.calls == []
    # Any packet asyncssh sends outside a channel flush (an IGNORE here, as a
    # window adjust, an open reply or a key exchange would be) goes now, after
    # the data the turn produced before it.
    ssh.send_packet(MSG_IGNORE, String(b"ping"))
    assert len(wire.calls) == 2
    proc.stdin.write(b" after")
    await asyncio.sleep(0)
    assert len(wire.calls) == 3
    assert await asyncio.wait_for(proc.stdout.readexactly(12), 5) == b"before after"


async def test_a_bulk_packet_is_written_at_once(ssh: asyncssh.SSHClientConnection) -> None:
    proc = await ssh.create_process("echo", encoding=None)
    assert ssh._transport is not None
    wire = _Recording(ssh._transport)
    ssh._transport = wire  # type: ignore[assignment]
    blob = bytes(range(256)) * 1024  # 256 KiB: over the outbox's limit
    proc.stdin.write(b"small")
    proc.stdin.write(blob)
    assert len(wire.calls) == 1  # the small write and the bulk, together, now
    assert len(wire.calls[0]) > len(blob)
    assert await asyncio.wait_for(proc.stdout.readexactly(5 + len(blob)), 10) == b"small" + blob


async def test_what_is_held_when_the_connection_aborts_is_dropped(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    proc = await ssh.create_process("echo", encoding=None)
    assert ssh._transport is not None
    wire = _Recording(ssh._transport)
    ssh._transport = wire  # type: ignore[assignment]
    proc.stdin.write(b"never sent")
    wire.inner.abort()  # as asyncssh's own abort: buffered data is lost
    await asyncio.sleep(0)
    assert wire.calls == []
    await asyncio.wait_for(ssh.wait_closed(), 5)


class _Recorder(asyncssh.SSHServer):
    """A server that records what a session sent it and how its connection ended."""

    received = bytearray()
    ended: asyncio.Future[BaseException | None]

    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> bool:
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if not _Recorder.ended.done():
            _Recorder.ended.set_result(exc)


async def _sink(process: asyncssh.SSHServerProcess[bytes]) -> None:
    while data := await process.stdin.read(65536):
        _Recorder.received.extend(data)


class _ClosesWhenFull(asyncssh.SSHClientSession[bytes]):
    """Closes its connection from the flush that fills the channel's window."""

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def pause_writing(self) -> None:
        self.chan.get_connection().close()


async def test_a_connection_closed_inside_a_flush_still_sends_that_flush_and_its_disconnect() -> (
    None
):
    # A session callback inside a channel flush (here: the channel's buffer is
    # over its high-water mark) closes the connection: asyncssh queues the
    # abort (call_soon) and its disconnect packet lands in the flush's batch
    # behind the data. Held for the turn's end, the batch came after the
    # abort and was dropped: the peer lost the data and saw a reset.
    assert tune_asyncssh({})
    _Recorder.received = bytearray()
    _Recorder.ended = asyncio.get_running_loop().create_future()
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _Recorder,
        "127.0.0.1",
        0,
        server_host_keys=[key],
        process_factory=_sink,
        encoding=None,
        window=1000,  # the client may send this much, then its buffer fills
    )
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await connect_local(port)
        assert send_coalescing.start(conn)
        chan, _ = await conn.create_session(_ClosesWhenFull, "sink", encoding=None)
        chan.set_write_buffer_limits(high=100, low=0)
        chan.write(b"x" * 5000)
        exc = await asyncio.wait_for(_Recorder.ended, 5)
        await asyncio.wait_for(conn.wait_closed(), 5)
    finally:
        server.close()
        await server.wait_closed()
    assert exc is None, f"the server saw {exc!r}, not the client's disconnect"
    assert bytes(_Recorder.received) == b"x" * 1000


class _PingPong(asyncssh.SSHClientSession[bytes]):
    """Answers each piece the echo server returns, from data_received (as the
    relay and agent answer from their read callbacks), until *rounds* are done."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.got = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.got.extend(data)
        while len(self.got) >= 8:
            piece, self.got = bytes(self.got[:8]), self.got[8:]
            n = int(piece)
            if n + 1 < self.rounds:
                self.chan.write(b"%08d" % (n + 1))
            elif not self.done.done():
                self.done.set_result(n + 1)


async def test_keys_exchanged_while_channel_packets_are_held_keep_every_byte_in_order() -> None:
    # A rekey every 4 KiB each way, channel answers written from the read
    # callback (the outbox holds them while asyncssh sends window adjusts from
    # the same callback): about half the key exchanges start in a flush while
    # the outbox holds packets (the KEXINIT goes behind them), and data
    # produced during an exchange waits in asyncssh until NEWKEYS. A packet
    # sealed under old keys sent after NEWKEYS, or any packet overtaking one
    # sealed before it (asyncssh's own written before what is held: checked
    # once, the test fails), breaks the peer's MAC check and the pieces stop
    # coming back.
    assert tune_asyncssh({})
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        OpenServer,
        "127.0.0.1",
        0,
        server_host_keys=[key],
        process_factory=echo,
        encoding=None,
        rekey_bytes=4096,
    )
    port = server.sockets[0].getsockname()[1]
    rounds = 300
    try:
        async with connect_local(port, rekey_bytes=4096) as conn:
            assert send_coalescing.start(conn)
            exchanges = [0]
            original = conn._send_kexinit

            def counting() -> None:
                exchanges[0] += 1
                original()

            conn._send_kexinit = counting  # type: ignore[method-assign]
            sessions: list[_PingPong] = []
            for _ in range(4):
                chan, session = await conn.create_session(
                    lambda: _PingPong(rounds), "echo", encoding=None, window=256
                )
                assert isinstance(session, _PingPong)
                sessions.append(session)
                chan.write(b"%08d" % 0)
            finished = await asyncio.wait_for(
                asyncio.gather(*(session.done for session in sessions)), 20
            )
    finally:
        server.close()
        await server.wait_closed()
    assert finished == [rounds] * 4
    assert exchanges[0] >= 5  # (4 x 300 pieces each way, 4 KiB between exchanges)
