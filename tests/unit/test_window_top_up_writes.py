"""Window top-ups join the loop turn's other packets (``sluice.send_coalescing``,
issue 26h): on a real tuned asyncssh pair, a client that only receives a
bulk stream sends nothing but top-ups; those made in one loop turn (one
read holding several packets, each due a top-up) leave in one write to the
socket, not one write each as before. (A stream's own top-ups come one a
read: its sender sends half a window at a time.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest

from tests.support.ssh_pair import tuned_pair

BULK = 4 * 1024 * 1024
STREAMS = 2
# The client's window and packets: a top-up is due every half window.
WINDOW = 128 * 1024
PACKET = 16 * 1024
# An SSH_MSG_CHANNEL_WINDOW_ADJUST under AES-GCM: length, 16 bytes of padded
# payload, tag.
TOP_UP_BYTES = 4 + 16 + 16


async def source(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """A session's process that writes BULK bytes and exits."""
    process.stdout.write(bytes(BULK))
    await process.stdout.drain()
    process.exit(0)


class Writes:
    """The writes a transport is asked for, and their bytes."""

    def __init__(self, transport: Any) -> None:
        self.calls = 0
        self.size = 0
        write, writelines = transport.write, transport.writelines

        def counted_write(data: bytes) -> None:
            self.calls += 1
            self.size += len(data)
            write(data)

        def counted_writelines(parts: list[bytes]) -> None:
            self.calls += 1
            self.size += sum(len(part) for part in parts)
            writelines(parts)

        transport.write, transport.writelines = counted_write, counted_writelines


@pytest.fixture
async def ssh() -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A tuned client connection (coalescing on) to a tuned server."""
    async with tuned_pair(source, scheduler=False) as conn:
        yield conn


async def test_top_ups_of_one_turn_leave_in_one_write(ssh: asyncssh.SSHClientConnection) -> None:
    """Two streams at once: the server's flushes of both arrive together, and
    the client's read of them makes a top-up for each in one turn."""
    transport: Any = ssh._transport
    writes = Writes(transport)
    async with asyncio.timeout(30):
        readers = []
        for _ in range(STREAMS):
            _, reader, _ = await ssh.open_session(encoding=None, window=WINDOW, max_pktsize=PACKET)
            readers.append(reader)
        before = (writes.calls, writes.size)  # the sessions' opens
        got = await asyncio.gather(*(reader.readexactly(BULK) for reader in readers))
    assert got == [bytes(BULK)] * STREAMS
    calls, size = writes.calls - before[0], writes.size - before[1]
    top_ups, rest = divmod(size, TOP_UP_BYTES)
    # About one per half window received.
    assert rest == 0, f"{size} bytes written: not top-ups alone"
    assert top_ups >= STREAMS * BULK // WINDOW, (calls, size)
    # One write each before (calls == top_ups).
    assert calls * 3 <= top_ups * 2, f"{calls} writes for {top_ups} top-ups"
