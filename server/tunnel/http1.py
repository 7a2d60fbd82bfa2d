"""A lean HTTP/1.1 client exchange for tunnel streams: the proxy's hot path.

aiohttp's client costs the relay ~200 µs of CPU per request (request and
response objects, timers, traces, header defaults); most of a small
request's cost through the tunnel. An ``Http1Stream`` is an asyncio protocol
that writes one request head with a single ``write`` and parses the answer
with llhttp (httptools), handing the body to an ``Http1Response`` with flow
control both ways. One exchange at a time per stream; ``server.tunnel.stream_pool``
keeps idle streams for reuse (keep-alive).

Errors are the relay's own (``TunnelLost``, ``UpstreamTimeout``,
``TunnelProtocolError``); none of them quotes a URL, so no URL-parameter
token can leak into a message.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, cast

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from server.errors import (
    RelayError,
    TunnelLost,
    TunnelProtocolError,
    UpstreamHeadTooLarge,
    UpstreamTimeout,
)
from server.proxy.headers import Fields, get
from sluice import __version__

# Read from the stream until this much body waits for the caller, then pause
# (the SSH window stops refilling, so the agent stops reading the API).
HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024
MAX_JOIN = 256 * 1024
# How much request body may wait in the stream before the sender pauses.
WRITE_HIGH_WATER = 256 * 1024
# Bounds on an answer's head (status line and headers), as aiohttp's client
# applies them: an API or a hostile agent that sends endless header lines is
# cut at once instead of growing the relay's memory.
MAX_ANSWER_FIELD = 8190  # one header's name and value
MAX_ANSWER_HEAD = 64 * 1024  # the whole head
MAX_ANSWER_HEADERS = 128
# A kept-alive stream remembers the last answer head it parsed, up to this
# size: the same bytes again (an API's answers to a repeated request differ
# in Date at most once a second) are not parsed again (``AnswerMemo``).
MAX_MEMO_HEAD = 4096

USER_AGENT = f"Sluice/{__version__}"

Body = bytes | AsyncIterable[bytes] | aiohttp.StreamReader | None


class BodyReader(Protocol):
    """The body half of an answer (aiohttp's StreamReader has the same)."""

    def read(self, n: int = -1) -> Awaitable[bytes]: ...

    def iter_any(self) -> AsyncIterator[bytes]: ...


class Answer(Protocol):
    """What relay code reads from an API's answer: an ``Http1Response`` or
    aiohttp's ``ClientResponse`` (the slow path: HEAD, cloud mode)."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> BodyReader: ...

    async def read(self) -> bytes: ...

    def release(self) -> Any: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: Any) -> Any: ...


class _HeadAnswered(Exception):
    """Raised from llhttp's callback to end a HEAD answer after its head."""


class StaleStream(TunnelLost):
    """A kept-alive stream ended before any byte of the answer: safe to retry."""


def request_head(
    method: str, target: str, host: str, fields: Fields, length: int | None, *, chunked: bool
) -> bytes:
    """The request line and fields, as bytes, then the framing: chunked, or
    ``Content-Length: length`` (None: no body and no length field, as the
    caller sent it).

    *fields* go out exactly as given (``server.proxy.headers`` decided them).
    """
    parts = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target.encode(), host.encode())]
    parts += [b"%s: %s\r\n" % field for field in fields]
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif length is not None:
        parts.append(b"Content-Length: %d\r\n" % length)
    parts.append(b"\r\n")
    head = b"".join(parts)
    # One line break per line and no NUL; checked on the whole head at once
    # (C speed), the field named only when one is wrong.
    lines = len(parts) + 1
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\x00" in head:
        _refuse_bad_field(method, target, host, fields)
    return head


def _refuse_bad_field(method: str, target: str, host: str, fields: Fields) -> None:
    for name, value in fields:
        if any(c in name for c in b"\r\n\x00: ") or any(c in value for c in b"\r\n\x00"):
            shown = name.decode("latin-1")
            raise ValueError(f"header {shown!r}: line breaks and NUL are not allowed")
    raise ValueError("the request line holds a line break or NUL")


class AnswerMemo:
    """The last answer head a stream parsed, for an answer with a
    Content-Length body on a kept-alive connection: when the next answer
    starts with the very same bytes, its status, reason and fields are
    these (a list shared by those answers, never changed) and its body is
    read raw, exactly *length* bytes, without llhttp. Saves the parse and
    about a dozen Python callbacks per answer of a repeated request.

    ``derived`` is for the proxy: what it made of these fields (the
    caller's answer fields, ``server.proxy.exchange.answer_headers``), with
    what it made them for, reused while the head repeats."""

    __slots__ = ("derived", "head", "headers", "length", "reason", "status")

    def __init__(self, head: bytes, status: int, reason: str, headers: Fields, length: int) -> None:
        self.head = head
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length
        self.derived: tuple[Any, ...] | None = None


class Http1Response:
    """An API's answer: status and headers at once, the body as it arrives.

    Offers the part of aiohttp's ClientResponse the relay uses (``status``,
    ``reason``, ``headers``, ``content_length``, ``read()``, ``content.read(n)``,
    ``content.iter_any()``, ``release()``, ``async with``).
    """

    def __init__(
        self,
        stream: Http1Stream,
        status: int,
        reason: str,
        raw_headers: Fields,
        deadline: float | None,
        timeout_message: str,
        content_length: int | None = -1,
    ) -> None:
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers
        self._headers: CIMultiDictProxy[str] | None = None
        if content_length is not None and content_length < 0:
            length = get(raw_headers, b"content-length")
            content_length = int(length) if length is not None and length.isdigit() else None
        self.content_length = content_length
        # The stream's memo of this head (the proxy keeps what it derives there).
        self.memo: AnswerMemo | None = None
        self._stream = stream
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = deadline
        self._timeout_message = timeout_message
        self._released = False
        # The deadline's timer, made at the first wait for body and kept until
        # the answer ends (not one per wait: a bulk body waits once a packet);
        # _expired: it fired while nobody waited.
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        # While ``piped`` runs: where each piece of the body goes as it
        # arrives, and how many bytes went there.
        self._pipe: Callable[[bytes], None] | None = None
        self.piped_bytes = 0

    def __repr__(self) -> str:
        return f"<Http1Response {self.status} buffered={self._buffered}>"

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The fields as text (made on first use; the proxy itself reads ``raw_headers``)."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(
                CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw_headers)
            )
        return self._headers

    @property
    def content(self) -> Http1Response:
        return self

    # -- fed by the stream ---------------------------------------------------
    def _feed(self, data: bytes) -> None:
        pipe = self._pipe
        if pipe is not None:
            self.piped_bytes += len(data)
            pipe(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._stream.pause_reading()
        if self._waiter is not None:  # (asked here: a call fewer per piece)
            self._wake()

    def _finish(self) -> None:
        # Inlined in Http1Stream._complete_exchange: change both together.
        self._complete = True
        if self._timer is not None:
            self._stop_timer()
        if self._waiter is not None:
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._complete and self._error is None:
            self._error = exc
            if self._timer is not None:
                self._stop_timer()
            self._wake()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the caller --------------------------------------------------
    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        late: asyncio.Handle | None = None
        if self._deadline is not None:
            if self._expired:
                late = loop.call_soon(self._timed_out)  # past the deadline: as a timer due
            elif self._timer is None:
                self._timer = loop.call_at(self._deadline, self._deadline_passed)
        try:
            await waiter
        finally:
            self._waiter = None
            if late is not None:
                late.cancel()

    def _deadline_passed(self) -> None:
        """The deadline's timer fired: the answer fails if its reader waits
        for more of it now, else at its next wait (what it has is still read)."""
        self._timer = None
        if self._waiter is None:
            self._expired = True
        else:
            self._timed_out()

    def _timed_out(self) -> None:
        if self._complete:
            return  # the end arrived in the same loop turn; the stream is not ours now
        self._fail(UpstreamTimeout(self._timeout_message))
        self._stream.close()

    async def readany(self) -> bytes:
        """The body that has arrived (at least one piece); b"" at its end.

        Pieces that queued up while the caller was busy come back joined, up
        to MAX_JOIN bytes, so a fast API costs the caller fewer writes.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait()
        chunks = self._chunks
        data = chunks.popleft()
        if chunks and len(data) < MAX_JOIN:
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= MAX_JOIN:
                piece = chunks.popleft()
                parts.append(piece)
                size += len(piece)
            data = b"".join(parts)
        self._buffered -= len(data)
        if self._buffered < LOW_WATER and not self._complete:
            self._stream.resume_reading()
        return data

    @property
    def ended(self) -> bool:
        """All of the body has arrived and been taken."""
        return self._complete and not self._chunks

    def take(self) -> bytes:
        """All of the body that has arrived and waits here, joined (b"" when
        none waits); raises the answer's error once nothing waits."""
        chunks = self._chunks
        if not chunks:
            if self._error is not None:
                raise self._error
            return b""
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if not self._complete:
            self._stream.resume_reading()
        return data

    async def piped(self, write: Callable[[bytes], None]) -> None:
        """Hand each piece of the body that arrives to *write*, at once, in
        the stream's ``data_received``: no wake-up of the reader per piece
        (a bulk answer's packets cost the relay a future, a task step, and
        the reader's calls each, otherwise). Returns when the answer ended
        or failed, or ``unpipe`` was called (the caller's socket is full);
        pieces that arrive after that wait here (``take``). Nothing waits
        here when it starts, or it returns at once."""
        if self._chunks or self._complete or self._error is not None:
            return
        self._pipe = write
        try:
            await self._wait()
        finally:
            self._pipe = None

    def unpipe(self) -> None:
        """Stop ``piped``: what arrives now waits here (paused at HIGH_WATER)."""
        if self._pipe is not None:
            self._pipe = None
            self._wake()

    def arrived_whole(self, *, release: bool = False) -> bytes | None:
        """The whole body when all of it has arrived (a small answer, usually),
        joined at once; None while some is still to come. With *release*, a
        whole body also releases the answer (as ``release`` would: its
        stream is back in its pool already)."""
        if not self._complete:
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if release:
            self._released = True  # (as release() does; a complete answer has no timer)
            if self._timer is not None:
                self._stop_timer()
        return data

    async def read(self, n: int = -1) -> bytes:
        """The whole body (or, with *n* ≥ 0, up to *n* bytes of it)."""
        if n < 0 and (data := self.arrived_whole()) is not None:
            return data
        parts: list[bytes] = []
        size = 0
        while n < 0 or size < n:
            data = await self.readany()
            if not data:
                break
            if 0 <= n < size + len(data):
                keep = n - size
                self._chunks.appendleft(data[keep:])
                self._buffered += len(data) - keep
                data = data[:keep]
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while data := await self.readany():
            yield data

    def release(self) -> None:
        """Done with the answer: one still arriving closes the stream.

        (A complete answer has handed its stream back already; its unread
        rest sits in this object.)"""
        if self._released:
            return
        self._released = True
        if self._timer is not None:  # (asked here: no call per small answer)
            self._stop_timer()
        if not self._complete:
            self._stream.close()

    async def __aenter__(self) -> Http1Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _head_too_large(what: str) -> UpstreamHeadTooLarge:
    return UpstreamHeadTooLarge(f"the API's answer head has {what}; the relay refused it")


class Http1Stream(asyncio.Protocol):
    """One HTTP/1.1 connection to an API over a transport (a tunnel stream).

    ``on_idle`` is called when an exchange ended cleanly and the stream may
    carry another one.
    """

    # Channel data may reach data_received as a memoryview (llhttp reads any
    # buffer; raw-body pieces are only joined and written on).
    takes_views = True

    def __init__(self, on_idle: Callable[[Http1Stream], None]) -> None:
        self._on_idle = on_idle
        # The loop it runs in, once connected (the pool's clock reads it: one
        # C call fewer per request than asking for the running loop, which in
        # Python 3.11 is a getpid system call each time).
        self.bound_loop: asyncio.AbstractEventLoop | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._reading = True
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        # the exchange in progress
        self._head: asyncio.Future[Http1Response] | None = None
        self._response: Http1Response | None = None
        self._headers: Fields = []
        self._head_bytes = 0  # of the head being read; -1 once it is complete
        # Of a Content-Length body: what llhttp has still to see (-1: no such
        # body), then, in raw mode, what is still to come without llhttp.
        self._body_left = -1
        self._raw = False
        self._head_error: RelayError | None = None
        self._reason = ""
        self._interim = False
        self._head_only = False  # the request was HEAD: the answer has no body
        self._keep_alive = True
        # The head of the last answer parsed, while one may come again whole.
        self._memo: AnswerMemo | None = None
        self._parsed: Http1Response | None = None  # by llhttp, from this read
        # llhttp stopped inside a body (raw mode): a new parser for the next answer.
        self._parser_midway = False
        self._received = False
        self._sending = False
        self._writer: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        self._timeout_message = ""
        # One timer per stream for the answer's head, moved on only when it
        # fires early: a request moves the deadline, not the timer (cheaper
        # than a timer per request).
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_timer_at = 0.0
        self.exchanges = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_deadline: float | None = None  # loop time; None while it carries a request
        self.owner: Any = None  # what the pool files this stream under

    def __repr__(self) -> str:
        return f"<Http1Stream exchanges={self.exchanges} closed={self._closed}>"

    @property
    def closed(self) -> bool:
        # Inlined in StreamPool._take (a property is a call 3.11 cannot
        # inline): change both together.
        return self._closed or self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        self._closed = True
        self._stop_head_timer()
        if self._transport is not None:
            self._transport.close()

    def pause_reading(self) -> None:
        if self._reading and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading and self._transport is not None:
            self._reading = True
            self._transport.resume_reading()

    # -- asyncio.Protocol ------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the stream runs in (asked once, not per request)."""
        loop = self.bound_loop
        if loop is None:
            loop = self.bound_loop = asyncio.get_running_loop()
        return loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A tunnel stream's ChannelTransport, or a TCP transport (cloud mode;
        # uvloop's is no asyncio.Transport subclass).
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.bound_loop = asyncio.get_running_loop()
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self._raw:
            self._raw_body(data)
            return
        if self._head is None:
            self._lost(TunnelProtocolError("the API sent bytes nobody asked for"))
            return
        self._received = True
        reading_head = self._head_bytes >= 0
        fresh = self._head_bytes == 0 and not self._head_only
        if fresh:
            memo = self._memo
            if memo is not None and data[: len(memo.head)] == memo.head:
                self._answer_from_memo(memo, data)
                return
            self._parsed = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if self._head_error is not None:
                self._lost(self._head_error)
                return
            if not isinstance(exc.__context__, _HeadAnswered):
                self._lost(TunnelProtocolError(f"the API's answer is not valid HTTP/1.1: {exc}"))
                return
            self._parser = httptools.HttpResponseParser(self)
            self._complete_exchange(self._keep_alive)
        except httptools.HttpParserUpgrade:
            self._lost(TunnelProtocolError("the API switched protocols; only HTTP/1.1 is relayed"))
        except httptools.HttpParserError as exc:
            self._lost(TunnelProtocolError(f"the API's answer is not valid HTTP/1.1: {exc}"))
        else:
            if (
                self._body_left > 0
                and self._response is not None
                and get(self._headers, b"transfer-encoding") is None
            ):
                # The rest of a Content-Length body comes in raw: counted and
                # passed on as it arrives, neither parsed nor copied by llhttp.
                self._raw = True
                self._parser_midway = True
                if fresh:
                    self._remember(data)
            elif reading_head and self._head_bytes >= 0:
                # Still in the head: llhttp keeps a header that has no end yet
                # in memory, so count what has arrived, not only whole headers.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_ANSWER_HEAD:
                    self._lost(_head_too_large(f"more than {MAX_ANSWER_HEAD} bytes"))
            elif fresh:
                self._remember(data)

    def _remember(self, data: bytes) -> None:
        """Keep the head of the answer llhttp just parsed from the start of
        *data* (``AnswerMemo``), if it is one a repeat may skip the parse for:
        a final answer with a Content-Length body, kept alive, not chunked."""
        response, self._parsed = self._parsed, None
        if (
            response is None
            or not response.content_length
            or response.status in (204, 304)
            or not self._keep_alive
            or self._closed
            or get(response.raw_headers, b"transfer-encoding") is not None
        ):
            return
        start = bytes(data[:MAX_MEMO_HEAD])
        end = start.find(b"\r\n\r\n")
        if end < 0 or not start.startswith(b"HTTP/1.1 %d " % response.status):
            return
        self._memo = response.memo = AnswerMemo(
            start[: end + 4],
            response.status,
            response.reason,
            response.raw_headers,
            response.content_length,
        )

    def _answer_from_memo(self, memo: AnswerMemo, data: bytes) -> None:
        """An answer whose head is the remembered one: no parse; its body
        comes in raw (``_raw_body``), exactly the length that head announced."""
        self._head_bytes = -1
        response = Http1Response(
            self,
            memo.status,
            memo.reason,
            memo.headers,
            self._deadline,
            self._timeout_message,
            memo.length,
        )
        response.memo = memo
        self._response = response
        self._body_left = memo.length
        self._keep_alive = True
        self._raw = True
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)
        rest = data[len(memo.head) :]
        if rest:
            self._raw_body(rest)

    def eof_received(self) -> bool:
        self._end_of_lengthless_answer()
        self._lost(None)
        return False

    def _end_of_lengthless_answer(self) -> None:
        """An answer without length or chunking ends where the stream does."""
        response = self._response
        if response is not None and not response._complete and self.content_length_unknown:
            response._finish()
            self._head = None
            self._response = None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            # The EOF may come folded into the close (asyncssh does so while
            # reading is paused): a length-less answer ends here too.
            self._end_of_lengthless_answer()
        self._lost(exc)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- llhttp callbacks ----------------------------------------------------
    def on_message_begin(self) -> None:
        if self._head is None:
            # More than one answer to one request: the stream is out of step.
            raise TunnelProtocolError("the API sent an answer nobody asked for")
        self._headers = []
        self._reason = ""
        self._head_bytes = 0

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        if size > MAX_ANSWER_FIELD:
            self._refuse_head(f"a header of {size} bytes (at most {MAX_ANSWER_FIELD})")
        elif len(self._headers) >= MAX_ANSWER_HEADERS:
            self._refuse_head(f"more than {MAX_ANSWER_HEADERS} headers")
        self._headers.append((name, value))

    def _refuse_head(self, what: str) -> None:
        # Raised through llhttp, which stops parsing; data_received reports it.
        self._head_error = _head_too_large(what)
        raise self._head_error

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True  # 100 Continue and friends: the answer follows
            return
        response = Http1Response(
            self, status, self._reason, self._headers, self._deadline, self._timeout_message
        )
        self._response = self._parsed = response
        self._body_left = -1
        if response.content_length and not self._head_only and status not in (204, 304):
            self._body_left = response.content_length
            self._keep_alive = self._parser.should_keep_alive()
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)
        if self._head_only:
            # llhttp cannot be told that a response's length describes no
            # body: stop it here; data_received ends the exchange.
            self._keep_alive = self._parser.should_keep_alive()
            raise _HeadAnswered

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            if self._body_left > 0:
                self._body_left -= len(body)
            self._response._feed(body)

    def _raw_body(self, data: bytes) -> None:
        """Bytes of a Content-Length body after the read that held its head:
        exactly the length announced goes to the answer; a byte past it is
        an API out of step (it would be the head of an answer nobody asked for)."""
        response = self._response
        assert response is not None
        left = self._body_left
        if len(data) < left:
            self._body_left = left - len(data)
            response._feed(data)
            return
        extra = len(data) > left
        if left:
            # _feed without its call: the exchange completes below, which
            # wakes a reader and resumes reading (so no high-water pause).
            piece = data[:left] if extra else data
            response._chunks.append(piece)
            response._buffered += len(piece)
        self._raw = False
        self._body_left = -1
        if self._parser_midway:
            # llhttp stopped in the middle of the body: a new one for the next answer.
            self._parser_midway = False
            self._parser = httptools.HttpResponseParser(self)
        self._complete_exchange(self._keep_alive and not extra)
        if extra:
            self._lost(TunnelProtocolError("the API sent bytes nobody asked for"))

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete_exchange(self._parser.should_keep_alive())

    def _complete_exchange(self, keep_alive: bool) -> None:
        response, self._response, self._head = self._response, None, None
        if response is not None:
            # response._finish, inline (a call per answer).
            response._complete = True
            if response._timer is not None:
                response._stop_timer()
            if response._waiter is not None:
                response._wake()
        self.exchanges += 1
        if not self._reading:
            self.resume_reading()  # the rest of the body waits in the answer, not the stream
        transport = self._transport  # self.closed, without a call per answer
        if (
            self._sending
            or not keep_alive
            or self._closed
            or transport is None
            or transport.is_closing()
        ):
            self._stop_writer()  # answered before the body was sent whole: no one needs it
            self.close()
        else:
            self._on_idle(self)

    @property
    def content_length_unknown(self) -> bool:
        response = self._response
        return (
            response is not None
            and response.content_length is None
            and b"chunked" not in (get(response.raw_headers, b"transfer-encoding") or b"").lower()
        )

    # -- the exchange ------------------------------------------------------------
    def _stop_writer(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()

    def _lost(self, exc: BaseException | None) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._closed = True
        self._stop_head_timer()
        self._raw = False  # whatever still comes is nobody's
        self._stop_writer()
        if self._head is None:
            return
        if isinstance(exc, RelayError):
            error: RelayError = exc
        elif not self._received and self.exchanges:
            error = StaleStream("the kept-alive stream closed before the API answered")
        elif self._response is None:
            error = TunnelLost("the API closed the connection without answering")
        else:
            error = TunnelLost("the answer was cut off before its end")
        head, response = self._head, self._response
        self._head = self._response = None
        if not head.done():
            head.set_exception(error)
            head.exception()  # retrieved here; the caller may be gone already
        if response is not None:
            response._fail(error)

    async def _drained(self) -> None:
        while self._write_paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain
        if self.closed:
            raise TunnelLost("the stream closed while the request was being sent")

    async def _send_body(self, body: Body, chunked: bool) -> None:
        assert self._transport is not None
        chunks = body.iter_any() if isinstance(body, aiohttp.StreamReader) else body
        assert chunks is not None
        assert not isinstance(chunks, bytes)
        try:
            async for chunk in chunks:
                if chunk:
                    self._transport.write(
                        b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
                    )
                    await self._drained()
            if chunked:
                self._transport.write(b"0\r\n\r\n")
        finally:
            self._sending = False

    def _time_head(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Have the head timer fire at *deadline* at the latest."""
        timer = self._head_timer
        if timer is not None:
            if self._head_timer_at <= deadline:
                return  # it fires earlier, and moves itself on to the deadline then
            timer.cancel()
        self._head_timer_at = deadline
        self._head_timer = loop.call_at(deadline, self._head_due)

    def _head_due(self) -> None:
        """The head timer fired: fail the exchange whose head is late, if any."""
        self._head_timer = None
        head, deadline = self._head, self._deadline
        if head is None or head.done() or deadline is None:
            return  # answered (or idle): the next exchange sets the timer again
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._time_head(loop, deadline)
            return
        head.set_exception(UpstreamTimeout(self._timeout_message))
        self.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    async def exchange(
        self,
        head: bytes,
        body: Body,
        deadline: float | None,
        timeout_message: str,
        *,
        chunked: bool = False,
        head_only: bool = False,
    ) -> Http1Response:
        """Send one request; return the answer once its head has arrived.

        A streamed *body* goes in chunked framing if *chunked* (the head says
        so); *head_only* (a HEAD request) means the answer has no body,
        whatever its length field says.
        """
        head_future = self.begin(
            head, body, deadline, timeout_message, chunked=chunked, head_only=head_only
        )
        try:
            return await head_future
        except BaseException:
            self.close()
            raise
        finally:
            writer = self._writer
            if writer is not None and not writer.done() and self.closed:
                writer.cancel()

    def begin(
        self,
        head: bytes,
        body: Body,
        deadline: float | None,
        timeout_message: str,
        *,
        chunked: bool = False,
        head_only: bool = False,
    ) -> asyncio.Future[Http1Response]:
        """Send one request without waiting: the future gets the answer once
        its head has arrived, or the exchange's error (``UpstreamTimeout``
        when no head came by *deadline*); whoever waits closes the stream
        when it fails (as ``exchange`` does)."""
        transport = self._transport  # self.closed and self.loop, without two calls
        if self._closed or transport is None or transport.is_closing() or self._head is not None:
            raise StaleStream("the stream is no longer usable")
        loop = self.bound_loop or self.loop
        self._head = loop.create_future()
        self._received = False
        self._head_bytes = 0
        self._head_error = None
        self._head_only = head_only
        self._keep_alive = True
        self._body_left = -1
        self._deadline = deadline
        self._timeout_message = timeout_message
        self._writer = None
        if body is None:
            transport.write(head)
        elif isinstance(body, bytes):
            transport.write(head + body)
        else:
            self._sending = True
            transport.write(head)
            writer = self._writer = loop.create_task(self._send_body(body, chunked))
            writer.add_done_callback(self._body_sent)
        # _time_head, called only when the timer must move (it fires
        # earlier than most deadlines and moves itself on then).
        if deadline is not None and (self._head_timer is None or self._head_timer_at > deadline):
            self._time_head(loop, deadline)
        return self._head

    def _body_sent(self, writer: asyncio.Task[None]) -> None:
        """A body that could not be sent whole fails the exchange and the stream."""
        if writer.cancelled():
            self.close()
            return
        exc = writer.exception()
        if exc is None:
            return
        if not isinstance(exc, RelayError):
            exc = TunnelLost(f"the request body could not be sent: {type(exc).__name__}")
        self._lost(exc)
