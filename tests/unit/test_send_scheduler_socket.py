"""``sluice.send_scheduler`` reads the tunnel socket's rate (TCP_INFO) as
channel data is sent: on the event loops Sluice runs (uvloop, asyncio) and on
a socket that has just closed, that read never breaks a channel write."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh
import pytest

from sluice import send_scheduler
from sluice.ssh_tuning import tune_asyncssh
from tests.support.loops import loop_runners
from tests.support.ssh_pair import OpenServer, connect_local


async def _sink(process: asyncssh.SSHServerProcess[bytes]) -> None:
    while await process.stdin.read(65536):
        pass


async def _write_after_the_socket_closed(host: str) -> str:
    """Write to a channel in the turn its connection's socket closed (before
    asyncssh has noticed); what the write raised, if anything."""
    assert tune_asyncssh({})
    assert send_scheduler.installed()
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        OpenServer, host, 0, server_host_keys=[key], process_factory=_sink, encoding=None
    )
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await connect_local(port, host=host)
        assert send_scheduler.start(conn)
        proc = await conn.create_process("sink", encoding=None)
        assert conn._transport is not None
        conn._transport.abort()  # the socket is gone (a reset, a dead link)
        writes = 0
        try:
            # Each loop turn until asyncssh closes the channel, a write (the
            # first is the connection's first data: its rate is taken, on a
            # socket that closed a turn ago).
            while writes < 100:
                await asyncio.sleep(0)
                if proc.stdin.channel.is_closing():
                    break
                proc.stdin.write(b"x" * 1000)
                writes += 1
        except Exception as exc:  # (which one is the point)
            return repr(exc)
        finally:
            await asyncio.wait_for(conn.wait_closed(), 5)
        return "ok" if writes else "no write before the channel closed"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("run", loop_runners())
def test_a_write_as_the_socket_closes_does_not_fail_on_the_rate(
    run: Callable[[Coroutine[Any, Any, str]], str], host: str
) -> None:
    # uvloop's socket object raises ValueError ("negative file descriptor"),
    # not OSError, once its transport has closed: the write raised it.
    assert run(_write_after_the_socket_closed(host)) == "ok"
