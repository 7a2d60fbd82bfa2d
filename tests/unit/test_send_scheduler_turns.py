"""``sluice.send_scheduler``: a channel alone with data (an upload through the
relay, a download the agent could not frame in place) sends, per turn, what
the kernel's low-water mark takes at once, in one write; a packet per write
cost the relay 3 more system calls per MiB of an upload (11.3 against 8.4 with
the scheduler off). Counted at the socket: the write calls asyncssh's
transport gets for a bulk transfer on one channel, once the connection's rate
(and so its mark) is known.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh
import pytest

from sluice import send_scheduler
from sluice.gathered_write import write_parts
from sluice.ssh_tuning import tune_asyncssh
from tests.support.ssh_pair import OpenServer, connect_local, serve_local

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

MiB = 1024 * 1024
PACKET = 256 * 1024


async def _count(process: asyncssh.SSHServerProcess[bytes]) -> None:
    got = 0
    while data := await process.stdin.read(MiB):
        got += len(data)
    process.stdout.write(b"%d" % got)
    process.exit(0)


class _CountingTransport:
    """Counts the bulk writes asyncssh makes to its socket (and passes them on)."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.calls = 0

    def write(self, data: bytes) -> None:
        self.calls += len(data) > 1024
        self.inner.write(data)

    def writelines(self, data: list[Any]) -> None:
        self.calls += sum(len(piece) for piece in data) > 1024
        write_parts(self.inner, data)  # as the outbox writes to a real transport

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_channel_alone_sends_more_than_a_packet_per_write() -> None:
    assert tune_asyncssh({})
    assert send_scheduler.installed()
    server, port = await serve_local(
        OpenServer, process_factory=_count, window=8 * MiB, max_pktsize=PACKET
    )
    piece = bytes(range(256)) * (MiB // 256)
    try:
        async with connect_local(port) as conn:
            assert send_scheduler.start(conn)
            async with conn.create_process("count", encoding=None) as proc:
                assert conn._transport is not None
                counting = _CountingTransport(conn._transport)
                conn._transport = counting  # type: ignore[assignment]
                sent = 0
                # Until the connection's rate has set its mark above a packet
                # (loopback: 1 MiB, the most), then 32 MiB more.
                sched = conn.__dict__["_sluice_scheduler"]
                for _ in range(512):
                    if sched.lowat > PACKET:
                        break
                    proc.stdin.write(piece)
                    await proc.stdin.drain()
                    sent += len(piece)
                assert sched.lowat > PACKET, sched.lowat
                before = counting.calls
                for _ in range(32):
                    proc.stdin.write(piece)
                    await proc.stdin.drain()
                    sent += len(piece)
                writes = counting.calls - before
                proc.stdin.write_eof()
                got = await asyncio.wait_for(proc.stdout.read(), 20)
    finally:
        server.close()
        await server.wait_closed()
    assert int(got) == sent
    # A packet a write: 4 a MiB.
    assert writes / 32 < 3, writes
