"""The lazy keepalive timer (``sluice.ssh_keepalive``, issue 22): a read only
notes its time, yet keepalives go out as asyncssh's own would: none while
packets keep coming, one the interval after the last packet once they stop.
Seen at the peer: the server's count of keepalive requests it received."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import asyncssh
import pytest

from sluice.ssh_tuning import applied, tune_asyncssh
from tests.support.ssh_pair import connect_local, serve_local
from tests.support.waiting import wait_until

INTERVAL = 0.5  # long enough that a loaded machine's stall between round trips is shorter
RECEIVED = "Received OpenSSH keepalive request"


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> bool:
        return True


async def _echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
    while data := await process.stdin.read(65536):
        process.stdout.write(data)
    process.exit(0)


@pytest.fixture
async def ssh(caplog: pytest.LogCaptureFixture) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A tuned client with a short keepalive interval, to a tuned echo server
    whose keepalive requests received are logged (asyncssh's debug level 2)."""
    assert tune_asyncssh({})
    assert "lazy_keepalive" in applied()
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    asyncssh.set_debug_level(2)
    server, port = await serve_local(_Server, process_factory=_echo)
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
