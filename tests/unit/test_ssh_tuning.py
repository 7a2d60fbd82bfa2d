"""asyncssh tweaks: no IGNORE packets under AEAD ciphers, one write per channel flush."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sluice import ssh_receive, ssh_send, ssh_tuning
from sluice.gathered_write import write_parts
from sluice.ssh_tuning import skip_aead_ignore_packets, tune_asyncssh
from tests.support.ssh_pair import connect_local
from tests.support.waiting import wait_until


class _Counting(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> bool:
        return True


async def _packets_sent(cipher: str, tmp_path: Path) -> int:
    """Run 20 small echo round trips; return how many packets the client sent."""
    skip_aead_ignore_packets()
    key = asyncssh.generate_private_key("ssh-ed25519")

    async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
        async for line in process.stdin:
            process.stdout.write(line)
        process.exit(0)

    server = await asyncssh.create_server(
        _Counting,
        "127.0.0.1",
        0,
        server_host_keys=[key],
        process_factory=handle,
        encryption_algs=[cipher],
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            connect_local(port, cipher=cipher) as conn,
            conn.create_process("echo") as proc,
        ):
            before = conn._send_seq
            for i in range(20):
                proc.stdin.write(f"{i}\n")
                assert (await asyncio.wait_for(proc.stdout.readline(), 5)) == f"{i}\n"
            sent = conn._send_seq - before
            proc.stdin.write_eof()
    finally:
        server.close()
        await server.wait_closed()
    return int(sent)


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
async def test_one_packet_per_write_under_aead(cipher: str, tmp_path: Path) -> None:
    assert await _packets_sent(cipher, tmp_path) == 20


async def test_ignore_packets_kept_under_ctr(tmp_path: Path) -> None:
    assert await _packets_sent("aes128-ctr", tmp_path) == 40  # an IGNORE before each


def _count_short_path_packets(monkeypatch: pytest.MonkeyPatch, side: type[Any]) -> list[int]:
    """Count the packets connections of type *side* take on the short receive path."""
    taken = [0]
    original_take = ssh_receive._take_data_packets

    def counting_take(conn: Any, data: bytes | memoryview) -> bytes | memoryview:
        before = conn._recv_seq
        rest = original_take(conn, data)
        if isinstance(conn, side):
            taken[0] += (conn._recv_seq - before) & 0xFFFFFFFF
        return rest

    monkeypatch.setattr(ssh_receive, "_take_data_packets", counting_take)
    return taken


class _CountingTransport:
    """Counts the writes asyncssh makes to its socket (and passes them on)."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.calls = 0
        self.chunks = 0

    def write(self, data: bytes) -> None:
        self.calls += 1
        self.chunks += 1
        self.inner.write(data)

    def writelines(self, data: list[bytes]) -> None:
        self.calls += 1
        self.chunks += len(data)
        write_parts(self.inner, data)  # as the outbox writes to a real transport

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    ("cipher", "rekey_bytes"),
    [
        ("aes128-gcm@openssh.com", 1 << 30),
        ("aes128-gcm@openssh.com", 100_000),  # key exchanges mid-stream, both ways
        ("chacha20-poly1305@openssh.com", 1 << 30),
    ],
)
async def test_a_channel_flush_is_one_write_and_bytes_survive(
    cipher: str, rekey_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    tune_asyncssh()
    taken = _count_short_path_packets(monkeypatch, object)  # both ends
    key = asyncssh.generate_private_key("ssh-ed25519")
    blob = bytes(range(256)) * 4096  # 1 MiB

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        data = await process.stdin.readexactly(len(blob))
        process.stdout.write(data)
        process.exit(0)

    server = await asyncssh.create_server(
        _Counting,
        "127.0.0.1",
        0,
        server_host_keys=[key],
        process_factory=handle,
        encryption_algs=[cipher],
        encoding=None,
        window=4 * 1024 * 1024,
        rekey_bytes=rekey_bytes,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            connect_local(port, cipher=cipher, rekey_bytes=rekey_bytes) as conn,
            conn.create_process("echo", encoding=None) as proc,
        ):
            if "gcm" in cipher:
                assert ssh_send._gcm_ready(conn) is not None  # the short framing path
            assert conn._transport is not None
            counting = _CountingTransport(conn._transport)
            conn._transport = counting  # type: ignore[assignment]
            proc.stdin.write(blob)  # 32 packets of 32 KiB, the window allows all
            echoed = await asyncio.wait_for(proc.stdout.readexactly(len(blob)), 20)
            counted_since_rekey = conn._rekey_bytes_sent
    finally:
        server.close()
        await server.wait_closed()
    assert echoed == blob
    assert counting.chunks >= 32
    if "gcm" in cipher:
        # The packets were read on the short path (those around a key exchange
        # go through asyncssh's own parser).
        assert taken[0] >= (32 if rekey_bytes > len(blob) else 1)
    if rekey_bytes < len(blob):
        assert counted_since_rekey < rekey_bytes  # keys were exchanged on the way
    else:
        assert counting.calls <= 4  # the data went out in (nearly) one write, not 32


class _HeldTransport:
    """Holds asyncssh's socket writes until ``release``, then sends them in one write."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.held.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def release(self) -> None:
        self.inner.write(b"".join(self.held))
        self.held.clear()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_large_packets_after_another_packet_in_one_read_take_the_short_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """256 KiB packets span reads, and here they follow a channel request in
    the same write: each is still decrypted straight from the reads."""
    tune_asyncssh()
    taken = _count_short_path_packets(monkeypatch, asyncssh.SSHServerConnection)
    key = asyncssh.generate_private_key("ssh-ed25519")
    packet = 256 * 1024
    blob = bytes(range(251)) * (3 * packet // 251 + 1)  # four packets, the last short

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        data = b""
        while len(data) < len(blob):
            try:
                data += await process.stdin.read(len(blob) - len(data))
            except asyncssh.SignalReceived:
                continue  # delivered in order, between the bytes before and after it
        process.stdout.write(b"same" if data == blob else b"differs")
        process.exit(0)

    server = await asyncssh.create_server(
        _Counting,
        "127.0.0.1",
        0,
        server_host_keys=[key],
        process_factory=handle,
        encryption_algs=["aes128-gcm@openssh.com"],
        encoding=None,
        window=4 * 1024 * 1024,
        max_pktsize=packet,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            connect_local(port) as conn,
            conn.create_process("check", encoding=None) as proc,
        ):
            assert conn._transport is not None
            held = _HeldTransport(conn._transport)
            conn._transport = held  # type: ignore[assignment]
            proc.send_signal("USR1")  # a channel request, not channel data
            proc.stdin.write(blob)
            assert len(held.held) >= 2
            held.release()
            conn._transport = held.inner
            verdict = await asyncio.wait_for(proc.stdout.read(), 20)
    finally:
        server.close()
        await server.wait_closed()
    assert verdict == b"same"
    assert taken[0] == 4  # every data packet, none left to asyncssh's parser


class _Recorder(asyncssh.SSHTCPSession[bytes]):
    """A forwarded channel's far end: what its data arrived as."""

    def __init__(self, views: bool) -> None:
        self.views = views
        self.pieces: list[bytes] = []
        self.ended = asyncio.Event()

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        if self.views:
            ssh_tuning.deliver_views(chan)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.pieces.append(data)

    def eof_received(self) -> bool:
        self.ended.set()
        return False


class _Forwarding(asyncssh.SSHServer):
    def __init__(self, sessions: list[_Recorder]) -> None:
        self.sessions = sessions

    def begin_auth(self, username: str) -> bool:
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> _Recorder:
        session = _Recorder(views=dest_host == "views")
        self.sessions.append(session)
        return session


async def test_a_channel_that_asks_for_views_gets_little_data_as_bytes() -> None:
    """Data of at most ``_COPIED_MOST`` bytes in a packet comes as bytes of
    its own even where the channel takes views: a view of it costs more to
    make and to work with than the copy (issue 27b)."""
    tune_asyncssh()
    key = asyncssh.generate_private_key("ssh-ed25519")
    sessions: list[_Recorder] = []
    small = [bytes([i]) * (100 + i) for i in range(20)] + [b"y" * ssh_receive._COPIED_MOST]
    server = await asyncssh.create_server(
        lambda: _Forwarding(sessions),
        "127.0.0.1",
        0,
        server_host_keys=[key],
        encryption_algs=["aes128-gcm@openssh.com"],
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with connect_local(port) as conn:
            chan, _ = await conn.create_connection(asyncssh.SSHTCPSession, "views", 80)
            for piece in small:
                chan.write(piece)  # a packet each (each write is flushed at once)
            chan.write_eof()
            await wait_until(lambda: len(sessions) == 1, timeout=20, what="the channel")
            async with asyncio.timeout(20):
                await sessions[0].ended.wait()
    finally:
        server.close()
        await server.wait_closed()
    pieces = sessions[0].pieces
    assert b"".join(pieces) == b"".join(small)
    assert pieces
    assert all(type(p) is bytes for p in pieces), [type(p).__name__ for p in pieces]


async def test_a_channel_that_asks_for_views_gets_them_and_others_get_bytes() -> None:
    tune_asyncssh()
    key = asyncssh.generate_private_key("ssh-ed25519")
    sessions: list[_Recorder] = []
    blob = bytes(range(256)) * 2048  # 512 KiB: several packets, one spanning reads
    server = await asyncssh.create_server(
        lambda: _Forwarding(sessions),
        "127.0.0.1",
        0,
        server_host_keys=[key],
        encryption_algs=["aes128-gcm@openssh.com"],
        window=4 * 1024 * 1024,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with connect_local(port) as conn:
            for host in ("views", "bytes"):
                chan, _ = await conn.create_connection(asyncssh.SSHTCPSession, host, 80)
                chan.write(blob)
                chan.write_eof()
            await wait_until(lambda: len(sessions) == 2, timeout=20, what="both channels")
            async with asyncio.timeout(20):
                await asyncio.gather(*(s.ended.wait() for s in sessions))
    finally:
        server.close()
        await server.wait_closed()
    views, plain = sessions
    for session in sessions:
        assert b"".join(session.pieces) == blob
    assert views.pieces
    assert all(isinstance(p, memoryview) for p in views.pieces)
    assert plain.pieces
    assert all(type(p) is bytes for p in plain.pieces)
