"""The front's fast path: a common proxy request served by callbacks.

The general path (``server.proxy.front`` → ``server.proxy.exchange`` →
engine → stream pool → stream) runs one Task per request through a chain of
about eleven awaits; for a small GET that chain is most of the relay's
Python work. Most requests need none of what the awaits are for: the
connection's settings are cached, no debug window is open, no concurrency
cap or rate limit applies, the auth scheme has its credentials in hand and
never asks for a retry, and an idle kept-alive stream to the API is there.
Such a request is sent from the caller's ``data_received`` at once
(``Engine.begin_now``), and the answer's head comes back as a callback on
the stream's future; a small answer that has arrived whole goes to the
caller from that callback. No Task, no await.

Whatever is not that common case goes the general way, so it keeps every
behaviour it has:
- before sending, anything the fast path does not check for itself (a
  forwarded request, a capped or rate-limited connection, an open or
  unknown debug window, settings not cached, a token to fetch, no idle
  stream, a request the engine would refuse): the general path serves it
  from the start;
- a kept-alive stream that closed before answering (the API never saw
  the request): an idempotent request is served again the general way
  (the stream pool would send it again too); any other gets the pool's
  definite error;
- an answer to stream, or one whose body is still arriving: a Task passes
  it on as the general path does (``server.proxy.exchange.deliver``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Protocol

from server.errors import RelayError
from server.proxy.engine import Handle
from server.proxy.exchange import SMALL_BODY, answer_headers, canonical_line, counted
from server.proxy.headers import Fields
from server.tunnel.http1 import Http1Response, Http1Stream, StaleStream
from server.web.services import Services
from sluice import logs

# Sent again after a kept-alive stream closed under it, as the stream pool does.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Caller(Protocol):
    """The caller's side (``server.proxy.front.FrontProtocol``)."""

    # The caller's connection (None, or closing: it hung up, nobody reads an answer).
    transport: asyncio.Transport | None

    @property
    def hung_up(self) -> bool:
        """The caller's connection is closing: nobody reads an answer."""
        ...

    def admits(self, authorization: bytes) -> bool:
        """Whether this Authorization field holds a valid admin token."""
        ...

    def serve_generally(self) -> None:
        """Serve the request the general way, from the start."""

    def answer_whole(self, status: int, reason: str | None, headers: Fields, body: bytes) -> None:
        """Write a small answer (ConnectionResetError: the caller is gone)."""

    def answer_error(self, exc: Exception) -> None:
        """Write the relay's problem document for *exc*, then end the request."""

    def answer_streamed(self, handle: Handle, upstream: Http1Response, began: float) -> None:
        """Pass on an answer (counted already) in a Task, as the general path does."""

    def end_request(self, keep_alive: bool) -> None:
        """The request is over; *keep_alive* False closes the caller's connection."""


class Request(Protocol):
    """A parsed proxy request (``server.proxy.front``)."""

    method: str
    conn_id: str
    relative: str
    headers: Fields
    declared: int | None  # its Content-Length field
    authorization: bytes | None  # its first Authorization field


def try_fast(services: Services, caller: Caller, request: Request, body: bytes | None) -> bool:
    """Send *request* now if it is the common case (the module's doc);
    False when nothing was sent and the general path must serve it."""
    began = time.perf_counter()
    conn_id, method = request.conn_id, request.method
    authorization = request.authorization
    if authorization is None or not caller.admits(authorization):
        return False  # a request forwarded by another relay, or refused: the general path
    limit = services.max_body_bytes
    if limit and body is not None and len(body) > limit:
        return False
    handle = services.connections.cached_handle(conn_id)
    if handle is None:
        return False
    http = handle.connection.http
    if http.concurrency_level is not None or http.rate_limit is not None:
        return False
    if not services.debug.surely_closed(conn_id):
        return False
    begun = services.engine.begin_now(
        handle, method, request.relative, request.headers, body, request.declared
    )
    if begun is None:
        return False
    stream, answer = begun
    # The exchange's state bound to its callback by a partial (a C object):
    # an object of a class of our own, made for each request, was a Python
    # __init__ call the interpreter cannot inline (about 150 ns more).
    answer.add_done_callback(
        functools.partial(_answered, services, caller, handle, method, stream, began)
    )
    return True


def _answered(
    services: Services,
    caller: Caller,
    handle: Handle,
    method: str,
    stream: Http1Stream,
    began: float,
    future: asyncio.Future[Http1Response],
) -> None:
    """Called when the head of the answer to a request sent on the fast path
    (*method* on *stream*, sent at *began*) arrived, or the exchange failed."""
    if future.cancelled():
        stream.close()
        caller.end_request(keep_alive=False)
        return
    exc = future.exception()
    if exc is not None:
        stream.close()
        if isinstance(exc, StaleStream) and method in _IDEMPOTENT:
            caller.serve_generally()
            return
        if isinstance(exc, RelayError):
            conn_id = handle.id
            assert conn_id is not None
            services.stats.record(conn_id, exc.status, time.perf_counter() - began)
        caller.answer_error(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
        return
    upstream = future.result()
    # caller.hung_up, inline: a property is a Python call the
    # interpreter cannot inline (about 160 ns a request in 3.11).
    transport = caller.transport
    if transport is None or transport.is_closing():
        upstream.release()
        caller.end_request(keep_alive=False)
        return
    # is_small, inline (a call per request); the answer released with
    # its body when that has arrived whole (one call, not two).
    length = upstream.content_length
    small = length is not None and length <= SMALL_BODY and method != "HEAD"
    data = upstream.arrived_whole(release=True) if small else None
    if data is None:
        counted(services, handle, upstream, began)
        caller.answer_streamed(handle, upstream, began)
        return
    arrived = time.perf_counter()
    conn_id = handle.id
    assert conn_id is not None
    fields = answer_headers(upstream, handle, conn_id)
    # The answer goes out first; counting it is no part of its latency.
    try:
        caller.answer_whole(upstream.status, upstream.reason, fields, data)
    except ConnectionResetError:
        counted(services, handle, upstream, began, arrived)
        caller.end_request(keep_alive=False)
        return
    # counted, inline (a call per request).
    elapsed = arrived - began
    services.metrics.proxied(handle.connection.mode, upstream.status, elapsed)
    services.stats.record(conn_id, upstream.status, elapsed)
    if logs.min_level <= logging.INFO:  # (canonical_line's own test, without its call)
        canonical_line(
            conn_id,
            handle.connection.mode,
            method,
            upstream.status,
            len(data),
            began,
        )
    caller.end_request(keep_alive=True)
