"""An ``Http1Stream`` on one end of a real socket pair, the API's end as
asyncio streams: the stream's own code over a real socket, without a relay."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from server.tunnel.http1 import Http1Stream


@contextlib.asynccontextmanager
async def api_end(
    stream: Http1Stream,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Connect *stream* to a socket pair and yield the other end (the API's);
    both closed on the way out."""
    ours, theirs = socket.socketpair()
    await asyncio.get_running_loop().create_connection(lambda: stream, sock=ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    try:
        yield reader, writer
    finally:
        stream.close()
        writer.close()
