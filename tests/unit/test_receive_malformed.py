"""The tuned receive path (``sluice.ssh_receive``) refuses what asyncssh's own
parser refuses: a packet with no padding at all (RFC 4253 asks for at
least 4 bytes; asyncssh reads its payload as ``packet[1:-padlen]``, which is
empty for 0, and ends the connection), whether a window adjust or channel
data. A peer's malformed packet must not pass where stock asyncssh would end
the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncssh
import pytest
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST

from sluice.ssh_tuning import applied, tune_asyncssh
from tests.support.ssh_pair import OpenServer, connect_local, echo, serve_local


@pytest.fixture
async def port() -> AsyncIterator[int]:
    assert tune_asyncssh({})
    assert "feed_in_pieces" in applied()
    server, port = await serve_local(OpenServer, process_factory=echo)
    yield port
    server.close()
    await server.wait_closed()


def _send_unpadded(conn: asyncssh.SSHClientConnection, payload: bytes, padlen: int = 0) -> None:
    """Send *payload* as one packet with *padlen* bytes of padding (0 by
    default), encrypted with the connection's keys in sequence (what a
    broken peer would send)."""
    packet = bytes([padlen]) + payload + bytes(padlen)
    seq = conn._send_seq
    encryption = conn._send_encryption
    assert encryption is not None
    data, tag = encryption.encrypt_packet(seq, len(packet).to_bytes(4, "big"), packet)
    conn._send(data + tag)
    conn._send_seq = (seq + 1) & 0xFFFFFFFF


async def _echo_or_close(
    conn: asyncssh.SSHClientConnection,
    writer: asyncssh.SSHWriter[bytes],
    reader: asyncssh.SSHReader[bytes],
) -> str:
    """After the malformed packet: 'closed' if the server ended the
    connection (as stock asyncssh does), 'echoed' if it went on."""
    writer.write(b"ping")
    echoed = asyncio.ensure_future(reader.readexactly(4))
    closed = asyncio.ensure_future(conn.wait_closed())
    try:
        done, _ = await asyncio.wait({echoed, closed}, timeout=20, return_when="FIRST_COMPLETED")
    finally:
        echoed.cancel()
        closed.cancel()
    if closed in done:
        return "closed"
    return "echoed" if echoed in done and not echoed.exception() else "neither"


@pytest.mark.parametrize("kind", ["window_adjust", "data"])
async def test_a_packet_without_padding_ends_the_connection(port: int, kind: str) -> None:
    async with connect_local(port) as conn:
        writer, reader, _ = await conn.open_session(encoding=None)
        writer.write(b"warm")
        assert await asyncio.wait_for(reader.readexactly(4), timeout=10) == b"warm"
        send_chan = writer.channel._send_chan
        assert send_chan is not None
        chan = send_chan.to_bytes(4, "big")
        if kind == "window_adjust":
            _send_unpadded(
                conn, bytes([MSG_CHANNEL_WINDOW_ADJUST]) + chan + (1024).to_bytes(4, "big")
            )
        else:
            body = b"odd!"
            _send_unpadded(
                conn, bytes([MSG_CHANNEL_DATA]) + chan + len(body).to_bytes(4, "big") + body
            )
        assert await _echo_or_close(conn, writer, reader) == "closed"


class _Told(asyncssh.SSHClient):
    """Keeps why the connection ended."""

    def __init__(self) -> None:
        self.lost: list[Exception | None] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


# A window adjust stock asyncssh refuses, and the reason its disconnect gives.
_REFUSED = {
    "unknown_channel": "Invalid channel number 4660 received",
    "extra_byte": "Unexpected data at end of packet",
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
async def test_a_bad_window_adjust_gets_asyncssh_own_protocol_error(port: int, case: str) -> None:
    told = _Told()
    async with connect_local(port, client_factory=lambda: told) as conn:
        writer, reader, _ = await conn.open_session(encoding=None)
        writer.write(b"warm")
        assert await asyncio.wait_for(reader.readexactly(4), timeout=10) == b"warm"
        send_chan = writer.channel._send_chan
        assert send_chan is not None
        chan = (0x1234 if case == "unknown_channel" else send_chan).to_bytes(4, "big")
        payload = bytes([MSG_CHANNEL_WINDOW_ADJUST]) + chan + (1024).to_bytes(4, "big")
        if case == "extra_byte":
            payload += b"!"
        _send_unpadded(conn, payload, padlen=6)
        assert await _echo_or_close(conn, writer, reader) == "closed"
    assert len(told.lost) == 1
    lost = told.lost[0]
    assert isinstance(lost, asyncssh.ProtocolError)
    assert lost.reason == _REFUSED[case]
