"""The agent's bulk reads leave as SSH packets framed in place
(``sluice.ssh_framed.send_framed``): read into a ``FrameBuffer``, encrypted
into an output buffer that is reused once the transport holds no view of it.

Seen at the socket: what asyncssh's transport is handed for a bulk transfer
comes from a few buffers, not a fresh object per packet (through
``SSHChannel.write`` each packet was copied into the channel's buffer, joined
into a plaintext and encrypted into a new object); the peer, a stock asyncssh
server, gets every byte in order, across key exchanges too.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

import asyncssh
import pytest

from sluice import ssh_reads, ssh_tuning
from sluice.gathered_write import write_parts
from sluice.ssh_framed import FrameBuffer, send_framed
from sluice.ssh_reads import ReadBuffer, read_whole_packets
from sluice.ssh_tuning import tune_asyncssh
from tests.support.ssh_pair import OpenServer, connect_local, serve_local
from tests.support.waiting import wait_until

READ = 256 * 1024
READS = 32


class _RecordingTransport:
    """Keeps (a reference to) the object behind every write of a bulk packet."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.buffers: list[object] = []

    def _record(self, data: Any) -> None:
        if len(data) >= READ:
            self.buffers.append(data.obj if isinstance(data, memoryview) else data)

    def write(self, data: bytes) -> None:
        self._record(data)
        self.inner.write(data)

    def writelines(self, data: list[bytes]) -> None:
        for piece in data:
            self._record(piece)
        write_parts(self.inner, data)  # as the outbox writes to a real transport

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class _HoldingTransport:
    """Holds views of the bulk packets it is handed, as a transport whose
    socket is full does, and sends them three at a time. *keep_object*: holds
    the very object it was handed, as Python 3.12+'s selector transport does
    (``self._buffer.append(data)`` while its buffer is not empty), not a
    view of its own (uvloop's ``memoryview(data).cast('b')``)."""

    def __init__(self, inner: _RecordingTransport, keep_object: bool = False) -> None:
        self.inner = inner
        self.keep_object = keep_object
        self.held: list[Any] = []

    def write(self, data: bytes) -> None:
        if len(data) < READ:
            self.flush()
            self.inner.write(data)
            return
        self.held.append(data if self.keep_object else memoryview(data))
        if len(self.held) == 3:
            self.flush()

    def writelines(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def flush(self) -> None:
        for view in self.held:
            self.inner.write(bytes(view))
            if not self.keep_object:
                view.release()
        self.held.clear()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _chunk(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest() * (READ // 32)


async def _send_framed(
    rekey_bytes: int = 1 << 30,
    holding: bool = False,
    in_place: bool = True,
    keep_object: bool = False,
    calls: Counter[str] | None = None,
) -> tuple[str, list[object], int, int]:
    """Send READS reads of READ bytes from a FrameBuffer to a stock asyncssh
    server, as the agent does; returns the server's digest of what it got,
    the objects behind the bulk writes, the reads framed in place and the
    bytes sent since the last key exchange. *calls*: counts the Python calls
    made inside each ``send_framed`` call (by function name)."""
    assert tune_asyncssh()
    expected = hashlib.sha256(b"".join(_chunk(i) for i in range(READS))).hexdigest()

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        data = await process.stdin.readexactly(READ * READS)
        process.stdout.write(hashlib.sha256(data).hexdigest().encode())
        process.exit(0)

    server, port = await serve_local(
        OpenServer,
        process_factory=handle,
        window=4 * READ,
        max_pktsize=READ,
        rekey_bytes=rekey_bytes,
    )
    frames = FrameBuffer(READ)
    framed = 0
    try:
        async with (
            connect_local(port, rekey_bytes=rekey_bytes) as conn,
            conn.create_process("sum", encoding=None) as proc,
        ):
            assert conn._transport is not None
            recording = _RecordingTransport(conn._transport)
            conn._transport = recording  # type: ignore[assignment]
            holder = _HoldingTransport(recording, keep_object)
            if holding:
                conn._transport = holder  # type: ignore[assignment]
            chan = proc.channel
            for i in range(READS):
                # As the agent reads: no more than the window lets go at once.
                await wait_until(lambda: (ssh_tuning.send_window(chan) or 0) >= READ, timeout=10)
                frames.data[:READ] = _chunk(i)
                if calls is not None:
                    sys.setprofile(_counting(calls))
                try:
                    sent = in_place and send_framed(chan, frames, READ)
                finally:
                    sys.setprofile(None)
                if sent:
                    framed += 1
                else:  # as the agent does: the channel copies it
                    chan.write(bytes(frames.data[:READ]))
            holder.flush()
            got = await asyncio.wait_for(proc.stdout.read(), 20)
    finally:
        server.close()
        await server.wait_closed()
    assert got.decode() == expected  # every byte, in order
    return got.decode(), recording.buffers, framed, conn._rekey_bytes_sent


def _counting(calls: Counter[str]) -> Callable[[FrameType, str, object], None]:
    """Sluice's and asyncssh's Python calls (not the test's transports')."""

    def profile(frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        if (
            event == "call"
            and code.co_name != "send_framed"
            and ("/sluice/" in code.co_filename or "/asyncssh/" in code.co_filename)
        ):
            calls[code.co_name] += 1

    return profile


# Python calls inside send_framed per packet: the checks it must make
# (_gcm_ready, send_scheduler.clear_to_send). It made 10 before branch
# issue-27a (the AESGCM object, the padding, the output buffer and its
# test, the invocation counter, the outbox's add and flush, the connection's
# _send twice, the scheduler's rate check), each on caches the 256 KiB packet
# had just gone through.
FRAMED_CALLS_PER_PACKET = 2


async def test_a_framed_packet_takes_few_python_calls() -> None:
    calls: Counter[str] = Counter()
    _, _, framed, _ = await _send_framed(calls=calls)
    assert framed == READS
    # (Besides: the padding pool's refill, and the first output buffer made.)
    assert calls.total() <= FRAMED_CALLS_PER_PACKET * READS + 2, calls


async def test_bulk_reads_leave_from_reused_buffers() -> None:
    _, buffers, framed, _ = await _send_framed()
    assert framed == READS
    assert len(buffers) >= READS
    # A few output buffers served every packet (each was a new object).
    assert len({id(b) for b in buffers}) <= 4, len({id(b) for b in buffers})


async def test_bulk_channel_writes_are_encrypted_into_reused_buffers() -> None:
    """The same through ``SSHChannel.write`` (an upload on the relay, a read
    the agent could not frame in place): each packet was a new object."""
    _, buffers, framed, _ = await _send_framed(in_place=False)
    assert framed == 0
    assert len(buffers) >= READS
    assert len({id(b) for b in buffers}) <= 4, len({id(b) for b in buffers})


@pytest.mark.parametrize("in_place", [True, False])
async def test_a_buffer_the_transport_still_holds_is_not_reused(in_place: bool) -> None:
    # (The digest checked inside: a reused buffer would have overwritten
    # packets not yet sent.)
    _, buffers, framed, _ = await _send_framed(holding=True, in_place=in_place)
    assert framed == (READS if in_place else 0)
    assert len({id(b) for b in buffers}) >= READS * 2 // 3


@pytest.mark.parametrize("in_place", [True, False])
async def test_a_transport_may_keep_the_object_it_was_handed(in_place: bool) -> None:
    """Python 3.12+'s selector transport keeps the object given to write()
    while its buffer is not empty: the packet handed over must stay usable
    (a released view failed the tunnel at the next send) and its buffer unreused."""
    _, buffers, framed, _ = await _send_framed(holding=True, in_place=in_place, keep_object=True)
    assert framed == (READS if in_place else 0)
    assert len({id(b) for b in buffers}) >= READS * 2 // 3


async def test_key_exchanges_mid_transfer() -> None:
    rekey_bytes = 1024 * 1024
    _, buffers, framed, since_rekey = await _send_framed(rekey_bytes)
    assert since_rekey < rekey_bytes  # keys were exchanged on the way
    # Packets while keys are exchanged go through asyncssh (each its own
    # object); framing resumes after each exchange.
    assert framed >= READS // 4, framed
    assert len({id(b) for b in buffers}) <= 4 + READS - framed


class _ViewSession(asyncssh.SSHServerSession[bytes]):
    """Takes its data as views (as the relay's streams do), digests it, and
    records the object behind each bulk view; *hold*: keeps views of three
    packets at a time before digesting them (a reader behind)."""

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.held: list[memoryview] = []
        self.digest = hashlib.sha256()
        self.buffers: list[object] = []
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        ssh_tuning.deliver_views(chan)

    def shell_requested(self) -> bool:
        return True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if isinstance(data, memoryview) and len(data) >= READ:
            self.buffers.append(data.obj)
        if not self.hold:
            self.digest.update(data)
            return
        self.held.append(memoryview(data))
        if len(self.held) == 3:
            self._digest_held()

    def _digest_held(self) -> None:
        for view in self.held:
            self.digest.update(view)
            view.release()
        self.held.clear()

    def eof_received(self) -> bool:
        self._digest_held()
        assert self.chan is not None
        self.chan.write(self.digest.hexdigest().encode())
        self.chan.exit(0)
        return False


async def _receive_views(hold: bool) -> tuple[str, list[object]]:
    """Send READS packets of READ bytes to a server whose session takes views;
    returns its digest of what it got and the objects behind the bulk views."""
    assert tune_asyncssh()
    sessions: list[_ViewSession] = []

    class _Views(OpenServer):
        def session_requested(self) -> _ViewSession:  # type: ignore[override]
            sessions.append(_ViewSession(hold))
            return sessions[-1]

    server, port = await serve_local(_Views, line_editor=False, window=4 * READ, max_pktsize=READ)
    try:
        async with (
            connect_local(port) as conn,
            conn.create_process(encoding=None) as proc,
        ):
            for i in range(READS):
                proc.stdin.write(_chunk(i))
                await proc.stdin.drain()
            proc.stdin.write_eof()
            got = await asyncio.wait_for(proc.stdout.read(), 20)
    finally:
        server.close()
        await server.wait_closed()
    return got.decode(), sessions[0].buffers


async def test_bulk_packets_read_are_decrypted_into_reused_buffers() -> None:
    expected = hashlib.sha256(b"".join(_chunk(i) for i in range(READS))).hexdigest()
    got, buffers = await _receive_views(hold=False)
    assert got == expected
    assert len(buffers) >= READS * 3 // 4
    # A few plaintext buffers served every packet (each was a new object).
    assert len({id(b) for b in buffers}) <= 4, len({id(b) for b in buffers})


async def test_a_plaintext_a_session_still_holds_is_not_reused() -> None:
    expected = hashlib.sha256(b"".join(_chunk(i) for i in range(READS))).hexdigest()
    got, buffers = await _receive_views(hold=True)
    assert got == expected  # a reused buffer would have overwritten held data
    assert len({id(b) for b in buffers}) >= 3


async def test_whole_packets_are_decrypted_from_the_shared_read_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection reading through ``sluice.ssh_reads`` decrypts the whole
    packets of a read from the shared buffer: what one read costs in new
    memory is the start of a packet the next read completes, not a copy of
    the read (traced by tracemalloc around each read)."""
    assert tune_asyncssh()
    reads = ReadBuffer(8 * 1024 * 1024)
    costs: list[tuple[int, int]] = []  # (bytes read, new memory at the peak)
    original = ssh_reads._WholePackets.buffer_updated

    def traced(self: ssh_reads._WholePackets, nbytes: int) -> None:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        original(self, nbytes)
        costs.append((nbytes, tracemalloc.get_traced_memory()[1] - before))

    monkeypatch.setattr(ssh_reads._WholePackets, "buffer_updated", traced)
    sessions: list[_ViewSession] = []

    class _Views(OpenServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            assert read_whole_packets(conn, reads)

        def session_requested(self) -> _ViewSession:  # type: ignore[override]
            sessions.append(_ViewSession(hold=False))
            return sessions[-1]

    server, port = await serve_local(_Views, line_editor=False, window=64 * READ, max_pktsize=READ)
    blob = b"".join(_chunk(i) for i in range(READS))
    tracemalloc.start()
    try:
        async with (
            connect_local(port) as conn,
            conn.create_process(encoding=None) as proc,
        ):
            proc.stdin.write(blob)  # 32 packets at once: the reads are large
            proc.stdin.write_eof()
            got = await asyncio.wait_for(proc.stdout.read(), 20)
    finally:
        tracemalloc.stop()
        server.close()
        await server.wait_closed()
    assert got.decode() == hashlib.sha256(blob).hexdigest()
    large = [(n, cost) for n, cost in costs if n >= 4 * READ]
    assert large, sorted(costs)[-5:]  # (reads of several packets)
    # A copy of each read cost at least the read; now at most a packet or two.
    assert all(cost < 3 * READ for _, cost in large), large
