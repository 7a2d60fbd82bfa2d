"""A loopback HTTP server whose answers a test writes byte by byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


class RawAPI:
    """A loopback HTTP server whose answers a test writes byte by byte.

    ``answer(reader, writer, head)`` replies to one request and returns
    whether the connection stays open for the next one.
    """

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.ended = 0  # connections closed (by either side)
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                if not await self.answer(reader, writer, head):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended += 1
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def fixed_answer(answer: bytes, keep_open: bool = True) -> Answer:
    """An ``Answer`` that writes *answer* to every request, then keeps the
    connection open or (not *keep_open*) closes it."""

    async def write(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        writer.write(answer)
        await writer.drain()
        return keep_open

    return write


async def raw_api(answer: Answer) -> AsyncIterator[RawAPI]:
    api = RawAPI(answer)
    await api.start()
    try:
        yield api
    finally:
        await api.close()
