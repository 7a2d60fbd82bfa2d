"""A TCP pipe in front of a server that records every byte both ways.

Each accepted connection is piped to the server unchanged; ``connections``
holds, in accept order, what the client sent (``upstream``) and what the
server sent back (``downstream``), as bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Recording:
    """One piped connection, byte for byte."""

    upstream: bytearray = field(default_factory=bytearray)
    downstream: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class BytePipe:
    """Listens on 127.0.0.1 (port 0) and pipes to *host*:*port*, recording."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.listen_port = 0
        self.connections: list[Recording] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"<BytePipe :{self.listen_port} -> {self.host}:{self.port} ({len(self.connections)})>"
        )

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        recording = Recording()
        self.connections.append(recording)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            recording.closed.set()
            return
        try:
            await asyncio.gather(
                self._copy(reader, up_writer, recording.upstream),
                self._copy(up_reader, writer, recording.downstream),
            )
        finally:
            for each in (writer, up_writer):
                each.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await each.wait_closed()
            recording.closed.set()

    @staticmethod
    async def _copy(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray
    ) -> None:
        try:
            while data := await reader.read(65536):
                record += data
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()

    def holding(self, marker: bytes) -> Recording:
        """The one connection whose client bytes contain *marker*."""
        found = [r for r in self.connections if marker in r.upstream]
        assert len(found) == 1, f"{len(found)} piped connections hold {marker!r}"
        return found[0]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def byte_pipe(host: str, port: int) -> AsyncIterator[BytePipe]:
    pipe = BytePipe(host, port)
    await pipe.start()
    try:
        yield pipe
    finally:
        await pipe.close()
