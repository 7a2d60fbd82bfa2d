"""A client of a local asyncssh test server: no keys, no known hosts, no
agent or config file; the cipher the tuned paths handle."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncssh

from sluice import send_coalescing, send_scheduler
from sluice.ssh_reads import ReadBuffer, read_whole_packets
from sluice.ssh_tuning import tune_asyncssh

if TYPE_CHECKING:  # asyncssh's type of what connect() returns
    from asyncssh.misc import _ACMWrapper


def connect_local(
    port: int, host: str = "127.0.0.1", cipher: str = "aes128-gcm@openssh.com", **options: Any
) -> _ACMWrapper[asyncssh.SSHClientConnection]:
    """``asyncssh.connect`` to *host*:*port* as user "u" (await it, or use it
    as an async context manager, as ``asyncssh.connect``)."""
    return asyncssh.connect(
        host,
        port,
        known_hosts=None,
        username="u",
        client_keys=None,
        agent_path=None,
        config=None,
        encryption_algs=[cipher],
        **options,
    )


async def serve_local(server_factory: Any, **options: Any) -> tuple[asyncssh.SSHAcceptor, int]:
    """A local asyncssh test server on a free loopback port, with a fresh
    host key and bytes (not text) on its channels: the server and its port."""
    server = await asyncssh.create_server(
        server_factory,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        encoding=None,
        **options,
    )
    return server, server.sockets[0].getsockname()[1]


class OpenServer(asyncssh.SSHServer):
    """A test server that asks for no authentication and accepts sessions."""

    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> bool:
        return True


async def echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """A session's process that writes back what it reads, until EOF."""
    while data := await process.stdin.read(65536):
        process.stdout.write(data)
    process.exit(0)


@contextlib.asynccontextmanager
async def tuned_pair(
    process_factory: Any,
    *,
    scheduler: bool = True,
    client: dict[str, Any] | None = None,
    **server_options: Any,
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A tuned client connection to a tuned local server running
    *process_factory*, as the agent's: send coalescing and whole-packet
    reads on (each asserted), the send scheduler too unless *scheduler* is
    False; *client* and *server_options* go to ``connect_local`` and
    ``serve_local``. The server is closed on the way out."""
    assert tune_asyncssh({})
    server, port = await serve_local(OpenServer, process_factory=process_factory, **server_options)
    try:
        async with connect_local(port, **(client or {})) as conn:
            if scheduler:
                send_scheduler.start(conn)
            assert send_coalescing.start(conn)
            assert read_whole_packets(conn, ReadBuffer())
            yield conn
    finally:
        server.close()
        await server.wait_closed()
