"""Answer heads written as bytes through aiohttp's server (the handed-on route).

aiohttp writes header values as UTF-8 text: it would turn obs-text such as
``caf\\xe9`` into ``caf\\xc3\\xa9``, or drop it, and it adds a Server and a
Content-Type of its own. ``PassThroughResponse`` writes the API's fields as
bytes instead, which needs two private attributes of aiohttp's
``StreamWriter`` and its ``StreamResponse._write_headers`` hook.

That is reaching into a library, so: it was written for aiohttp 3.14 (the
version pyproject.toml allows); ``raw_heads_supported`` checks at start that
aiohttp still has that shape; ``SLUICE_RAW_HEADS=off`` turns it off; and
without it the stock response is used (every field kept, obs-text re-encoded
by aiohttp). tests/integration/test_transparency.py checks the bytes against
httpbin, an independent server.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Final

import structlog
from aiohttp import web
from aiohttp.http_writer import StreamWriter

from server.proxy.headers import Fields, get

log = structlog.get_logger("sluice.relay.proxy")

SWITCH: Final = "SLUICE_RAW_HEADS"


def raw_heads_supported(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether answer heads go out as bytes: on unless *environ* turns it
    off, and only while aiohttp has the shape this module was written for."""
    if environ.get(SWITCH, "on").strip().lower() in ("off", "0", "false", "no"):
        return False
    stored = StreamWriter.__init__.__code__.co_names
    shape = (
        inspect.iscoroutinefunction(getattr(web.StreamResponse, "_write_headers", None))
        and callable(getattr(StreamWriter, "send_headers", None))
        and "_headers_buf" in stored
        and "_headers_written" in stored
    )
    if not shape:
        log.warning(
            "raw_heads_unavailable",
            reason="aiohttp's StreamWriter is not the shape this relay was written for",
            effect="answers on the handed-on route use aiohttp's own head writer",
        )
    return shape


class PassThroughResponse(web.StreamResponse):
    """An aiohttp answer whose head is the API's fields as bytes: the status
    line, the *fields* exactly, and only the framing aiohttp chose
    (Content-Length, Transfer-Encoding, Connection) plus Date when the API
    sent none."""

    _FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})

    def __init__(self, status: int, reason: str | None, fields: Fields) -> None:
        super().__init__(status=status, reason=reason)
        self._fields = fields

    async def _write_headers(self) -> None:
        request = self._req
        writer = self._payload_writer
        assert request is not None
        assert isinstance(writer, StreamWriter)
        reason = (self.reason or "").encode("latin-1", "replace")
        parts = [b"HTTP/%d.%d %d %s\r\n" % (*request.version, self.status, reason)]
        parts += [b"%s: %s\r\n" % field for field in self._fields]
        has_date = get(self._fields, b"date") is not None
        for name, value in self.headers.items():
            lowered = name.lower()
            if lowered in self._FRAMING or (lowered == "date" and not has_date):
                parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        parts.append(b"\r\n")
        # What StreamWriter.write_headers does with the head it serialises
        # (aiohttp's own serialiser cannot write bytes as they are).
        writer._headers_buf = b"".join(parts)
        writer._headers_written = False
        writer.send_headers()


def answer_response(
    status: int, reason: str | None, fields: Fields, *, raw: bool
) -> web.StreamResponse:
    """The response object for an API's answer: bytes as they are when *raw*,
    else aiohttp's stock response carrying the same fields."""
    if raw:
        return PassThroughResponse(status, reason, fields)
    response = web.StreamResponse(status=status, reason=reason)
    for name, value in fields:
        text = name.decode("latin-1")
        if text.lower() not in PassThroughResponse._FRAMING:
            response.headers.add(text, value.decode("latin-1"))
    return response
