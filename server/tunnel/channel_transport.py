"""asyncio transports over SSH channels, so aiohttp can run on a tunnel stream.

A relay request to an internal API runs on one SSH channel to the agent: no
socket at all. This module bridges asyncssh's session callbacks to an asyncio
protocol (aiohttp's ResponseHandler, or asyncio's SSLProtocol for HTTPS), and
performs the CONNECT handshake that opens each stream. It is the only place
that knows how asyncssh channels and asyncio transports differ.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

import asyncssh

from server.errors import (
    AgentBusy,
    DestinationDenied,
    RateLimited,
    RelayError,
    TunnelLost,
    TunnelProtocolError,
    UpstreamConnectFailed,
    UpstreamTimeout,
)
from server.tunnel.window_share import StreamClass, WindowShare
from sluice import ssh_tuning
from sluice.connect import (
    ConnectProtocolError,
    ConnectResponse,
    Target,
    find_head_end,
    format_connect_request,
    parse_connect_response,
    parse_error_body,
)
from sluice.window_tuning import ShortWindow, WindowBudget, WindowTuner

_AGENT_ERRORS: dict[int, type[RelayError]] = {
    429: RateLimited,
    503: AgentBusy,
    403: DestinationDenied,
    502: UpstreamConnectFailed,
    504: UpstreamTimeout,
}


def feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver *data* to a plain or buffered asyncio protocol."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        # Not typing.cast: a function call, for every piece of every answer.
        protocol.data_received(data)  # type: ignore[attr-defined]


class ChannelTransport(asyncio.Transport):
    """An asyncio transport whose bytes travel on one SSH channel."""

    def __init__(
        self,
        chan: asyncssh.SSHTCPChannel[bytes],
        session: ChannelSession,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(extra)
        self._chan = chan
        self._session = session
        self._reading = True
        # The channel's own method: the stream above asks three times a
        # request, and a method of ours around it was a Python call each time.
        self.is_closing = chan.is_closing  # type: ignore[method-assign]
        if ssh_tuning.channel_write_takes_any():
            # And its own write, which takes what ``write`` below does (a
            # Python call per request fewer: the stream writes each request).
            self.write = chan.write  # type: ignore[method-assign]

    def __repr__(self) -> str:
        state = "closing" if self._chan.is_closing() else "open"
        return f"<ChannelTransport {self.get_extra_info('peername')} {state}>"

    # -- asyncio.BaseTransport ---------------------------------------------
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Attach *protocol*; from now on the channel's events go to it."""
        self._session.attach(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol = self._session.protocol
        assert protocol is not None
        return protocol

    def is_closing(self) -> bool:
        """Whether the channel is closing (each instance has the channel's own method)."""
        return self._chan.is_closing()

    def close(self) -> None:
        self._chan.close()

    # -- asyncio.ReadTransport ---------------------------------------------
    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._session.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._chan.resume_reading()

    # -- asyncio.WriteTransport --------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        # (The channel's own write instead, on each instance, when that
        # takes any bytes-like data: ``ssh_tuning.channel_write_takes_any``.)
        if data:
            self._chan.write(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._chan.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._chan.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._chan.set_write_buffer_limits(high, low)

    def abort(self) -> None:
        self._chan.abort()

    def _force_close(self, exc: BaseException | None) -> None:
        # asyncio's SSLProtocol calls this private method on fatal TLS errors.
        self._chan.abort()


class ChannelSession(asyncssh.SSHTCPSession[bytes]):
    """Receives a channel's events; hands them to the current asyncio protocol.

    Until the agent has answered the CONNECT request, the session collects its
    answer (head, and the short JSON body of a refusal) itself; afterwards
    every event goes to the protocol on top.
    """

    def __init__(
        self, share: WindowShare | None = None, tuner: WindowTuner | ShortWindow | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self._share = share
        self._tuner = tuner
        self._class = StreamClass()
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[tuple[ConnectResponse, int]] = loop.create_future()
        self._head: tuple[ConnectResponse, int] | None = None
        self._protocol: asyncio.BaseProtocol | None = None
        # The protocol takes data_received (not get_buffer/buffer_updated):
        # fed inline, per packet, without feed()'s call and isinstance.
        self._plain = False
        # A protocol that takes the channel over once the CONNECT answer says
        # yes (pipelined: its request went out before the answer came back).
        self._pending: asyncio.BaseProtocol | None = None
        self._late: asyncio.TimerHandle | None = None
        self._lost = False
        self._closed_callbacks: list[Callable[[], None]] = []

    def on_closed(self, callback: Callable[[], None]) -> None:
        """Call *callback* once the channel has closed (now, if it already has)."""
        if self._lost:
            callback()
        else:
            self._closed_callbacks.append(callback)

    @property
    def protocol(self) -> asyncio.BaseProtocol | None:
        return self._protocol

    @property
    def usable(self) -> bool:
        """Open, and no CONNECT asked on it yet (a spare channel still good to use)."""
        return (
            not self._lost
            and self._chan is not None
            and not self._chan.is_closing()
            and not self._answer.done()
            and self._pending is None
            and self._protocol is None
        )

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._plain = not isinstance(protocol, asyncio.BufferedProtocol)
        if self._chan is not None and (
            isinstance(protocol, asyncio.BufferedProtocol)
            or getattr(protocol, "takes_views", False)
        ):
            # It copies what it is fed (TLS), or takes any bytes-like object
            # (an Http1Stream): the channel's data may come as views into
            # each decrypted packet, one copy fewer (sluice.ssh_receive).
            ssh_tuning.deliver_views(self._chan)

    def pause_reading(self) -> None:
        """The protocol on top pauses reading: what arrives now waits in the
        channel's buffer, and counts against its window (the tuner's)."""
        if self._chan is None:
            return
        if self._tuner is not None:
            self._tuner.pause_reading(self._chan)
        else:
            self._chan.pause_reading()

    # -- asyncssh callbacks ------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        chan = self._chan
        if chan is not None:
            tuner = self._tuner
            # A window grown to a long link is not shared: shrinking it there
            # would halve the download (the latency it buys is a loopback one).
            # Nor while data that came in during a pause waits: the tuner makes
            # the top-ups then, counting it. (The tuner tells: neither grown
            # nor held back.)
            # (A ShortWindow wants feeding only while held back.)
            shareable = tuner is None or not tuner.feed or tuner.received(chan, len(data))
            if shareable and self._share is not None:
                self._share.received(self._class, chan, len(data))
        protocol = self._protocol
        if protocol is not None:
            if self._plain:
                protocol.data_received(data)  # type: ignore[attr-defined]
            else:
                feed(protocol, data)
            return
        self._buffer += data
        if self._answer.done():
            return
        try:
            if self._head is None:
                end = find_head_end(self._buffer)
                if end < 0:
                    return
                self._head = (parse_connect_response(bytes(self._buffer[:end])), end)
        except ConnectProtocolError as exc:
            self._settle(
                error=TunnelProtocolError(f"bad CONNECT answer from the agent: {exc.reason}")
            )
            return
        response, end = self._head
        if response.status == 200 or len(self._buffer) - end >= response.content_length:
            self._settle(head=self._head)

    def _end_of_answer(self, why: str) -> None:
        if self._answer.done():
            return
        if self._head is not None:  # a refusal whose body was cut short
            self._settle(head=self._head)
        else:
            self._settle(error=TunnelLost(why))

    def _settle(
        self, *, head: tuple[ConnectResponse, int] | None = None, error: RelayError | None = None
    ) -> None:
        """The CONNECT answer is complete (or will never be): wake the waiter,
        or hand the channel to the pipelined protocol at once, in this very
        callback, so no data, EOF or close of the channel overtakes it."""
        if error is not None:
            self._answer.set_exception(error)
            self._answer.exception()  # a spare's answer has no waiter: retrieved here
        else:
            assert head is not None
            self._answer.set_result(head)
        if self._pending is not None:
            self._hand_over()

    def _hand_over(self) -> None:
        protocol, self._pending = self._pending, None
        assert protocol is not None
        if self._late is not None:
            self._late.cancel()
            self._late = None
        try:
            rest = self._answer_rest()
        except RelayError as exc:
            # Refused, cut, or late: the request that went with the CONNECT
            # never reached an API (the agent drops what follows a refused
            # CONNECT); the exchange on *protocol* fails with the refusal.
            if self._chan is not None:
                self._chan.abort()
            protocol.connection_lost(exc)
            return
        self.attach(protocol)
        if rest:
            feed(protocol, rest)

    def eof_received(self) -> bool:
        if self._protocol is not None:
            return bool(cast(asyncio.Protocol, self._protocol).eof_received())
        self._end_of_answer("the agent closed the stream before answering CONNECT")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._tuner is not None:
            self._tuner.release()
        self._end_of_answer(f"the tunnel closed before the agent answered CONNECT: {exc}")
        if self._protocol is not None:
            lost = TunnelLost(f"the tunnel went away: {exc}") if exc is not None else None
            self._protocol.connection_lost(lost)
        callbacks, self._closed_callbacks = self._closed_callbacks, []
        for callback in callbacks:
            callback()

    def pause_writing(self) -> None:
        protocol = self._protocol if self._protocol is not None else self._pending
        if protocol is not None:
            protocol.pause_writing()

    def resume_writing(self) -> None:
        protocol = self._protocol if self._protocol is not None else self._pending
        if protocol is not None:
            protocol.resume_writing()

    async def connect_answer(self) -> bytes:
        """Wait for the agent's answer; return any bytes that followed a 200.

        Raises the RelayError matching a refusal (403, 502, 504).
        """
        await self._answer
        return self._answer_rest()

    def pipeline(
        self, protocol: asyncio.BaseProtocol, deadline: float | None, late_message: str
    ) -> None:
        """Hand the channel to *protocol* once the agent's CONNECT answer is a
        200 (the bytes after it included); on a refusal, call its
        ``connection_lost`` with the matching RelayError instead. No answer by
        *deadline* (loop time) is an UpstreamTimeout with *late_message*."""
        self._pending = protocol
        if self._answer.done():
            self._hand_over()
        elif deadline is not None:
            loop = asyncio.get_running_loop()
            self._late = loop.call_at(deadline, self._answer_late, late_message)

    def _answer_late(self, message: str) -> None:
        self._late = None
        if not self._answer.done():
            self._settle(error=UpstreamTimeout(message))

    def _answer_rest(self) -> bytes:
        """The bytes after a 200 answer; raises the refusal's RelayError."""
        response, end = self._answer.result()
        rest = bytes(self._buffer[end:])
        self._buffer.clear()
        if response.status == 200:
            return rest
        error, message = parse_error_body(rest[: response.content_length])
        cls = _AGENT_ERRORS.get(response.status, TunnelProtocolError)
        raise cls(message or f"the agent answered {response.status} ({error})")


Channel = tuple[asyncssh.SSHTCPChannel[bytes], "ChannelSession"]


async def open_channel(
    ssh: asyncssh.SSHServerConnection,
    listen: tuple[str, int],
    *,
    window: int,
    max_pktsize: int,
    share: WindowShare | None = None,
    budget: WindowBudget | None = None,
) -> Channel:
    """Open a channel to the agent (one round trip); no CONNECT asked yet.

    Raises TunnelLost if the agent refuses it or the tunnel is gone.
    """
    session: ChannelSession
    # Sluice's own windows (sharing, tuning) only where asyncssh's window
    # fields passed the tweaks' shape check; else asyncssh's fixed windows.
    adjustable = ssh_tuning.windows_adjustable()
    try:
        chan, session = await ssh.create_connection(  # type: ignore[assignment]
            lambda: ChannelSession(
                share if adjustable else None,
                (ShortWindow(window) if budget.short else WindowTuner(budget, window))
                if budget and adjustable
                else None,
            ),
            listen[0],
            listen[1],
            "relay",
            0,
            window=window,
            max_pktsize=max_pktsize,
        )
    except asyncssh.ChannelOpenError as exc:
        raise TunnelLost(f"the agent refused a new stream: {exc.reason}") from exc
    except (asyncssh.Error, OSError) as exc:
        raise TunnelLost(f"the tunnel is gone: {exc}") from exc
    return chan, session


def _transport(channel: Channel, target: Target) -> ChannelTransport:
    chan, session = channel
    return ChannelTransport(
        chan, session, {"peername": (target.host, target.port), "sockname": None, "socket": None}
    )


def _ask(channel: Channel, target: Target) -> None:
    chan, session = channel
    if not session.usable:
        chan.abort()
        raise TunnelLost("the stream closed before it was used")
    chan.write(format_connect_request(target))


async def request_connect(channel: Channel, target: Target) -> tuple[ChannelTransport, bytes]:
    """Ask the agent to CONNECT to *target* and wait for its answer.

    Returns the transport (no protocol attached yet) and any bytes that
    arrived after the agent's 200. Raises a RelayError subclass for every
    refusal; the caller bounds the time.
    """
    _ask(channel, target)
    chan, session = channel
    try:
        rest = await session.connect_answer()
    except BaseException:
        chan.abort()
        raise
    return _transport(channel, target), rest


def pipeline_connect(
    channel: Channel,
    target: Target,
    protocol: asyncio.BaseProtocol,
    *,
    deadline: float | None,
    late_message: str,
) -> ChannelTransport:
    """Ask the agent to CONNECT to *target* and let *protocol* write at once.

    *protocol* gets ``connection_made`` now: what it writes goes out right
    behind the CONNECT request, in the same round trip (the agent keeps it
    for the API once connected, and drops it if it refuses). Its
    ``data_received`` starts after the agent's 200; a refusal (or no answer
    by *deadline*) reaches it as ``connection_lost`` with the RelayError the
    waiting path would raise. Raises TunnelLost (nothing sent) if the
    channel closed before it was used.
    """
    _ask(channel, target)
    transport = _transport(channel, target)
    protocol.connection_made(transport)
    channel[1].pipeline(protocol, deadline, late_message)
    return transport


async def start_tls(
    transport: ChannelTransport,
    protocol: asyncio.BaseProtocol,
    sslcontext: ssl.SSLContext,
    server_hostname: str,
    *,
    handshake_timeout: float | None = None,
) -> asyncio.Transport:
    """Run TLS inside *transport* (end to end with the API) and attach *protocol*.

    Uses asyncio's own SSLProtocol directly, since loop.start_tls() only accepts
    the loop's own transport types under uvloop.
    """
    tls, waiter = tls_protocol(protocol, sslcontext, server_hostname, handshake_timeout)
    transport.set_protocol(tls)
    tls.connection_made(transport)
    return await tls_ready(transport, tls, waiter)


def tls_protocol(
    protocol: asyncio.BaseProtocol,
    sslcontext: ssl.SSLContext,
    server_hostname: str,
    handshake_timeout: float | None = None,
) -> tuple[asyncio.BufferedProtocol, asyncio.Future[None]]:
    """A TLS client protocol carrying *protocol*, and the future its handshake
    ends (or fails) in. Its ``connection_made`` sends the ClientHello: given
    to ``pipeline_connect``, the hello goes out right behind the CONNECT."""
    from asyncio import sslproto

    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = sslproto.SSLProtocol(
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side=False,
        server_hostname=server_hostname,
        ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]
    )
    return tls, waiter


async def tls_ready(
    transport: ChannelTransport, tls: asyncio.BufferedProtocol, waiter: asyncio.Future[None]
) -> asyncio.Transport:
    """Wait for *tls*'s handshake; returns the transport its protocol writes to.

    A refused CONNECT under it fails the handshake with the refusal's RelayError.
    """
    try:
        await waiter
    except BaseException:
        transport.abort()
        raise
    return cast(asyncio.Transport, tls._app_transport)  # type: ignore[attr-defined]
