"""One proxied exchange, whoever carries it to the caller.

The relay has two listeners for the proxy route: its own front
(``server.proxy.front``, straight off the socket) and aiohttp's route
(``server.proxy.route``). Both send the request the same way and shape the
answer the same way; only how bytes reach the caller differs. This module is
that shared part, and an :class:`AnswerSink` is the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol

import aiohttp
import structlog

from server.cluster.forward import SLOT
from server.errors import RelayError, TunnelLost, relay_error_in
from server.proxy import wiretap
from server.proxy.debug_log import Recording
from server.proxy.engine import Handle
from server.proxy.headers import Fields, LocationRewrite, answer_fields, get, lowered_names
from server.proxy.retry import RETRIES_HEADER, Sent
from server.proxy.urls import base_origin_and_path
from server.storage.cluster import RelayRow
from server.tunnel.http1 import Answer, AnswerMemo, Body
from server.web.services import Services
from sluice import logs

log = structlog.get_logger("sluice.relay.proxy")

# An answer of known length up to this size goes out in one write.
SMALL_BODY = 64 * 1024

# Set on every proxied answer so callers can tell the API's own answers
# (this header present) from the relay's problem+json errors.
VIA_HEADER = "Sluice-Connection"
_VIA = VIA_HEADER.encode()
_RETRIES = RETRIES_HEADER.encode()
_VIA_LOWER = _VIA.lower()


class AnswerSink(Protocol):
    """Where an API's answer goes: the caller's socket, one way or another."""

    async def whole(self, status: int, reason: str | None, headers: Fields, body: bytes) -> None:
        """Called once for a small answer, its body complete; *headers* are
        the fields to send as they are (less framing: Content-Length is
        ``len(body)``)."""

    async def begin(
        self,
        status: int,
        reason: str | None,
        headers: Fields,
        length: int | None,
    ) -> None:
        """Called once before a streamed answer's body; *length* is the API's
        Content-Length, None when its body is chunked or ends with the stream."""

    async def write(self, chunk: bytes) -> None:
        """Called for each piece of a streamed body, in order; waits for room."""

    async def end(self) -> None:
        """Called when a streamed body is complete."""

    def cut(self) -> None:
        """Called when a streamed answer broke after its head went out: the
        caller must see a truncated body, never a clean end."""


@contextlib.contextmanager
def relay_errors(handle: Handle, what: str) -> Iterator[None]:
    """aiohttp's client errors as the relay's own: the relay error behind one
    when there is one, else *what* (aiohttp's text may quote the URL, which
    can carry a URL-parameter token, so it is masked)."""
    try:
        yield
    except aiohttp.ClientError as exc:
        raise relay_error_in(exc) or TunnelLost(f"{what}: {handle.mask(str(exc))}") from None


async def send_upstream(
    services: Services,
    handle: Handle,
    method: str,
    relative: str,
    headers: Fields,
    body: Body,
) -> Sent:
    """Send one proxied request, rate limits waited out (``server.proxy.retry``);
    errors are the relay's own (no URL quoted)."""
    with relay_errors(handle, "the request failed on its way"):
        return await services.rate_limits.send(
            handle, method, relative, headers, body, services.engine.request
        )


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


def answer_headers(
    upstream: Answer, handle: Handle, conn_id: str, retries: int | None = None
) -> Fields:
    """The API's answer fields the caller gets (``server.proxy.headers.answer_fields``:
    the sink adds the framing), the connection named, and for a connection
    with ``http.rate_limit`` how many times the request was sent again.

    An answer whose head repeats the last one of its stream
    (``server.tunnel.http1.AnswerMemo``) gets the same list as the last one
    did, made once: nobody changes a list of fields once made."""
    memo: AnswerMemo | None = getattr(upstream, "memo", None)
    if memo is None or retries is not None:
        return _answer_headers(upstream.raw_headers, handle, conn_id, retries)
    base_uri = handle.connection.http.base_uri
    derived = memo.derived
    if derived is not None and derived[0] == conn_id and derived[1] == base_uri:
        fields: Fields = derived[2]
        return fields
    fields = _answer_headers(memo.headers, handle, conn_id, None)
    memo.derived = (conn_id, base_uri, fields)
    return fields


def _answer_headers(
    raw: Sequence[tuple[bytes, bytes]], handle: Handle, conn_id: str, retries: int | None
) -> Fields:
    names = lowered_names(raw)
    if _VIA_LOWER in names:
        # Forwarded by the relay that holds the tunnel: shaped and named there.
        return answer_fields(raw, None, names)
    kept = answer_fields(raw, _rewrite(handle.connection.http.base_uri, conn_id), names)
    kept.append((_VIA, conn_id.encode()))
    if retries is not None:
        kept.append((_RETRIES, str(retries).encode()))
    return kept


def _length(upstream: Answer) -> int | None:
    """The API's Content-Length, None for a chunked body (it stays chunked)."""
    if b"chunked" in (get(upstream.raw_headers, b"transfer-encoding") or b"").lower():
        return None
    return upstream.content_length


async def exchange(
    services: Services,
    conn_id: str,
    method: str,
    relative: str,
    headers: Fields,
    body: Body,
    sink: AnswerSink,
    *,
    forwarded: bool = False,
    slot_wanted: bool = False,
) -> None:
    """Send one request through connection *conn_id* and pass its answer to *sink*.

    Without a tunnel of its own to the connection's agent, the relay forwards
    the request to a relay of the cluster that has one (unless another relay
    *forwarded* it here: a request makes one hop at most). A capped
    connection's slot is held by the relay the caller reached, so one
    forwarded for a tunnel takes none here; one forwarded because its relay
    holds no share of the cap (*slot_wanted*) takes one of this relay's.

    Raises (a RelayError, or the connection's own errors) while nothing has
    gone to the caller, so the listener can answer with a problem document.
    Once the head is out, a failure is logged and the sink is cut instead.
    """
    began = time.perf_counter()
    handle = await services.connections.handle(conn_id)
    http = handle.connection.http
    level = http.concurrency_level
    if forwarded and not slot_wanted:
        level = None  # the sending relay holds the slot
    hop_to = None
    if level is not None and not forwarded:
        hop_to = await _share_holders(services, handle, level)
        if hop_to:
            level = None  # the relay it goes to takes the slot
    recording = await services.debug.recording(handle, method, relative)
    if recording is None:
        try:
            if level is None:  # the common case, without the slot's cost
                await _exchange(
                    services,
                    handle,
                    method,
                    relative,
                    headers,
                    body,
                    sink,
                    began,
                    forwarded,
                    hop_to,
                )
                return
            async with services.limits.slot(conn_id, level, http.queue_timeout_seconds):
                await _exchange(
                    services, handle, method, relative, headers, body, sink, began, forwarded
                )
        except RelayError as exc:
            services.stats.record(conn_id, exc.status, time.perf_counter() - began)
            raise
        return
    try:
        with wiretap.listen(recording.tap):
            async with services.limits.slot(conn_id, level, http.queue_timeout_seconds):
                hopped = await _exchange(
                    services,
                    handle,
                    method,
                    relative,
                    headers,
                    recording.body(body),
                    RecordingSink(sink, recording),
                    began,
                    forwarded,
                    hop_to,
                )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, RelayError):
            services.stats.record(conn_id, exc.status, time.perf_counter() - began)
        recording.failed(f"{getattr(exc, 'type', type(exc).__name__)}: {exc}")
        await services.debug.write(recording)
        raise
    if not hopped or recording.error is not None:
        # A request forwarded to another relay is recorded there, as that
        # relay sent it to the API: one entry, with what went over the wire
        # (this relay's own only when the answer broke off on its way here).
        await services.debug.write(recording)


async def _share_holders(services: Services, handle: Handle, level: int) -> list[RelayRow] | None:
    """The relays to forward to when this relay holds no share of the cap
    (a cluster with more relays than slots); None when it holds one.

    An on-premise connection goes only to a holder with a tunnel to its
    agent. When no holder can take it, the request is served here with one
    slot: the cap may then be passed by one, which beats failing it (the
    shares are out of date: a holder just died or the agent is moving).
    """
    if services.shares is None or services.limits.share_of(level) > 0:
        return None
    relays = services.shares.holders(level)
    agent_id = handle.connection.agent_id
    if relays and handle.connection.mode == "on_premise" and agent_id is not None:
        assert services.forwarder is not None
        tunnels = {r.id for r in await services.forwarder.holders(agent_id)}
        relays = [r for r in relays if r.id in tunnels]
    if not relays:
        log.warning("cap_share_holders_unreachable", connection=handle.id, level=level)
        return None
    random.shuffle(relays)  # spread over the holders; each queues what it gets
    return relays


class RecordingSink:
    """An answer on its way to the caller, its head and first bytes recorded."""

    def __init__(self, sink: AnswerSink, recording: Recording) -> None:
        self._sink = sink
        self._recording = recording

    async def whole(self, status: int, reason: str | None, headers: Fields, body: bytes) -> None:
        self._recording.answered(status, headers)
        self._recording.answer_chunk(body)
        await self._sink.whole(status, reason, headers, body)

    async def begin(
        self, status: int, reason: str | None, headers: Fields, length: int | None
    ) -> None:
        self._recording.answered(status, headers)
        await self._sink.begin(status, reason, headers, length)

    async def write(self, chunk: bytes) -> None:
        self._recording.answer_chunk(chunk)
        await self._sink.write(chunk)

    async def end(self) -> None:
        await self._sink.end()

    def cut(self) -> None:
        self._recording.failed("the answer broke off on its way to the caller")
        self._sink.cut()


async def _exchange(
    services: Services,
    handle: Handle,
    method: str,
    relative: str,
    headers: Fields,
    body: Body,
    sink: AnswerSink,
    began: float,
    forwarded: bool = False,
    hop_to: list[RelayRow] | None = None,
) -> bool:
    """True when another relay of the cluster served the request."""
    assert handle.id is not None
    conn_id = handle.id
    agent_id = handle.connection.agent_id
    hopped = True
    if hop_to:
        assert services.forwarder is not None
        answer = await services.forwarder.forward(
            agent_id, conn_id, method, relative, headers, body, to=hop_to, purpose=SLOT
        )
        services.metrics.forwarded.labels("out").inc()
        sent_upstream = Sent(answer, 0)
    elif (
        not forwarded
        and services.forwarder is not None
        and handle.connection.mode == "on_premise"
        and agent_id is not None
        and not services.registry.is_online(agent_id)
    ):
        answer = await services.forwarder.forward(
            agent_id, conn_id, method, relative, headers, body
        )
        services.metrics.forwarded.labels("out").inc()
        sent_upstream = Sent(answer, 0)
    else:
        hopped = False
        if forwarded:
            services.metrics.forwarded.labels("in").inc()
        sent_upstream = await send_upstream(services, handle, method, relative, headers, body)
    upstream = sent_upstream.answer
    retries = sent_upstream.retries if handle.connection.http.rate_limit is not None else None
    counted(services, handle, upstream, began)
    await deliver(services, handle, method, upstream, sink, began, retries)
    return hopped


def counted(
    services: Services, handle: Handle, upstream: Answer, began: float, at: float | None = None
) -> None:
    """An answer's head arrived (at *at*, perf_counter time; now when None):
    the metrics and the connection's stats count it."""
    assert handle.id is not None
    elapsed = (time.perf_counter() if at is None else at) - began
    services.metrics.proxied(handle.connection.mode, upstream.status, elapsed)
    services.stats.record(handle.id, upstream.status, elapsed)


async def deliver(
    services: Services,
    handle: Handle,
    method: str,
    upstream: Answer,
    sink: AnswerSink,
    began: float,
    retries: int | None = None,
) -> None:
    """Pass an API's answer (counted) to *sink*, released at the end; then the
    canonical line. Raises while nothing has gone to the caller; once the
    head is out, a failure is logged and the sink is cut."""
    assert handle.id is not None
    conn_id = handle.id
    mode = handle.connection.mode
    if is_small(upstream, method):
        try:
            with relay_errors(handle, "the answer was cut off"):
                data = await upstream.read()
        finally:
            upstream.release()
        small = answer_headers(upstream, handle, conn_id, retries)
        await sink.whole(upstream.status, upstream.reason, small, data)
        canonical_line(conn_id, mode, method, upstream.status, len(data), began)
        return
    sent = 0
    try:
        streamed = answer_headers(upstream, handle, conn_id, retries)
        await sink.begin(upstream.status, upstream.reason, streamed, _length(upstream))
        pipe: Callable[[Answer], Awaitable[int | None]] | None = getattr(sink, "pipe", None)
        piped = None if pipe is None else await pipe(upstream)
        if piped is not None:
            sent = piped
        else:
            async for chunk in upstream.content.iter_any():
                if chunk:
                    await sink.write(chunk)
                    sent += len(chunk)
        await sink.end()
    except (aiohttp.ClientError, RelayError, OSError) as exc:
        sent = getattr(sink, "piped", 0) or sent
        log.warning(
            "proxy_stream_broken", connection=conn_id, bytes=sent, error=handle.mask(str(exc))
        )
        sink.cut()
        return
    finally:
        upstream.release()
    canonical_line(conn_id, mode, method, upstream.status, sent, began)


def canonical_line(
    conn_id: str, mode: str, method: str, status: int, sent: int, began: float
) -> None:
    """One log line per proxied request (none made when info is off)."""
    if logs.min_level > logging.INFO:
        return
    log.info(
        "proxied",
        connection=conn_id,
        mode=mode,
        method=method,
        status=status,
        bytes_down=sent,
        ms=round((time.perf_counter() - began) * 1000, 1),
    )
