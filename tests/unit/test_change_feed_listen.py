"""The change feed's LISTEN connection gives up on a database that stops
answering after the connection is made: the feed (and a relay's start,
which starts it) go on without notifications, polling, instead of waiting
for ever."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from server.cluster.changes import ChangeFeed
from server.storage.cluster import ClusterStore
from server.storage.store import Store

pytestmark = pytest.mark.timeout(30)

_SSL_REQUEST = 80877103


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


async def _answers_only_the_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A PostgreSQL server that lets a client in, then never answers again."""
    length, code = struct.unpack("!II", await reader.readexactly(8))
    if code == _SSL_REQUEST:
        writer.write(b"N")
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        await reader.readexactly(length - 4)
    else:
        await reader.readexactly(length - 8)
    hello = _message(b"R", struct.pack("!I", 0))  # AuthenticationOk
    for name, value in (("server_version", "16.0"), ("client_encoding", "UTF8")):
        hello += _message(b"S", f"{name}\0{value}\0".encode())
    hello += _message(b"K", struct.pack("!II", 1, 2)) + _message(b"Z", b"I")
    writer.write(hello)
    while await reader.read(65536):  # held: no answer to anything
        pass
    writer.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_answers_only_the_handshake, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_a_listen_that_gets_no_answer_is_given_up(
    silent_server: int, cluster_database: str
) -> None:
    store = await Store.open(cluster_database)
    feed = ChangeFeed(
        ClusterStore(store),
        lambda _kind, _target: None,
        poll_interval=60,
        listen_dsn=f"postgresql://sluice:unused@127.0.0.1:{silent_server}/sluice",
        listen_timeout=0.5,
    )
    try:
        with capture_logs() as logs:
            async with asyncio.timeout(10):
                await feed.start()
    finally:
        await feed.close()
        await store.close()
    failed = [entry for entry in logs if entry["event"] == "change_listen_failed"]
    assert [entry["error"] for entry in failed] == ["TimeoutError"], logs
    assert feed.expect("agent", "agt_x") is None  # not listening: nothing to wait for
