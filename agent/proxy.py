"""One tunnel stream on the agent: CONNECT, allowlist, connect, then splice bytes.

The relay opens an SSH channel per upstream TCP connection and sends a
CONNECT request first. The agent checks the destination against its
allowlist (names before resolution, addresses after), connects with a
timeout, answers, then joins the channel and the TCP connection at the
protocol level: data is handed straight from one transport to the other, and
each side's flow control pauses the other, so memory stays flat whatever the
body size.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import asyncssh
import structlog

from agent.allowlist import Allowlist, Verdict
from agent.stats import ProxyStats
from sluice import ssh_framed, ssh_tuning, sshconfig
from sluice.connect import (
    ConnectProtocolError,
    Target,
    find_head_end,
    format_connect_response,
    parse_connect_request,
)
from sluice.half_close import half_close
from sluice.ratelimit import TokenBucket
from sluice.ssh_reads import ReadBuffer
from sluice.window_tuning import (
    FixedWindow,
    ShortWindow,
    WindowBudget,
    WindowTuner,
    window_tuner,
)

log = structlog.get_logger("sluice.agent.proxy")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# How much one read from an API may take: one full SSH packet, which is also
# the relay's whole receive window for an answer.
UPSTREAM_READ = sshconfig.CHANNEL_MAX_PKTSIZE
# A window with less left than this gets a whole buffer's read, not its own.
_MIN_WINDOW_READ = 32 * 1024


class UpstreamReads:
    """The buffer every API connection of one tunnel reads into.

    When: a read lands here and is handed to its channel in the same call,
    so one buffer serves them all. Its size is one full SSH packet: with
    reads of the event loop's own size (256,000 bytes under uvloop) against a
    256 KiB window, every other packet of a bulk answer was a runt of the
    6 KiB left over. A read lands inside the packet it leaves in
    (``sluice.ssh_framed.FrameBuffer``): sent from there when the channel may
    send it at once, else written to the channel, which copies it.
    """

    def __init__(self, size: int = UPSTREAM_READ) -> None:
        self.frames = ssh_framed.FrameBuffer(size)
        self.view = self.frames.data


@dataclass(frozen=True)
class ProxyContext:
    allowlist: Allowlist
    connect_timeout: float
    stats: ProxyStats
    max_streams: int = 1024
    new_streams: TokenBucket = field(default_factory=lambda: TokenBucket(1000.0))
    idle_timeout: float = 900.0
    # How far the streams' receive windows may grow in total (request bodies).
    window_budget: WindowBudget = field(default_factory=lambda: WindowBudget(0))
    receive_window: int = sshconfig.AGENT_RECEIVE_WINDOW
    # What the streams' API connections read into (one read at a time).
    upstream_reads: UpstreamReads = field(default_factory=UpstreamReads)
    # What the tunnels' SSH connections read into (sluice.ssh_reads).
    ssh_reads: ReadBuffer = field(default_factory=ReadBuffer)
    # Swappable for tests that need a fixed resolver; the default is the OS's.
    resolve: Callable[[str, int], Awaitable[list[IPAddress]]] | None = None


def _rule_for(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


class _Refusal(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class _Upstream(asyncio.BufferedProtocol):
    """The TCP connection to the internal API; mirrors into the channel."""

    def __init__(self, stream: ChannelProxy, reads: UpstreamReads) -> None:
        self._stream = stream
        self._reads = reads
        self.transport: asyncio.Transport | None = None
        # The stream's own, bound here: the loop calls it for each read, one
        # Python call per answer fewer than a method passing it on. (The
        # loop takes it from the protocol as the transport is made.)
        self.buffer_updated = stream.upstream_data  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next read from the API lands, and so how much it may take.

        As much as the channel's window lets go at once, so one read leaves
        in one packet: a read larger than the window would leave its rest
        queued, and that rest would go out as a packet of its own once the
        relay grants more. A window nearly used up is not worth a read of its
        own: a whole buffer is read, what the window allows leaves at once,
        and the rest waits, reading paused, for the relay's next grant.
        (Asked of the stream's channel here, not through a method of the
        stream: a Python call per read.)

        Not paused the moment a send uses the window up (so that no read
        lands with the window at zero and is copied into the channel's
        buffer): tried on branch issue-26e, every packet then paused and
        resumed the API's reads (epoll_ctl through libuv's io_uring), and a
        64 MiB download without sendfile cost the agent 0.95 ms/MiB against
        0.66 (median of 5, quiet machine); the copies it saved are less.
        Paused once per grant instead (below 32 KiB left, branch issue-28b):
        agent CPU per MiB about 4% lower, MB/s within noise, and under load
        a read still landed with no window now and then; reverted.
        """
        chan = self._stream._chan
        if chan is None or not ssh_tuning.APPLIED.names:
            return self._reads.view
        # ssh_tuning.send_window, inline (a Python call per read): the
        # tweaks are on, so asyncssh's field passed their shape check.
        window = chan._send_window
        if window < _MIN_WINDOW_READ:
            return self._reads.view
        return self._reads.view[: min(window, UPSTREAM_READ)]

    def buffer_updated(self, nbytes: int) -> None:
        # (Bound to the stream's upstream_data in __init__; this is its shape.)
        self._stream.upstream_data(nbytes)

    def eof_received(self) -> bool:
        self._stream.upstream_eof()
        return True  # keep our sending half open until the channel is done

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream.upstream_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_channel()

    def resume_writing(self) -> None:
        self._stream.resume_channel()


class ChannelProxy(asyncssh.SSHTCPSession[bytes]):
    """Handles one forwarded channel from the relay."""

    def __init__(self, ctx: ProxyContext, short: bool = False) -> None:
        """*short*: the channel's connection runs over a short link
        (``sluice.window_tuning.short_link``): its window stays as it starts."""
        self._ctx = ctx
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._tuner: WindowTuner | ShortWindow | FixedWindow = window_tuner(
            ctx.window_budget, ctx.receive_window, short
        )
        self._head = bytearray()
        self._target: Target | None = None
        self._upstream: _Upstream | None = None
        self._opening: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._outcome = "incomplete"
        self._bytes_up = 0
        self._bytes_down = 0
        self._peer_address: str | None = None
        self._chan_eof = False
        self._upstream_eof = False
        self._finished = False
        # Counted as a stream once its CONNECT head is in: until then the
        # channel may be the relay's spare, opened ahead of need.
        self._counted = False
        self._refused = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_since = time.monotonic()
        self._bytes_at_check = 0
        self._reads_reused = False

    def __repr__(self) -> str:
        return f"<ChannelProxy {self._target.authority() if self._target else '?'} {self._outcome}>"

    # -- channel side ------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan
        # Its data is only written on to the API or gathered into the CONNECT
        # head: it may come as views into each decrypted packet (one copy fewer).
        ssh_tuning.deliver_views(chan)
        # Whether the channel copies what it is written before write()
        # returns (asyncssh checked at start); else each read is copied here.
        self._reads_reused = ssh_tuning.channel_write_copies()
        # Read the API only when the last read has gone out whole: what the
        # API writes meanwhile waits in the socket and leaves in one packet,
        # not in one packet per queued read.
        chan.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        tuner = self._tuner
        if tuner.feed and self._chan is not None:  # (a ShortWindow's only while held back)
            tuner.received(self._chan, len(data))
        if self._upstream is not None and self._upstream.transport is not None:
            self._bytes_up += len(data)
            self._ctx.stats.bytes_up += len(data)
            self._upstream.transport.write(data)
            return
        if self._refused:
            return  # pipelined behind a refused CONNECT: nobody's
        if self._opening is not None:
            # Bytes sent before our answer (pipelined); kept for the upstream.
            self._head += data
            return
        self._head += data
        try:
            end = find_head_end(self._head)
            if end < 0:
                return
            self._count()
            target = parse_connect_request(bytes(self._head[:end]))
        except ConnectProtocolError as exc:
            self._refuse(_Refusal(400, "bad_request", f"malformed CONNECT request: {exc.reason}"))
            return
        del self._head[:end]
        self._target = target
        if self._ctx.stats.streams_open > self._ctx.max_streams:
            self._refuse(
                _Refusal(
                    503,
                    "agent_busy",
                    f"this agent has {self._ctx.max_streams} streams open "
                    "(its max_streams setting)",
                )
            )
            return
        if not self._ctx.new_streams.take():
            self._refuse(
                _Refusal(
                    429,
                    "rate_limited",
                    "too many new streams per second "
                    "(the agent's max_new_streams_per_second setting)",
                )
            )
            return
        assert self._chan is not None
        self._tuner.pause_reading(self._chan)
        self._opening = asyncio.get_running_loop().create_task(self._open(target))

    def eof_received(self) -> bool:
        self._chan_eof = True
        upstream = self._upstream.transport if self._upstream else None
        if upstream is not None and not upstream.is_closing():
            if upstream.can_write_eof():
                # The API may have reset its connection while the agent was
                # not reading it: then the stream ends, not the whole tunnel.
                gone = half_close(upstream)
                if gone is not None:
                    self.upstream_lost(gone)
                    return True
            self._maybe_finish()
            return True
        # While still connecting, stay half-open: the relay may half-close early.
        return self._opening is not None and not self._opening.done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tuner.release()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.close()
        if exc is not None and self._outcome in ("incomplete", "ok"):
            self._outcome = "tunnel_lost"
        self._log_once()

    def pause_writing(self) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.resume_reading()

    # -- upstream side (called by _Upstream) -------------------------------
    def upstream_data(self, nbytes: int) -> None:
        """The API's next *nbytes* are at the front of the tunnel's upstream
        reads, until the call returns (the ``buffer_updated`` of the stream's
        ``_Upstream``)."""
        reads = self._ctx.upstream_reads
        self._bytes_down += nbytes
        self._ctx.stats.bytes_down += nbytes
        chan = self._chan
        if chan is None or (
            nbytes >= ssh_framed.FRAMED_LEAST and ssh_framed.send_framed(chan, reads.frames, nbytes)
        ):
            return
        # The view is released at once: the buffer is the next read's.
        with reads.view[:nbytes] as data:
            # (Not typing.cast: a Python call per answer; write takes any bytes-like.)
            chan.write(data if self._reads_reused else bytes(data))

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        if self._chan is not None and not self._chan.is_closing():
            self._chan.write_eof()
        self._maybe_finish()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._chan is not None:
            if exc is not None:
                self._outcome = "upstream_reset"
            self._chan.close()  # flushes what is buffered, then closes

    def pause_channel(self) -> None:
        if self._chan is not None:
            # What arrives meanwhile waits in the channel's buffer: the tuner
            # counts it against the window.
            self._tuner.pause_reading(self._chan)

    def resume_channel(self) -> None:
        if self._chan is not None:
            self._chan.resume_reading()

    def _maybe_finish(self) -> None:
        if self._chan_eof and self._upstream_eof:
            if self._upstream is not None and self._upstream.transport is not None:
                self._upstream.transport.close()
            if self._chan is not None:
                self._chan.close()

    # -- opening the upstream connection ------------------------------------
    async def _open(self, target: Target) -> None:
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        try:
            addresses = await self._permitted_addresses(target)
            upstream = await self._connect(loop, target, addresses)
        except _Refusal as refusal:
            self._refuse(refusal)
            return
        self._ctx.stats.connect_seconds.observe(time.monotonic() - began)
        assert self._chan is not None
        assert upstream.transport is not None
        self._upstream = upstream
        self._outcome = "ok"
        self._chan.write(format_connect_response(200))
        if self._head:
            pipelined, self._head = bytes(self._head), bytearray()
            self._bytes_up += len(pipelined)
            self._ctx.stats.bytes_up += len(pipelined)
            upstream.transport.write(pipelined)
        if self._chan_eof and upstream.transport.can_write_eof():
            gone = half_close(upstream.transport)
            if gone is not None:
                self.upstream_lost(gone)
                return
        self._chan.resume_reading()
        self._schedule_idle_check()

    def _schedule_idle_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_later(self._ctx.idle_timeout / 2, self._check_idle)

    def _check_idle(self) -> None:
        """Close a stream that carried nothing for idle_timeout (cheaper than a
        timer reset per packet: activity only bumps a counter)."""
        moved = self._bytes_up + self._bytes_down
        if moved != self._bytes_at_check:
            self._bytes_at_check = moved
            self._idle_since = time.monotonic()
        elif time.monotonic() - self._idle_since >= self._ctx.idle_timeout:
            self._outcome = "idle_timeout"
            if self._upstream is not None and self._upstream.transport is not None:
                self._upstream.transport.close()
            if self._chan is not None:
                self._chan.close()
            return
        self._schedule_idle_check()

    async def _permitted_addresses(self, target: Target) -> list[IPAddress]:
        allow = self._ctx.allowlist
        verdict, _rule = allow.check_name(target.host, target.port)
        if verdict is Verdict.DENIED:
            raise self._denied(target)
        try:
            literal: IPAddress | None = ipaddress.ip_address(target.host)
        except ValueError:
            literal = None
        if literal is not None:
            return [literal]
        try:
            async with asyncio.timeout(self._ctx.connect_timeout):
                resolver = self._ctx.resolve or _resolve
                addresses = await resolver(target.host, target.port)
        except TimeoutError:
            raise _Refusal(504, "upstream_timeout", f"resolving {target.host} timed out") from None
        except OSError as exc:
            raise _Refusal(
                502,
                "upstream_connect_failed",
                f"cannot resolve {target.host}: {exc.strerror or exc}",
            ) from None
        if verdict is Verdict.CHECK_ADDRESSES:
            permitted = [a for a in addresses if allow.check_address(a, target.port)]
            if not permitted:
                shown = ", ".join(str(a) for a in addresses[:4])
                raise self._denied(target, f" (it resolves to {shown})")
            return permitted
        permitted = [a for a in addresses if allow.allows_for_name(a, target.port)]
        if not permitted:
            shown = ", ".join(str(a) for a in addresses[:4])
            raise _Refusal(
                403,
                "destination_denied",
                f"{target.authority()} resolves to {shown}: a loopback or link-local "
                "address is reached only through an address rule naming it (add e.g. "
                f"'{_rule_for(addresses[0], target.port)}' to SLUICE_AGENT_ALLOW)",
            )
        return permitted

    def _denied(self, target: Target, detail: str = "") -> _Refusal:
        return _Refusal(
            403,
            "destination_denied",
            f"{target.authority()}{detail} is not in this agent's allowlist; "
            "add a rule to the agent's 'allow' setting (SLUICE_AGENT_ALLOW)",
        )

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, target: Target, addresses: list[IPAddress]
    ) -> _Upstream:
        last: OSError | None = None
        try:
            async with asyncio.timeout(self._ctx.connect_timeout):
                for address in addresses:
                    try:
                        _transport, upstream = await loop.create_connection(
                            lambda: _Upstream(self, self._ctx.upstream_reads),
                            str(address),
                            target.port,
                        )
                    except OSError as exc:
                        last = exc
                        continue
                    self._peer_address = str(address)
                    return upstream
        except TimeoutError:
            raise _Refusal(
                504,
                "upstream_timeout",
                f"connecting to {target.authority()} timed out after "
                f"{self._ctx.connect_timeout:g} s",
            ) from None
        reason = (last.strerror or str(last)) if last else "no address"
        raise _Refusal(
            502, "upstream_connect_failed", f"cannot connect to {target.authority()}: {reason}"
        )

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            self._ctx.stats.opened()

    def _refuse(self, refusal: _Refusal) -> None:
        self._count()  # a head too long to end is a stream refused, too
        self._refused = True
        self._head.clear()  # a request pipelined behind the CONNECT goes nowhere
        self._outcome = refusal.error
        if refusal.status == 403:
            self._ctx.stats.denied += 1
        elif refusal.status in (502, 504):
            self._ctx.stats.connect_failed += 1
        if self._chan is not None:
            self._chan.write(
                format_connect_response(
                    refusal.status, error=refusal.error, message=refusal.message
                )
            )
            self._chan.close()
        if refusal.status == 403:
            log.warning("destination_denied", target=self._target_text(), reason=refusal.message)

    def _target_text(self) -> str:
        return self._target.authority() if self._target else "?"

    def _log_once(self) -> None:
        if self._finished:
            return
        self._finished = True
        if not self._counted:
            # No CONNECT came: a spare channel the relay closed unused.
            log.debug("channel_unused", ms=round((time.monotonic() - self._started) * 1000, 1))
            return
        stats = self._ctx.stats
        stats.closed()
        log.info(
            "stream",
            target=self._target_text(),
            address=self._peer_address,
            outcome=self._outcome,
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
            ms=round((time.monotonic() - self._started) * 1000, 1),
        )
