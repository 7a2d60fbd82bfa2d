"""A raw HTTP/1.1 server for abuse tests: records every byte it is sent.

tests.support.api is an aiohttp app, so a malformed request never reaches
its handlers and cannot be counted. This server reads the bytes itself: it
counts accepted TCP connections, keeps everything each connection sent, the
TLS server name (SNI) each handshake asked for, and every request it could
parse. Tests then check on the far side that an injected header, a smuggled
request or an unwanted connection never arrived.

Every request is answered ``200`` with a small JSON body
``{"ok": true, "method", "path"}`` (path without its query); ``/status/NNN``
answers ``NNN``.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
_STATUS_PATH = re.compile(r"^/status/([1-5][0-9]{2})$")


@dataclass
class RawRequest:
    """One request as it arrived: the head's bytes, parsed fields, the body."""

    head: bytes
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Recorder:
    """Handle to a running recorder; all lists grow as traffic arrives."""

    host: str
    port: int
    scheme: str
    accepts: int = 0
    raw: list[bytearray] = field(default_factory=list)
    requests: list[RawRequest] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    malformed: int = 0

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def all_bytes(self) -> bytes:
        return b"".join(bytes(chunk) for chunk in self.raw)


class _Malformed(Exception):
    pass


def _parse_head(head: bytes) -> RawRequest:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise _Malformed from exc
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Malformed
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _Malformed
        headers.append((name, value.strip(" \t")))
    return RawRequest(head=head, method=parts[0], target=parts[1], headers=headers)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, if any, end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(body) > MAX_BODY:
            raise _Malformed


def _answer(request: RawRequest) -> bytes:
    match = _STATUS_PATH.match(request.target.split("?", 1)[0])
    status = int(match.group(1)) if match else 200
    # The query is left out: it may carry a credential (auth location 'url').
    path = request.target.split("?", 1)[0]
    payload = json.dumps({"ok": True, "method": request.method, "path": path}).encode()
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    return head if request.method == "HEAD" else head + payload


class _Tap(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that also keeps every byte for the recorder."""

    def __init__(self, reader: asyncio.StreamReader, sink: bytearray, cb: object) -> None:
        super().__init__(reader, cb)  # type: ignore[arg-type]
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport_ref = transport
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._sink += data
        super().data_received(data)

    def close(self) -> None:
        transport = getattr(self, "_transport_ref", None)
        if transport is not None and not transport.is_closing():
            transport.close()


async def serve_recorder(
    host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Recorder]:
    """Run a recorder on host:0 until the generator is closed (use from a fixture).

    With *ssl_context*, its ``sni_callback`` is wrapped so the name each
    handshake asked for lands in ``Recorder.sni``.
    """
    recorder = Recorder(host=host, port=0, scheme="https" if ssl_context else "http")
    if ssl_context is not None:
        inner = ssl_context.sni_callback

        def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            recorder.sni.append(name)
            if inner is not None:
                inner(sock, name, ctx)  # type: ignore[arg-type]

        ssl_context.sni_callback = record_sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                try:
                    request = _parse_head(head)
                    if any(v.lower() == "100-continue" for v in request.header("Expect")):
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    length = request.header("Content-Length")
                    if request.header("Transfer-Encoding"):
                        request.body = await _read_chunked(reader)
                    elif length:
                        if int(length[0]) > MAX_BODY:
                            raise _Malformed
                        request.body = await reader.readexactly(int(length[0]))
                except (
                    _Malformed,
                    ValueError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                ):
                    recorder.malformed += 1
                    writer.write(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n"
                    )
                    return
                recorder.requests.append(request)
                writer.write(_answer(request))
                await writer.drain()
                if any(v.lower() == "close" for v in request.header("Connection")):
                    return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            writer.close()

    loop = asyncio.get_running_loop()
    taps: list[_Tap] = []

    def factory() -> _Tap:
        recorder.accepts += 1
        sink = bytearray()
        recorder.raw.append(sink)
        reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
        tap = _Tap(reader, sink, handle)
        taps.append(tap)
        return tap

    server = await loop.create_server(factory, host, 0, ssl=ssl_context)
    recorder.port = server.sockets[0].getsockname()[1]
    try:
        yield recorder
    finally:
        server.close()
        # Pooled keep-alive connections from the relay would keep
        # wait_closed() waiting; end them.
        for tap in taps:
            tap.close()
        await server.wait_closed()
