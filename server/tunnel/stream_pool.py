"""Kept-alive HTTP/1.1 streams to APIs, reused across requests.

One pool per agent (streams are CONNECT streams through its tunnel) and one
for cloud mode (streams are TCP connections): a ``Dialer`` opens them. A
request takes an idle stream to its destination (scheme, host, port, TLS
settings) or dials a new one; when the answer has been read to its
end the stream waits ``keepalive_timeout`` seconds for the next request. A
kept-alive stream the API closed meanwhile is retried on a fresh one if the
request is idempotent and can be sent again (no body, or one held in memory).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Protocol

import structlog
from yarl import URL

from server.errors import UpstreamTimeout
from server.proxy.headers import Fields
from server.tunnel.channel_transport import tls_protocol, tls_ready
from server.tunnel.http1 import Body, Http1Response, Http1Stream, StaleStream, request_head
from server.tunnel.stream_opener import StreamOpener, stream_target
from sluice import logs

log = structlog.get_logger("sluice.server.stream_pool")

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# scheme, host, port, id of the TLS context (0: none). The engine keeps its
# contexts for its lifetime, so an id never comes to stand for another one.
Key = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request head made once (``prepare``), to send as often as asked
    (``StreamPool.begin_prepared``): where it goes, its bytes, and the error
    a late answer gets."""

    key: Key
    head: bytes
    head_only: bool
    late: str


def prepare(
    method: str,
    url: URL,
    target: str,
    fields: Fields,
    length: int | None,
    tls: ssl.SSLContext | None,
) -> Prepared:
    """The head of a request to *url*'s origin without a streamed body
    (*length*: its body's size, None without a body or Content-Length);
    ValueError when a field cannot go on the wire."""
    host = url.raw_host or ""
    key: Key = (url.scheme, host.lower(), url.port or 0, id(tls) if tls is not None else 0)
    head = request_head(
        method, target, url.host_port_subcomponent or host, fields, length, chunked=False
    )
    return Prepared(key, head, method == "HEAD", _late(host))


def _no_connection(host: str, port: int | None, where: str, limit: float | None) -> str:
    return f"no connection to {host}:{port} {where} within {limit or 0:g} s"


class Carrier(Protocol):
    """What a stream runs through (a tunnel replica); one that is draining
    gets no new requests."""

    @property
    def draining(self) -> bool: ...


class Dialer(Protocol):
    """Opens the connection under a new stream."""

    def describe(self) -> str:
        """Where streams go, for messages ("through agent X", "directly")."""
        ...

    async def dial(
        self,
        stream: Http1Stream,
        host: str,
        port: int | None,
        tls: ssl.SSLContext | None,
        *,
        early: bool = False,
        limit: float | None = None,
    ) -> Carrier:
        """Connect *stream* (its ``connection_made`` called) to *host*:*port*.

        With *early*, the dialler may return before the far end has accepted
        the connection (the stream's first request then travels with the
        opening); a refusal, or no acceptance within *limit* seconds, then
        reaches the stream as ``connection_lost`` with the error. (A TLS
        handshake may start before the acceptance whatever *early* says:
        nothing of the caller's goes before it ends.)
        """
        ...


class TunnelDialer:
    """Streams as CONNECT streams through an agent's tunnel."""

    def __init__(self, opener: StreamOpener) -> None:
        self._opener = opener

    def __repr__(self) -> str:
        return f"<TunnelDialer agent={self._opener.agent_id}>"

    def describe(self) -> str:
        return f"through agent {self._opener.agent_id}"

    async def dial(
        self,
        stream: Http1Stream,
        host: str,
        port: int | None,
        tls: ssl.SSLContext | None,
        *,
        early: bool = False,
        limit: float | None = None,
    ) -> Carrier:
        target = stream_target(host, port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit if limit else None
        late = _no_connection(host, port, self.describe(), limit)
        if tls is not None:
            # The ClientHello goes right behind the CONNECT (nothing of the
            # caller's is sent before the handshake, so always).
            hello, handshake = tls_protocol(stream, tls, target.host)
            transport, tunnel = await self._opener.open_pipelined(
                target, hello, deadline=deadline, late_message=late
            )
            await tls_ready(transport, hello, handshake)
            return tunnel
        if early:
            # The request goes right behind the CONNECT, in its round trip.
            _transport, tunnel = await self._opener.open_pipelined(
                target, stream, deadline=deadline, late_message=late
            )
            return tunnel
        transport, _session, rest, tunnel = await self._opener.open(target)
        transport.set_protocol(stream)
        stream.connection_made(transport)
        if rest:
            stream.data_received(rest)
        return tunnel


class StreamPool:
    """Idle HTTP/1.1 streams by destination, dialled by one ``Dialer``."""

    def __init__(self, dialer: Dialer, *, connect_timeout: float, keepalive_timeout: float) -> None:
        self._dialer = dialer
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive_timeout
        self._idle: dict[Key, list[Http1Stream]] = {}
        self._tunnel_of: dict[Http1Stream, Carrier] = {}

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self._idle.values())
        return f"<StreamPool {self._dialer.describe()} idle={idle}>"

    async def request(
        self,
        method: str,
        url: URL,
        target: str,
        fields: Fields,
        body: Body,
        tls: ssl.SSLContext | None,
        *,
        connect: float | None,
        total: float | None,
        length: int | None = None,
    ) -> Http1Response:
        """Send one request to *url*'s origin; the answer's head has arrived
        when this returns.

        *target* is the request-target as it goes out; *fields* the header
        fields (less Host and framing). *length* is the body's size when it
        streams but its size is known (otherwise a streamed body goes chunked).
        """
        host = url.raw_host or ""
        port = url.port
        key: Key = (url.scheme, host.lower(), port or 0, id(tls) if tls is not None else 0)
        size = len(body) if isinstance(body, bytes) else length
        chunked = body is not None and size is None
        head = request_head(
            method, target, url.host_port_subcomponent or host, fields, size, chunked=chunked
        )
        deadline, late = _deadline(host, total)
        # As aiohttp does: only an idempotent request goes again after a
        # kept-alive stream closed under it (the API may have acted on it).
        replayable = method in _IDEMPOTENT and (body is None or isinstance(body, bytes))
        while True:
            stream = self._take(key)
            reused = stream is not None
            if stream is None:
                # A body held in memory (or none) may go out before the agent
                # has answered the CONNECT; one streamed from the caller
                # waits for the answer, as its bytes are read only once.
                early = body is None or isinstance(body, bytes)
                limit = connect or self._connect_timeout
                stream = await self._connect(key, host, port, tls, limit, early=early)
            try:
                return await stream.exchange(
                    head, body, deadline, late, chunked=chunked, head_only=method == "HEAD"
                )
            except StaleStream:
                if reused and replayable:
                    if logs.min_level <= logging.DEBUG:
                        _trace("stream_stale_retry", stream)
                    continue
                raise

    def begin_on_idle(
        self,
        method: str,
        url: URL,
        target: str,
        fields: Fields,
        body: bytes | None,
        tls: ssl.SSLContext | None,
        *,
        total: float | None,
        length: int | None = None,
    ) -> tuple[Http1Stream, asyncio.Future[Http1Response]] | None:
        """``request`` without waiting, when an idle stream to *url*'s origin
        is there (None when there is none: nothing was sent); see
        ``Http1Stream.begin`` for the future. A ``StaleStream``
        error means what it means for ``request``: the API never saw it."""
        size = len(body) if body is not None else length
        return self.begin_prepared(prepare(method, url, target, fields, size, tls), body, total)

    def begin_prepared(
        self, prepared: Prepared, body: bytes | None, total: float | None
    ) -> tuple[Http1Stream, asyncio.Future[Http1Response]] | None:
        """``begin_on_idle`` with a head made before (*body* of the size it says)."""
        stream = self._take(prepared.key)
        if stream is None:
            return None
        # The stream's loop (an attribute: asking for the running loop is a
        # getpid system call in Python 3.11; the ``loop`` property a Python call).
        if total:
            deadline: float | None = (
                stream.bound_loop or asyncio.get_running_loop()
            ).time() + total
        else:
            deadline = None
        try:
            answer = stream.begin(
                prepared.head, body, deadline, prepared.late, head_only=prepared.head_only
            )
        except BaseException:
            stream.close()
            raise
        return stream, answer

    # -- idle streams ------------------------------------------------------------
    def _take(self, key: Key) -> Http1Stream | None:
        streams = self._idle.get(key)
        while streams:
            stream = streams.pop()
            if not streams:
                del self._idle[key]
            stream.idle_deadline = None  # its timer, if it fires meanwhile, lets it be
            # Http1Stream.closed, inline: a property is a Python call the
            # interpreter cannot inline (about 160 ns a request in 3.11).
            transport = stream._transport
            if not (stream._closed or transport is None or transport.is_closing()):
                if logs.min_level <= logging.DEBUG:
                    _trace("stream_taken", stream, idle_left=len(streams))
                return stream
            if stream.idle_timer is not None:
                stream.idle_timer.cancel()
                stream.idle_timer = None
            self._tunnel_of.pop(stream, None)
        return None

    def _idle_again(self, stream: Http1Stream) -> None:
        tunnel = self._tunnel_of.get(stream)
        if tunnel is None or tunnel.draining:
            self._forget(stream)
            return
        key: Key = stream.owner
        self._idle.setdefault(key, []).append(stream)
        # One timer per stream, moved on only when it fires early: a request
        # moves the deadline, not the timer (cheaper than a timer per request).
        loop = stream.bound_loop or asyncio.get_running_loop()  # (as in begin_prepared)
        stream.idle_deadline = loop.time() + self._keepalive
        if stream.idle_timer is None:
            stream.idle_timer = loop.call_at(stream.idle_deadline, self._expire, key, stream)

    def _expire(self, key: Key, stream: Http1Stream) -> None:
        stream.idle_timer = None
        deadline = stream.idle_deadline
        if deadline is None:
            return  # carrying a request: timed again when it is idle again
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            stream.idle_timer = loop.call_at(deadline, self._expire, key, stream)
            return
        streams = self._idle.get(key, [])
        if stream in streams:
            streams.remove(stream)
            if not streams:
                del self._idle[key]
        self._forget(stream)

    def _forget(self, stream: Http1Stream) -> None:
        self._tunnel_of.pop(stream, None)
        stream.close()

    def close_idle(self, tunnel: Carrier | None = None) -> int:
        """Close idle streams (those through *tunnel*, or all); returns how many."""
        closed = 0
        for key, streams in list(self._idle.items()):
            for stream in list(streams):
                if tunnel is None or self._tunnel_of.get(stream) is tunnel:
                    streams.remove(stream)
                    if stream.idle_timer is not None:
                        stream.idle_timer.cancel()
                    self._forget(stream)
                    closed += 1
            if not streams:
                del self._idle[key]
        return closed

    # -- new streams ---------------------------------------------------------------
    async def _connect(
        self,
        key: Key,
        host: str,
        port: int | None,
        tls: ssl.SSLContext | None,
        limit: float | None,
        *,
        early: bool = False,
    ) -> Http1Stream:
        stream = Http1Stream(self._idle_again)
        stream.owner = key
        began = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                self._tunnel_of[stream] = await self._dialer.dial(
                    stream, host, port, tls, early=early, limit=limit
                )
        except TimeoutError:
            self._forget(stream)
            raise UpstreamTimeout(
                _no_connection(host, port, self._dialer.describe(), limit)
            ) from None
        except BaseException:
            self._forget(stream)
            raise
        if logs.min_level <= logging.DEBUG:
            _trace("stream_dialed", stream, ms=round((time.monotonic() - began) * 1000, 1))
        return stream


def _trace(event: str, stream: Http1Stream, **fields: object) -> None:
    """A debug line on a stream's way through the pool, with the monotonic
    time (``at``) to set beside a client's own timings."""
    log.debug(
        event,
        stream=f"{id(stream):x}",
        exchanges=stream.exchanges,
        at=round(time.monotonic(), 4),
        **fields,
    )


def _deadline(host: str, total: float | None) -> tuple[float | None, str]:
    """When a request's answer is late (loop time), and what its error says."""
    deadline = asyncio.get_running_loop().time() + total if total else None
    return deadline, _late(host)


def _late(host: str) -> str:
    return f"{host} did not answer within the connection's timeouts"
