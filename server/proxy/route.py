"""``/v1/connections/{id}/proxy/{path}``: any method, bodies streamed both ways."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog
from aiohttp import HttpVersion11, web
from aiohttp.http_writer import StreamWriter

from server.errors import BodyTooLarge, RelayError, TunnelLost
from server.proxy.engine import Handle
from server.proxy.headers import Fields, LocationRewrite, answer_fields, get
from server.proxy.urls import base_origin_and_path
from server.tunnel.http1 import Answer, Body
from server.web.services import Services, services_of

log = structlog.get_logger("sluice.relay.proxy")

SMALL_BODY = 64 * 1024

# Set on every proxied answer so callers can tell the API's own answers
# (this header present) from the relay's problem+json errors.
VIA_HEADER = "Sluice-Connection"
_VIA = VIA_HEADER.encode()


def _relative(request: web.Request) -> str:
    """The raw (still percent-encoded) path and query after .../proxy."""
    conn_id = request.match_info["id"]
    prefix = f"/v1/connections/{conn_id}/proxy"
    raw = request.raw_path
    tail = raw[len(prefix) :] if raw.startswith(prefix) else "/" + request.match_info["tail"]
    return tail  # "" too: the base URI as written


def _cause(exc: BaseException) -> RelayError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RelayError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _limited_body(request: web.Request, limit: int) -> Any:
    """The request body, refused or cut off past *limit* bytes (0: no limit)."""
    if not request.body_exists:
        return None
    if not limit:
        return request.content
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the body is {request.content_length} bytes; max_body_bytes is {limit}")

    async def counted() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.content.iter_any():
            seen += len(chunk)
            if seen > limit:
                raise BodyTooLarge(f"the body passed max_body_bytes ({limit})")
            yield chunk

    return counted()


async def send_upstream(
    services: Services,
    conn_id: str,
    method: str,
    relative: str,
    headers: Fields,
    body: Body,
) -> tuple[Handle, Answer]:
    """Send one proxied request; errors are the relay's own (no URL quoted)."""
    handle = await services.connections.handle(conn_id)
    try:
        upstream = await services.engine.request(handle, method, relative, headers, body)
    except aiohttp.ClientError as exc:
        cause = _cause(exc)
        if cause is not None:
            raise cause from None
        # aiohttp's text may quote the URL, which can carry a URL-parameter token.
        raise TunnelLost(f"the request failed on its way: {handle.mask(str(exc))}") from None
    return handle, upstream


def is_small(upstream: Answer, method: str) -> bool:
    """A small answer of known length goes out in one write, head and body together."""
    return (
        upstream.content_length is not None
        and upstream.content_length <= SMALL_BODY
        and method != "HEAD"
    )


@functools.lru_cache(maxsize=1024)
def _rewrite(base_uri: str, conn_id: str) -> LocationRewrite:
    origin, path = base_origin_and_path(base_uri)
    return LocationRewrite(
        origin.encode(), path.encode(), f"/v1/connections/{conn_id}/proxy".encode()
    )


def answer_headers(upstream: Answer, handle: Handle, conn_id: str) -> Fields:
    """The API's answer fields the caller gets (``server.proxy.headers.answer_fields``;
    the writer adds the framing), the connection named."""
    kept = answer_fields(upstream.raw_headers, _rewrite(handle.conn.http.base_uri, conn_id))
    kept.append((_VIA, conn_id.encode()))
    return kept


async def read_small(handle: Handle, upstream: Answer) -> bytes:
    """The whole body of a small answer, released after."""
    try:
        return await upstream.read()
    except aiohttp.ClientError as exc:
        cause = _cause(exc)
        cut = TunnelLost(f"the answer was cut off: {handle.mask(str(exc))}")
        raise (cause or cut) from None
    finally:
        upstream.release()


class PassThroughResponse(web.StreamResponse):
    """An aiohttp answer whose head is the API's fields as bytes.

    aiohttp writes header values as UTF-8 text (it would turn obs-text such
    as ``caf\xe9`` into ``caf\xc3\xa9``, or drop it) and adds Server and
    Content-Type of its own. Here the head is the status line, the *fields*
    exactly, and only the framing aiohttp chose (Content-Length,
    Transfer-Encoding, Connection) plus Date when the API sent none.
    """

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
        # What StreamWriter.write_headers does with the head it serialises.
        writer._headers_buf = b"".join(parts)
        writer._headers_written = False
        writer.send_headers()


async def proxy(request: web.Request) -> web.StreamResponse:
    """The route as aiohttp serves it: requests ``server.proxy.front`` hands on
    (HEAD, chunked or 100-continue bodies, HTTP/1.0, ...)."""
    services = services_of(request)
    conn_id = request.match_info["id"]
    began = time.perf_counter()
    body = _limited_body(request, services.max_body_bytes)
    handle, upstream = await send_upstream(
        services,
        conn_id,
        request.method,
        _relative(request),
        list(request.raw_headers),
        body,
    )
    mode = handle.conn.mode
    services.metrics.proxied(mode, upstream.status, time.perf_counter() - began)
    response = PassThroughResponse(
        upstream.status, upstream.reason, answer_headers(upstream, handle, conn_id)
    )
    chunked = b"chunked" in (get(upstream.raw_headers, b"transfer-encoding") or b"").lower()
    if upstream.content_length is not None and not chunked:
        response.content_length = upstream.content_length
    elif request.version >= HttpVersion11 and upstream.status not in (204, 304):
        response.enable_chunked_encoding()
    sent = 0
    if is_small(upstream, request.method):
        # Read whole before the head goes out: an answer cut short is a 502.
        data = await read_small(handle, upstream)
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data)
        await response.write_eof()
        canonical_line(conn_id, mode, request.method, upstream.status, len(data), began)
        return response
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await _write_within(response, chunk, services.stalled_reader_timeout)
            sent += len(chunk)
        await response.write_eof()
    except (aiohttp.ClientError, ConnectionError, RelayError) as exc:
        # Headers are gone already: all we can do is cut the caller's
        # connection so it sees a truncated body, never a clean end.
        stream_broken(handle, conn_id, sent, exc)
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        upstream.release()
    canonical_line(conn_id, mode, request.method, upstream.status, sent, began)
    return response


async def _write_within(response: web.StreamResponse, chunk: bytes, timeout: float) -> None:
    """Write one piece of a streamed answer; a caller that takes none of it
    for *timeout* seconds is cut (it would hold its stream through the agent
    forever). ``server.proxy.front`` applies the same bound."""
    if timeout <= 0:
        await response.write(chunk)
        return
    try:
        async with asyncio.timeout(timeout):
            await response.write(chunk)
    except TimeoutError:
        raise ConnectionResetError("the caller stopped reading") from None


def stream_broken(handle: Handle, conn_id: str, sent: int, exc: BaseException) -> None:
    log.warning("proxy_stream_broken", connection=conn_id, bytes=sent, error=handle.mask(str(exc)))


def canonical_line(
    conn_id: str, mode: str, method: str, status: int, sent: int, began: float
) -> None:
    """One log line per proxied request."""
    log.info(
        "proxied",
        connection=conn_id,
        mode=mode,
        method=method,
        status=status,
        bytes_down=sent,
        ms=round((time.perf_counter() - began) * 1000, 1),
    )
