"""A tunnel's channels, with one opened ahead of need.

Opening a channel costs a round trip to the agent (CHANNEL_OPEN, then its
confirmation), and SSH allows no data on a channel before that: the agent
names its end of the channel in the confirmation. On a long link that round
trip is a third of a new stream's cost (with the CONNECT answer and the
request itself). So once a tunnel has carried a stream, a spare channel is
kept open beside it, opened in the background whenever one is taken: the
next new stream (a second caller while the pooled one is busy) starts with
its CONNECT at once.

A spare is only a channel: the agent counts and limits streams when their
CONNECT arrives, the relay when a stream takes a channel
(``Tunnel.in_flight``), so a spare counts against neither side's limit. It
is closed when its tunnel closes or starts draining.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncssh
import structlog

from server.errors import RelayError
from server.tunnel.channel_transport import Channel, open_channel
from server.tunnel.window_share import WindowShare
from sluice import logs
from sluice.window_tuning import WindowBudget

log = structlog.get_logger("sluice.server.spare_channel")

# Spares kept per tunnel: one covers a second stream while the first is busy
# (a GET beside a download); a burst of new streams beyond that pays the
# channel's round trip, as without spares.
SPARES = 1


class ChannelSupply:
    """Opens channels on one agent connection, keeping up to SPARES spares."""

    def __init__(
        self,
        ssh: asyncssh.SSHServerConnection,
        listen: tuple[str, int],
        *,
        window: int,
        max_pktsize: int,
        share: WindowShare | None = None,
        budget: WindowBudget | None = None,
        spares: int = SPARES,
    ) -> None:
        self._ssh = ssh
        self._listen = listen
        self._window = window
        self._max_pktsize = max_pktsize
        self._share = share
        self._budget = budget
        self._max_spares = spares
        self._spares: list[Channel] = []
        self._opening: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ChannelSupply {state} spares={len(self._spares)}>"

    async def take(self) -> Channel:
        """A spare channel if one is ready, else a new one; then a new spare
        opens in the background. Raises TunnelLost."""
        channel = self._take_spare()
        if channel is None:
            began = time.monotonic()
            channel = await self._open()
            if logs.min_level <= logging.DEBUG:
                _trace("channel_opened", channel, began)
        elif logs.min_level <= logging.DEBUG:
            _trace("spare_taken", channel, None)
        self._refill()
        return channel

    def close(self) -> None:
        """No more spares: close the ones open and stop opening."""
        self._closed = True
        # One still opening is closed once open (cancelled mid-open, the
        # agent's end could stay open until the tunnel closes).
        spares, self._spares = self._spares, []
        for chan, _session in spares:
            chan.close()

    def _take_spare(self) -> Channel | None:
        while self._spares:
            chan, session = self._spares.pop()
            if session.usable:
                return chan, session
            chan.abort()  # closed by the agent meanwhile
        return None

    async def _open(self) -> Channel:
        return await open_channel(
            self._ssh,
            self._listen,
            window=self._window,
            max_pktsize=self._max_pktsize,
            share=self._share,
            budget=self._budget,
        )

    def _refill(self) -> None:
        if self._closed or self._opening is not None or len(self._spares) >= self._max_spares:
            return
        self._opening = asyncio.get_running_loop().create_task(self._open_spare())

    async def _open_spare(self) -> None:
        began = time.monotonic()
        try:
            channel = await self._open()
        except RelayError as exc:
            # The tunnel is going: the next take opens its own channel (and
            # finds out the same).
            log.debug("spare_channel_failed", error=str(exc))
            return
        finally:
            self._opening = None
        if self._closed:
            channel[0].close()
        else:
            self._spares.append(channel)
            if logs.min_level <= logging.DEBUG:
                _trace("spare_opened", channel, began)


def _trace(event: str, channel: Channel, began: float | None) -> None:
    """A debug line on a channel's way to a stream, with the monotonic time
    (``at``) and how long its opening took (``ms``)."""
    now = time.monotonic()
    ms = {} if began is None else {"ms": round((now - began) * 1000, 1)}
    log.debug(event, channel=f"{id(channel[0]):x}", at=round(now, 4), **ms)
