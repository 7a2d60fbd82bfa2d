"""The relay's HTTP listener: proxy requests served straight off the socket.

Through aiohttp's server, a small proxied request cost the relay about as
much CPU again as the tunnel exchange itself (request and response objects,
routing, middlewares, header serialisation). The front reads each request
head itself. A proxy request it can serve exactly (HTTP/1.1; GET, POST, PUT,
PATCH, DELETE or OPTIONS; no body or a Content-Length body; no Expect,
Upgrade or Transfer-Encoding) it serves: the same auth check, engine, error
documents, metrics and log line as the aiohttp route. At the first request
it cannot serve, it hands the connection, that request's bytes still unread,
to aiohttp's protocol, which keeps it from then on. So the API, the console,
HEAD, chunked and 100-continue bodies, and every limit and error aiohttp
applies, stay exactly as they are.

A request the front serves goes first to ``server.proxy.fast_path``: the
common case is sent and answered by callbacks, without a Task; the rest runs
as one Task per request through ``server.proxy.exchange``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools
import structlog
from aiohttp import web

from server.cluster.forward import HOP_HEADER, SLOT
from server.errors import BodyTooLarge, RelayError
from server.proxy.engine import Handle
from server.proxy.exchange import AnswerSink, deliver, exchange
from server.proxy.fast_path import try_fast
from server.proxy.headers import Fields, get
from server.tunnel.http1 import Http1Response
from server.web.api import (
    SERVER_FIELD,
    bearer_actor,
    bearer_is_current,
    error_problem,
    unauthorized,
)
from server.web.services import Services
from sluice.addresses import LISTEN_BACKLOG

log = structlog.get_logger("sluice.relay.front")

_REQUEST_LINE = re.compile(
    rb"(GET|POST|PUT|PATCH|DELETE|OPTIONS) "
    rb"/v1/connections/([A-Za-z0-9_-]{1,64})/proxy((?:[/?][\x21-\x7e]*)?) HTTP/1\.1\r\n"
)
# Headers whose presence sends the request to aiohttp (framings and
# semantics the front does not implement).
_HANDED_ON = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
# Headers that may appear once (as aiohttp's parser enforces): a repeated one
# could be read differently by something in front of the relay and the API.
_SINGLETONS = frozenset(
    {
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    }
)
# A body that has arrived whole, up to this size, is passed as bytes.
_WHOLE_BODY = 64 * 1024
# Request body queued for the API beyond this pauses reading from the caller.
_BODY_HIGH_WATER = 1024 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})  # and 1xx: no body, no Content-Length
# The path logged with an internal error (never the tail: it may carry a token).
_PATH_LABEL = "/v1/connections/{id}/proxy"
# How long a refused body may keep arriving before its connection closes.
_LINGER_SECONDS = 2.0
_HOP_LOWER = HOP_HEADER.lower().encode()


class FrontSite(web.TCPSite):
    """aiohttp's TCP site with the front as the protocol for new callers."""

    def __init__(
        self, runner: web.AppRunner, front: Front, host: str, port: int, *, reuse_port: bool = False
    ) -> None:
        super().__init__(runner, host, port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)
        self._front = front

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._front.handoff_to = server
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrontProtocol(self._front),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


class Front:
    """What every caller of the front shares: services, limits, the open caller sockets."""

    def __init__(
        self,
        services: Services,
        *,
        max_header_bytes: int,
        max_headers: int,
        idle_timeout: float,
        max_head_bytes: int = 64 * 1024,
    ) -> None:
        self.services = services
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_head_bytes = max_head_bytes
        self.idle_timeout = idle_timeout
        self.handoff_to: web.Server | None = None
        self.callers: set[FrontProtocol] = set()
        self.closing = False
        self._date = (0, "")

    def __repr__(self) -> str:
        return f"<Front callers={len(self.callers)} closing={self.closing}>"

    def date(self) -> str:
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    async def shutdown(self, timeout: float) -> None:
        """Close idle callers now; give running requests *timeout* to finish."""
        self.closing = True
        for caller in list(self.callers):
            caller.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for caller in list(self.callers):
            remaining = deadline - loop.time()
            if caller.busy and remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(caller.finished.wait(), remaining)
        # Answered callers may still be flushing their last bytes.
        for caller in list(self.callers):
            remaining = deadline - loop.time()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(caller.gone.wait(), remaining)
        tasks = [task for caller in list(self.callers) if (task := caller.abort())]
        await asyncio.gather(*tasks, return_exceptions=True)


class _Head:
    """httptools callbacks for one request head."""

    def __init__(self) -> None:
        self.headers: Fields = []
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpRequestParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))  # as received: server.proxy.headers

    def on_headers_complete(self) -> None:
        self.complete = True
        # Asked now: llhttp forgets it once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()


class _Request:
    """A proxy request's head as parse_head read it. Never changed once made:
    the caller's connection reuses it when the same head comes again."""

    __slots__ = (
        "authorization",
        "conn_id",
        "declared",
        "headers",
        "keep_alive",
        "length",
        "method",
        "relative",
    )

    def __init__(
        self,
        method: str,
        conn_id: str,
        relative: str,
        headers: Fields,
        declared: int | None,
        keep_alive: bool,
        authorization: bytes | None,
    ) -> None:
        self.method = method
        self.conn_id = conn_id
        self.relative = relative
        self.headers = headers
        self.declared = declared  # the Content-Length field, None without one
        self.length = declared or 0
        self.keep_alive = keep_alive
        self.authorization = authorization  # the first Authorization field


def parse_head(head: bytes, max_line: int, max_headers: int) -> _Request | None:
    """The proxy request in *head* (ending in an empty line), or None when the
    front should not serve it: aiohttp then answers it, errors included."""
    match = _REQUEST_LINE.match(head)
    if match is None or (len(head) > max_line and max(map(len, head.split(b"\r\n"))) > max_line):
        return None
    parsed = _Head()
    try:
        parsed.parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None  # aiohttp answers it (an Upgrade: 501, server.proxy.engine)
    if not parsed.complete or len(parsed.headers) > max_headers:
        return None
    length: int | None = None
    authorization: bytes | None = None
    singletons: set[bytes] = set()
    for name, value in parsed.headers:
        lowered = name.lower()
        if lowered in _HANDED_ON:
            return None
        if lowered in _SINGLETONS:
            if lowered in singletons:
                return None  # aiohttp refuses a repeated one; so must the relay
            singletons.add(lowered)
        if lowered == b"content-length":
            if not value.isdigit():
                return None
            length = int(value)
        elif lowered == b"authorization" and authorization is None:
            authorization = value
    relative = match.group(3).decode("ascii")  # "" too: the base URI as written
    return _Request(
        match.group(1).decode("ascii"),
        match.group(2).decode("ascii"),
        relative,
        parsed.headers,
        length,
        parsed.keep_alive,
        authorization,
    )


class _BodyFeed:
    """A request body of known length, from the caller's socket to the engine."""

    def __init__(self, caller: FrontProtocol, length: int) -> None:
        self._caller = caller
        self.remaining = length
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def feed(self, data: bytes) -> bytes:
        """Take this body's part of *data*; return what follows it."""
        take = data[: self.remaining]
        self.remaining -= len(take)
        if take:
            self._chunks.append(take)
            self._queued += len(take)
            if self._queued > _BODY_HIGH_WATER:
                self._caller.pause_reading()
            self._wake()
        return data[len(take) :]

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                # Joined, not passed on read by read: the copy costs less than
                # what it saves downstream, where one write of the queued reads
                # is one channel flush, its packets one socket write; read by
                # read, each read was a flush and a write of its own (issue
                # 26f's A/B: relay CPU per MiB of an upload equal or higher).
                chunk = b"".join(self._chunks)
                self._chunks.clear()
                self._queued = 0
                self._caller.resume_reading()
                yield chunk
                continue
            if self.remaining == 0:
                return
            if self._error is not None:
                raise ConnectionResetError("the caller went away during the body")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None


class _SocketSink:
    """An answer written straight to the caller's socket."""

    def __init__(self, caller: FrontProtocol, request: _Request) -> None:
        self._caller = caller
        self._request = request
        self._chunked = False
        self._no_body = False
        self.piped = 0  # bytes of the body sent by ``pipe``, so far
        self.started = False
        self.broken = False

    async def whole(self, status: int, reason: str | None, headers: Fields, body: bytes) -> None:
        self.started = True
        head = self._caller.head(status, reason, headers, self._request, length=len(body))
        self._caller.write(head + body)

    async def begin(
        self,
        status: int,
        reason: str | None,
        headers: Fields,
        length: int | None,
    ) -> None:
        self.started = True
        self._no_body = status in _NO_BODY_STATUSES or status < 200
        self._chunked = length is None and not self._no_body
        self._caller.write(
            self._caller.head(
                status, reason, headers, self._request, length=length, chunked=self._chunked
            )
        )

    async def write(self, chunk: bytes) -> None:
        if self._no_body:
            return
        self._caller.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        await self._caller.drain()

    async def pipe(self, upstream: object) -> int | None:
        """Stream *upstream*'s body to the caller, piece by piece as the
        tunnel delivers it (``Http1Response.piped``), waiting only while the
        caller's socket is full; the bytes sent. None, having sent nothing,
        for a body this does not pipe (chunked, none, not an Http1Response)."""
        if self._chunked or self._no_body or not isinstance(upstream, Http1Response):
            return None
        caller = self._caller
        sent = 0
        try:
            while True:
                data = upstream.take()
                if data:
                    caller.write(data)
                    sent += len(data)
                if upstream.ended:
                    return sent + upstream.piped_bytes
                await caller.drain()
                caller.piping = upstream
                try:
                    await upstream.piped(caller.pipe_write)
                finally:
                    caller.piping = None
        finally:
            self.piped = sent + upstream.piped_bytes

    async def end(self) -> None:
        if self._chunked:
            self._caller.write(b"0\r\n\r\n")

    def cut(self) -> None:
        self.broken = True


class FrontProtocol(asyncio.Protocol):
    """One caller connection: requests served in order, one at a time."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self._finished: asyncio.Event | None = None  # made when shutdown waits for it
        self.gone = asyncio.Event()
        self._buffer = bytearray()
        self._body: _BodyFeed | None = None
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._peer_done = False
        self._idle: asyncio.TimerHandle | None = None
        self._idle_deadline: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._lingering = False
        self._close_announced = False
        self._scanned = 0  # how far the buffer is known to hold no end of head
        # The last head served and what parse_head made of it: a caller that
        # sends the same head again (a poller, a load test) is not parsed again.
        self._last_head = b""
        self._last_request: _Request | None = None
        # The Authorization field this caller sent that held the current admin
        # token, and the token's epoch then (``admits``).
        self._admitted: tuple[bytes, object] | None = None
        # The last answer head made from a list of fields shared by repeated
        # answers (server.proxy.exchange.answer_headers): (fields, status,
        # reason, length, the head up to its Connection field).
        self._head_memo: tuple[Fields, int, str | None, int | None, bytes] | None = None
        # The request being served, and its body (for the fast path's callbacks).
        self._request: _Request | None = None
        self._request_body: bytes | None = None
        # The answer whose body goes to this caller straight from its
        # stream (``_SocketSink.pipe``): stopped when the socket fills.
        self.piping: Http1Response | None = None

    # -- asyncio callbacks -------------------------------------------------------
    @property
    def finished(self) -> asyncio.Event:
        """Set while no request is being served (made on first use: only a
        shutdown waits for it, and setting it costs a call per request)."""
        if self._finished is None:
            self._finished = asyncio.Event()
            if not self.busy or self.gone.is_set():
                self._finished.set()
        return self._finished

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.front.callers.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body nobody reads
        if self._body is not None and self._body.remaining:
            data = self._body.feed(data)
            if not data:
                return
        self._buffer += data
        if not self.busy:
            self._next_request()
        elif len(self._buffer) > _BODY_HIGH_WATER:
            self.pause_reading()  # pipelined requests wait their turn

    def eof_received(self) -> bool:
        self._peer_done = True
        if self._lingering:
            return False
        if self._body is not None and self._body.remaining:
            self._body.fail(ConnectionResetError())
        return self.busy  # keep the write side open for the answer underway

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.callers.discard(self)
        self._stop_idle_timer()
        if self._body is not None:
            self._body.fail(ConnectionResetError())
        self.resume_writing()  # a writer waiting for room finds the transport closed
        if self.piping is not None:
            self.piping.unpipe()
        if self._finished is not None:
            self._finished.set()
        self.gone.set()

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()
        if self.piping is not None:
            self.piping.unpipe()  # the rest waits in the answer, then its stream

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- flow control --------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        """Wait for room in the caller's socket; a caller that takes nothing for
        idle_timeout is cut (it would hold a stream through its agent forever)."""
        writable = self._writable
        if writable is not None and not writable.done():
            try:
                await asyncio.wait_for(writable, self.front.idle_timeout or None)
            except TimeoutError:
                raise ConnectionResetError("the caller stopped reading") from None
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the caller went away")

    # -- lifecycle -----------------------------------------------------------------
    def close_if_idle(self) -> None:
        if not self.busy and not self._lingering and self.transport is not None:
            self.transport.close()

    def abort(self) -> asyncio.Task[None] | None:
        """Cut the connection; return the request task it cancelled, if any."""
        if self.transport is not None:
            self.transport.abort()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            return self._task
        return None

    def _arm_idle(self) -> None:
        """An idle connection has idle_timeout to deliver its next request head.

        One timer per connection, re-armed only when it fires early: a
        request moves the deadline, not the timer (cheaper than a new timer
        per request)."""
        if self.front.idle_timeout <= 0:
            return
        loop = self._loop
        self._idle_deadline = loop.time() + self.front.idle_timeout
        if self._idle is None:
            self._idle = loop.call_at(self._idle_deadline, self._idle_check)

    def _cancel_idle(self) -> None:
        self._idle_deadline = None

    def _stop_idle_timer(self) -> None:
        self._idle_deadline = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_check(self) -> None:
        self._idle = None
        if self._idle_deadline is None or self.transport is None:
            return  # busy (the deadline is set again when it is idle) or gone
        loop = asyncio.get_running_loop()
        if loop.time() < self._idle_deadline:
            self._idle = loop.call_at(self._idle_deadline, self._idle_check)
        else:
            self.close_if_idle()

    # -- requests --------------------------------------------------------------------
    def _next_request(self) -> None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n", self._scanned)
        if end < 0:
            self._scanned = max(0, len(buffer) - 3)
            line_start = buffer.rfind(b"\n") + 1
            if len(buffer) - line_start > self.front.max_header_bytes:
                self._hand_off()  # aiohttp refuses it with the right status
            elif len(buffer) > self.front.max_head_bytes:
                self._refuse_head()
            elif self._peer_done:
                self.close_if_idle()
            return
        self._scanned = 0
        if end + 4 > self.front.max_head_bytes:
            self._refuse_head()
            return
        head = bytes(buffer[: end + 4])
        if head == self._last_head:
            request = self._last_request
        else:
            request = parse_head(head, self.front.max_header_bytes, self.front.max_headers)
            if request is None:
                self._hand_off()
                return
            self._last_head, self._last_request = head, request
        assert request is not None
        del buffer[: end + 4]
        self._idle_deadline = None  # _cancel_idle, without a call per request
        self.busy = True
        if self._finished is not None:
            self._finished.clear()
        body: bytes | _BodyFeed | None = None
        if request.length and len(buffer) >= request.length and request.length <= _WHOLE_BODY:
            body = bytes(buffer[: request.length])
            del buffer[: request.length]
        elif request.length:
            body = self._body = _BodyFeed(self, request.length)
            buffer[:] = body.feed(bytes(buffer))
        self._close_announced = False
        if not isinstance(body, _BodyFeed):
            # On the fast path (``server.proxy.fast_path``) if it can be; here,
            # not in a method of its own (a Python call per request).
            self._request, self._request_body = request, body
            try:
                if try_fast(self.front.services, self, request, body):
                    return
            except Exception as exc:
                # Nothing reached the API (the engine sends last): the general
                # path serves it and gives the definite error, if there is one.
                log.warning("front_fast_path_failed", error_type=type(exc).__name__, exc_info=exc)
        self._task = asyncio.get_running_loop().create_task(self._serve(request, body))

    def _linger(self, transport: asyncio.Transport) -> None:
        """Answered before the body arrived: stop sending, swallow the rest for
        a moment, then close. Closing at once with unread bytes would reset
        the connection, and the reset can destroy the answer before the
        caller reads it."""
        self._lingering = True
        self.resume_reading()
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                # The caller is gone already (asyncio's transport raises
                # ENOTCONN from the half-close, uvloop's a RuntimeError once
                # its handle is closed): nothing to linger for.
                transport.abort()
                return
        asyncio.get_running_loop().call_later(_LINGER_SECONDS, transport.close)

    def _refuse_head(self) -> None:
        """A head past max_head_bytes: answered 431 here (aiohttp has no bound
        on a whole head, only per line and per count), then the connection ends."""
        assert self.transport is not None
        self._stop_idle_timer()
        self._buffer.clear()
        limit = self.front.max_head_bytes
        body = json.dumps(
            {
                "type": "request_head_too_large",
                "title": "The request head is larger than the relay accepts",
                "status": 431,
                "detail": f"the request line and headers passed max_head_bytes ({limit})",
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"Content-Type: application/problem+json\r\n%sContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (SERVER_FIELD, len(body), body)
        )
        self._linger(self.transport)

    def _hand_off(self) -> None:
        """From this request on, aiohttp serves the connection."""
        assert self.transport is not None
        assert self.front.handoff_to is not None
        self._stop_idle_timer()
        self.front.callers.discard(self)
        handler = self.front.handoff_to()
        self.transport.set_protocol(handler)
        handler.connection_made(self.transport)
        if self._writable is not None and not self._writable.done():
            handler.pause_writing()  # the transport told us, not aiohttp
        if self._buffer:
            handler.data_received(bytes(self._buffer))
            self._buffer.clear()

    async def _serve(self, request: _Request, body: bytes | _BodyFeed | None) -> None:
        await self._served(request, self._answer(request, body))

    async def _served(self, request: _Request, answering: Coroutine[Any, Any, None]) -> None:
        """Run *answering* (the request's answer), then end the request."""
        keep_alive = request.keep_alive
        cancelled = False
        try:
            await answering
        except ConnectionError:
            keep_alive = False
        except asyncio.CancelledError:
            cancelled = True
        except Exception as exc:
            log.error("front_request_failed", error_type=type(exc).__name__, exc_info=exc)
            keep_alive = False
        finally:
            feed, self._body = self._body, None
            unread = feed is not None and feed.remaining > 0
            if feed is not None:
                # Whoever still reads it (an upload the API did not wait for) stops.
                feed.fail(ConnectionAbortedError("the request is over"))
        if cancelled:
            assert self.transport is not None
            self.transport.abort()
            raise asyncio.CancelledError
        self._finish(keep_alive, unread)

    def _finish(self, keep_alive: bool, unread: bool = False) -> None:
        """The request is over: keep the connection for the next one, or close it."""
        transport = self.transport
        assert transport is not None
        self._request = self._request_body = None
        if unread and not transport.is_closing():
            self._linger(transport)
        elif (
            not keep_alive
            or self._close_announced
            or self.front.closing
            or self._peer_done
            or transport.is_closing()
        ):
            transport.close()
        else:
            # resume_reading and _arm_idle, without two calls per request
            if self._reading_paused:
                self.resume_reading()
            idle_timeout = self.front.idle_timeout
            if idle_timeout > 0:
                self._idle_deadline = self._loop.time() + idle_timeout
                if self._idle is None:
                    self._arm_idle()
        self.busy = False
        if self._finished is not None:
            self._finished.set()
        if self._buffer and not self._lingering and not transport.is_closing():
            self._next_request()

    async def _answer(self, request: _Request, body: bytes | _BodyFeed | None) -> None:
        services = self.front.services
        authorization = (request.authorization or b"").decode("latin-1")
        forwarded = slot_wanted = False
        if bearer_actor(services.admin, authorization) is None:
            # Another relay of the cluster forwarding a request it has no tunnel
            # for, or no share of the connection's concurrency cap.
            hop = get(request.headers, _HOP_LOWER)
            checked = (
                services.hop.check(
                    hop.decode("latin-1"), request.method, request.conn_id, request.relative
                )
                if hop is not None and services.hop is not None
                else None
            )
            if checked is None or checked[1] not in ("", SLOT):
                self._write_response(unauthorized(), request)
                return
            forwarded, slot_wanted = True, checked[1] == SLOT
        sink = _SocketSink(self, request)
        limit = services.max_body_bytes
        if limit and request.length > limit:
            error = BodyTooLarge(f"the body is {request.length} bytes; max_body_bytes is {limit}")
            self._write_response(error_problem(error, services.metrics, _PATH_LABEL), request)
            return
        await self._through(
            request,
            sink,
            exchange(
                services,
                request.conn_id,
                request.method,
                request.relative,
                request.headers,
                body if not isinstance(body, _BodyFeed) else aiter(body),
                sink,
                forwarded=forwarded,
                slot_wanted=slot_wanted,
            ),
        )

    async def _through(
        self, request: _Request, sink: _SocketSink, sending: Coroutine[Any, Any, None]
    ) -> None:
        """Run *sending* (the exchange, writing to *sink*): an error before the
        answer's head went out is answered with its problem document."""
        try:
            await sending
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if sink.started:
                raise
            self._write_response(
                error_problem(exc, self.front.services.metrics, _PATH_LABEL), request
            )
            return
        if sink.broken:
            # The head is gone already: cutting the connection is the only
            # way left to tell the caller the body is incomplete.
            raise ConnectionResetError

    # -- the fast path's callbacks (server.proxy.fast_path.Caller) ---------------------
    @property
    def hung_up(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def admits(self, authorization: bytes) -> bool:
        """Whether *authorization* holds a valid admin token.

        The current token, once checked on this connection, is not hashed
        again for each request that sends it while it stays current: a
        rotation or a token adopted from the cluster ends the memo. (It
        compares what this caller sent before, never a stored secret; the
        previous token of a rotation is checked every time, as it expires.)"""
        admin = self.front.services.admin
        epoch = admin.epoch
        memo = self._admitted
        if memo is not None and memo[1] is epoch and memo[0] == authorization:
            return True
        text = authorization.decode("latin-1")
        if bearer_actor(admin, text) is None:
            return False
        if bearer_is_current(admin, text):
            self._admitted = (authorization, epoch)
        return True

    def serve_generally(self) -> None:
        request = self._request
        assert request is not None
        self._task = asyncio.get_running_loop().create_task(
            self._serve(request, self._request_body)
        )

    def answer_whole(self, status: int, reason: str | None, headers: Fields, body: bytes) -> None:
        assert self._request is not None
        head = self.head(status, reason, headers, self._request, length=len(body))
        # ``write``, inline (a Python call per request).
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            raise ConnectionResetError("the caller went away")
        transport.write(head + body)

    def answer_error(self, exc: Exception) -> None:
        assert self._request is not None
        problem = error_problem(exc, self.front.services.metrics, _PATH_LABEL)
        try:
            self._write_response(problem, self._request)
        except ConnectionResetError:
            self.end_request(keep_alive=False)
            return
        self.end_request(keep_alive=True)

    def answer_streamed(self, handle: Handle, upstream: Http1Response, began: float) -> None:
        request = self._request
        assert request is not None
        sink = _SocketSink(self, request)
        delivering = self._deliver(handle, request.method, upstream, sink, began)
        self._task = asyncio.get_running_loop().create_task(
            self._served(request, self._through(request, sink, delivering))
        )

    async def _deliver(
        self, handle: Handle, method: str, upstream: Http1Response, sink: AnswerSink, began: float
    ) -> None:
        try:
            await deliver(self.front.services, handle, method, upstream, sink, began)
        except RelayError as exc:
            assert handle.id is not None
            self.front.services.stats.record(handle.id, exc.status, time.perf_counter() - began)
            raise

    def end_request(self, keep_alive: bool) -> None:
        request = self._request
        assert request is not None
        self._finish(keep_alive and request.keep_alive)

    def pipe_write(self, data: bytes) -> None:
        """A piece of a piped body (``_SocketSink.pipe``), in the tunnel
        stream's data_received: nothing raised there, a caller gone stops the pipe."""
        transport = self.transport
        if transport is None or transport.is_closing():
            if self.piping is not None:
                self.piping.unpipe()
            return
        transport.write(data)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            raise ConnectionResetError("the caller went away")
        self.transport.write(data)

    def head(
        self,
        status: int,
        reason: str | None,
        headers: Fields,
        request: _Request,
        *,
        length: int | None = None,
        chunked: bool = False,
    ) -> bytes:
        """The answer's head: the status line, Date when *headers* hold none,
        *headers* as they are, then the framing and Connection the front chose.

        The same *headers* again (a repeated answer's list, shared, or an
        equal list from another stream) with the same status, reason and
        length make the same head up to its Connection field: made once,
        unless the relay dated it."""
        memo = self._head_memo
        if (
            memo is not None
            # The same list, or an equal one: the answer another stream of
            # the pool memoised (at c=32 a caller's answers come from many).
            and (memo[0] is headers or memo[0] == headers)
            and memo[1] == status
            and memo[2] == reason
            and memo[3] == length
            and not chunked
        ):
            start = memo[4]
        else:
            start = self._head_start(status, reason, headers, length, chunked)
        body_unread = self._body is not None and self._body.remaining > 0
        if not request.keep_alive or self.front.closing or body_unread:
            self._close_announced = True
            return start + b"Connection: close\r\n\r\n"
        return start + b"\r\n"

    def _head_start(
        self, status: int, reason: str | None, headers: Fields, length: int | None, chunked: bool
    ) -> bytes:
        """``head`` up to its Connection field."""
        given = reason
        if not reason or not reason.isprintable() or not reason.isascii():
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = ""
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())]
        fields = b"".join([b"%s: %s\r\n" % field for field in headers])
        # Which names are there, from one lowered copy (one pass in C, not
        # one lower() per field and name asked for).
        named = b"\n" + fields.lower()
        dated = b"\ndate:" not in named
        if dated:
            parts.append(b"Date: %s\r\n" % self.front.date().encode())
        if b"\nserver:" not in named:
            parts.append(SERVER_FIELD)
        parts.append(fields)
        if length is not None and status not in _NO_BODY_STATUSES and status >= 200:
            parts.append(b"Content-Length: %d\r\n" % length)
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        start = b"".join(parts)
        if not dated and not chunked:
            self._head_memo = (headers, status, given, length, start)
        return start

    def _write_response(self, response: web.Response, request: _Request) -> None:
        """One of the relay's own small answers (a problem document)."""
        body = response.body
        assert isinstance(body, bytes)
        headers = [
            (n.encode("latin-1"), v.encode("latin-1"))
            for n, v in response.headers.items()
            if n.lower() != "content-length"
        ]
        self.write(
            self.head(response.status, response.reason, headers, request, length=len(body)) + body
        )
