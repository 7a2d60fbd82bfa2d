"""Keeps the tunnel up: reconnect forever with backoff, fail over, drain on stop."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_random_exponential

from agent.errors import TunnelDropped, TunnelError
from agent.proxy import ProxyContext
from agent.settings import AgentSettings
from agent.state import TunnelState, TunnelStatus
from agent.tunnel import open_tunnel
from sluice.addresses import HostPort
from sluice.tokens import AgentToken

log = structlog.get_logger("sluice.agent")


class Tunnel(Protocol):
    """What the supervisor needs of a live tunnel (a fake in unit tests)."""

    # Its setup showed the link short (logged; sluice.window_tuning.short_link).
    short_link: bool

    def stop_accepting(self) -> None: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


Opener = Callable[[HostPort], Awaitable[Tunnel]]


class _Shutdown(Exception):
    """Raised out of a backoff sleep when the agent is asked to stop."""


class Supervisor:
    """Runs the connect loop until *shutdown* is set, then drains and returns."""

    def __init__(
        self,
        settings: AgentSettings,
        opener: Opener,
        ctx: ProxyContext,
        status: TunnelStatus | None = None,
    ) -> None:
        self._settings = settings
        self._open = opener
        self._ctx = ctx
        self.status = status or TunnelStatus()
        self.ready = asyncio.Event()
        # The live tunnel while one is up (the relay set asks through it).
        self.tunnel: Tunnel | None = None
        self._relay_index = 0
        self._backoff = wait_random_exponential(
            multiplier=settings.backoff_initial,
            exp_base=settings.backoff_multiplier,
            max=settings.backoff_max,
        )

    def __repr__(self) -> str:
        return f"<Supervisor {self.status!r}>"

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, TunnelError) and exc.needs_operator:
            # Retrying a refused token or a wrong host key fast only fills logs.
            return self._settings.backoff_max
        return float(self._backoff(retry_state))

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        self.status.last_error = str(exc)
        self.status.to(TunnelState.BACKING_OFF)
        event = "relay_needs_attention" if getattr(exc, "needs_operator", False) else "reconnecting"
        log.warning(
            event,
            attempt=retry_state.attempt_number,
            delay_s=round(delay, 2),
            cause=str(exc),
        )
        # The next attempt tries the next relay address.
        self._relay_index = (self._relay_index + 1) % len(self._settings.relay)

    async def run(self, shutdown: asyncio.Event) -> None:
        async def sleep(seconds: float) -> None:
            try:
                async with asyncio.timeout(seconds):
                    await shutdown.wait()
            except TimeoutError:
                return
            raise _Shutdown

        try:
            while not shutdown.is_set():
                retrying = AsyncRetrying(
                    wait=self._wait,
                    retry=retry_if_exception_type(TunnelError),
                    sleep=sleep,
                    before_sleep=self._before_sleep,
                    reraise=True,
                )
                async for attempt in retrying:
                    with attempt:
                        await self._one_session(shutdown)
        except _Shutdown:
            pass
        finally:
            self.ready.clear()
            if self.status.state is not TunnelState.CLOSED:
                self.status.to(TunnelState.CLOSED)

    async def _one_session(self, shutdown: asyncio.Event) -> None:
        """Open a tunnel and hold it. Returns normally after a stable session or
        a drain; raises TunnelError (to back off) when it failed or ended early."""
        relay = self._settings.relay[self._relay_index]
        self.status.to(TunnelState.CONNECTING)
        began = time.monotonic()
        tunnel = await self._open(relay)
        up_at = time.monotonic()
        self.status.relay = str(relay)
        self.status.last_error = None
        self.status.to(TunnelState.UP)
        self.tunnel = tunnel
        self.ready.set()
        log.info(
            "tunnel_up",
            relay=str(relay),
            connect_ms=round((up_at - began) * 1000, 1),
            short_link=tunnel.short_link,
        )

        closed = asyncio.ensure_future(tunnel.wait_closed())
        stop = asyncio.ensure_future(shutdown.wait())
        try:
            await asyncio.wait([closed, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            self.tunnel = None
        self.ready.clear()
        if shutdown.is_set():
            closed.cancel()
            await self._drain(tunnel)
            return
        uptime = time.monotonic() - up_at
        log.warning("tunnel_down", relay=str(relay), uptime_s=round(uptime, 1))
        if uptime >= self._settings.stable_after:
            return  # a fresh start: the backoff counter resets
        raise TunnelDropped(f"tunnel to {relay} closed after {uptime:.1f} s")

    async def _drain(self, tunnel: Tunnel) -> None:
        """Stop taking new streams, let open ones finish (bounded), then close."""
        self.status.to(TunnelState.DRAINING)
        tunnel.stop_accepting()
        stats = self._ctx.stats
        log.info(
            "draining",
            streams_open=stats.streams_open,
            drain_timeout_s=self._settings.drain_timeout,
        )
        try:
            async with asyncio.timeout(self._settings.drain_timeout):
                await stats.idle.wait()
        except TimeoutError:
            pass
        if stats.streams_open:
            log.warning("drain_timeout", streams_cut=stats.streams_open)
        tunnel.close()
        try:
            async with asyncio.timeout(5):
                await tunnel.wait_closed()
        except TimeoutError:
            log.warning("close_timeout")
        self.status.to(TunnelState.CLOSED)


def connect_opener(settings: AgentSettings, token: AgentToken, ctx: ProxyContext) -> Opener:
    """The real opener: an asyncssh tunnel to the given relay address.

    Every session of this process carries the same instance id, so the relay
    can tell a reconnect (replace the stale session) from a second replica.
    """
    instance = secrets.token_hex(8)

    async def opener(relay: HostPort) -> Tunnel:
        return await open_tunnel(settings, token, relay, ctx, instance)

    return opener
