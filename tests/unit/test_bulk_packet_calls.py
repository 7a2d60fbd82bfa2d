"""What the tuned SSH path runs per bulk packet (issue 22, branch issue-27a).

On a loopback bulk transfer the relay's and the agent's CPU per MiB goes
with the work per 256 KiB packet, each Python call on caches the packet
has just gone through. Here, on a real asyncssh pair tuned as the relay
and the agent run it, each way of a bulk echo:

- a window top-up is framed by the tuned path (``ssh_send.send_window_adjust``):
  not through asyncssh's ``send_packet`` (some 20 Python calls: payload and
  packet builders, the IGNORE packet the tuned path drops, the cipher's
  wrapper, the packet log's formatting) nor ``os.urandom`` (a ``getrandom``
  system call for its padding);
- a writer the channel paused is resumed (and paused) by the tuned flush,
  without asyncssh's flush, ``_pause_resume_writing``, its logger and its
  debug call, while the writer still sees the backpressure;
- a bulk packet's plaintext is gathered into a buffer reused for each, not
  joined into a fresh 256 KiB object (relay CPU per MiB of an upload 1.13 ->
  0.99 ms in 10 interleaved rounds).

The echo gets every byte back, beyond the windows: the top-ups were valid.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator
from types import FrameType

import asyncssh
import pytest

from tests.support.ssh_pair import echo, tuned_pair

# Several times the default window (2 MiB) each way.
BULK = 8 * 1024 * 1024
PIECE = 256 * 1024
PACKET = 256 * 1024


@pytest.fixture
async def ssh() -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A tuned client connection to a tuned echo server (256 KiB packets), as the agent's."""
    async with tuned_pair(echo, max_pktsize=PACKET) as conn:
        yield conn


async def _echo(ssh: asyncssh.SSHClientConnection, calls: Counter[str]) -> None:
    """BULK bytes through the echo, written in PIECEs with drain (the stream
    writer waits while the channel has paused it), counted into *calls*:
    ``file:function`` of each Python call, ``C name`` of each C call."""

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            code = frame.f_code
            calls[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"] += 1
        elif event == "c_call":
            name = getattr(arg, "__name__", arg)
            calls[f"C {name}"] += 1
            calls[f"C {name} in {frame.f_code.co_name}"] += 1

    writer, reader, _ = await ssh.open_session(encoding=None, max_pktsize=PACKET)
    data = bytes(range(256)) * (BULK // 256)
    got = bytearray()

    async def read_all() -> None:
        while len(got) < BULK:
            got.extend(await reader.read(BULK))

    async with asyncio.timeout(30):
        writer.write(b"warm")
        assert await reader.readexactly(4) == b"warm"
        sys.setprofile(profile)
        try:
            reading = asyncio.ensure_future(read_all())
            for at in range(0, BULK, PIECE):
                writer.write(data[at : at + PIECE])
                await writer.drain()
            await reading
        finally:
            sys.setprofile(None)
        writer.write_eof()
    assert got == data  # every byte back, beyond the windows: the top-ups were valid


async def test_window_top_ups_skip_asyncssh_send_packet_and_getrandom(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    calls: Counter[str] = Counter()
    await _echo(ssh, calls)
    # (The padding pool's refill, one urandom per 64 KiB of padding, may fall in.)
    refills = calls["ssh_padding.py:refill"]
    assert calls["C urandom"] <= refills
    # asyncssh's per-packet send path, for a top-up (the only packets of
    # the transfer besides its data, which the tuned flush frames).
    assert calls["connection.py:send_packet"] == 0, calls["connection.py:send_packet"]
    assert calls["packet.py:log_sent_packet"] == 0
    assert calls["packet.py:UInt32"] == 0
    # The top-ups went (the echo got its bytes back): through the tuned path.
    assert calls["ssh_send.py:send_window_adjust"] >= 2 * (BULK // (2 * 1024 * 1024))


async def test_a_paused_writer_resumes_without_asyncssh_flush(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    calls: Counter[str] = Counter()
    await _echo(ssh, calls)
    # The writer saw the backpressure: the channel paused and resumed it.
    assert calls["stream.py:pause_writing"] >= 1
    assert calls["stream.py:resume_writing"] >= 1
    # Without asyncssh's flush (36 calls in this echo before; a pause for a
    # turn of the send scheduler still goes through _pause_resume_writing).
    assert calls["channel.py:_flush_send_buf"] == 0


async def test_bulk_plaintexts_are_gathered_into_a_reused_buffer(
    ssh: asyncssh.SSHClientConnection,
) -> None:
    calls: Counter[str] = Counter()
    await _echo(ssh, calls)
    bulk = calls["C encrypt_into in _send_data_fast"]
    assert bulk >= BULK // PACKET  # the client's packets at least
    # A join only for the small packets (a window's edge), which are
    # encrypted into a new object (``encrypt``); every bulk packet was joined.
    assert calls["C join in _send_data_fast"] <= calls["C encrypt in _send_data_fast"], calls
