"""HTTP/1.1 messages as bytes: read them off a socket, take them apart.

For tests that compare what crossed a wire exactly: a ``Message`` keeps the
start line, the fields (ordered byte pairs, repeats kept) and the body with
its framing taken off, so two messages can be compared field by field.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httptools


@dataclass
class Message:
    start: bytes
    fields: list[tuple[bytes, bytes]]
    body: bytes
    interim: list[bytes] = field(default_factory=list)  # 1xx heads before an answer

    def get(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.fields if n.lower() == name), None)

    @property
    def framing(self) -> str:
        """ "chunked", "length" or "none" (a body that ends with the connection)."""
        if b"chunked" in (self.get(b"transfer-encoding") or b"").lower():
            return "chunked"
        return "length" if self.get(b"content-length") is not None else "none"

    @property
    def status(self) -> int:
        return int(self.start.split(b" ", 2)[1])


class _Collect:
    def __init__(self, stop_after_head: bool) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head_done = False
        self.done = False
        self.stop_after_head = stop_after_head

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def _split_interim(raw: bytes) -> tuple[list[bytes], bytes]:
    interim = []
    while raw[9:10] == b"1" and b"\r\n\r\n" in raw:
        end = raw.index(b"\r\n\r\n") + 4
        interim.append(raw[:end])
        raw = raw[end:]
    return interim, raw


def parse_request(raw: bytes) -> Message:
    """The first request in *raw*."""
    collect = _Collect(False)
    parser = httptools.HttpRequestParser(collect)
    with contextlib.suppress(httptools.HttpParserUpgrade):
        parser.feed_data(raw)
    return Message(raw[: raw.index(b"\r\n")], collect.fields, bytes(collect.body))


def parse_answer(raw: bytes, *, head: bool = False) -> Message:
    """The final answer in *raw* (1xx heads before it kept in ``interim``);
    *head*: the request was HEAD, so the answer has no body."""
    interim, rest = _split_interim(raw)
    collect = _Collect(head)
    parser = httptools.HttpResponseParser(collect)
    if head:
        rest = rest[: rest.index(b"\r\n\r\n") + 4]
    try:
        parser.feed_data(rest)
        if not collect.done and not head:
            parser.feed_data(b"")  # a body that ends with the connection
    except httptools.HttpParserError:
        pass
    return Message(rest[: rest.index(b"\r\n")], collect.fields, bytes(collect.body), interim)


def _complete(raw: bytes, head: bool) -> bool:
    """Whether *raw* holds a whole final answer."""
    _interim, rest = _split_interim(raw)
    if b"\r\n\r\n" not in rest or rest[9:10] == b"1":
        return False
    if head:
        return True
    collect = _Collect(False)
    try:
        httptools.HttpResponseParser(collect).feed_data(rest)
    except httptools.HttpParserError:
        return True
    return collect.done


async def exchange(port: int, request: bytes, *, head: bool = False, timeout: float = 20) -> bytes:
    """Send *request* on a new connection to 127.0.0.1:*port*; the answer's bytes
    (1xx heads included) once it is whole or the connection ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = bytearray()
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            while not _complete(bytes(raw), head):
                data = await reader.read(262144)
                if not data:
                    break
                raw += data
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return bytes(raw)
