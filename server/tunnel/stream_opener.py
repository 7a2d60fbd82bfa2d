"""Opening CONNECT streams to an agent, within its limits.

Both ways relay code speaks HTTP through a tunnel (aiohttp's connector and
the lean stream pool) open their streams here, so they count against the
same ``max_streams_per_agent`` and new-streams rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from server.errors import AgentBusy, InvalidTarget, RateLimited, TunnelLost
from server.tunnel.channel_transport import ChannelSession, ChannelTransport
from server.tunnel.registry import Tunnel, TunnelRegistry
from sluice.connect import ConnectProtocolError, Target
from sluice.ratelimit import TokenBucket

T = TypeVar("T")


class StreamOpener:
    """Opens CONNECT streams to one agent, within its stream limits."""

    def __init__(
        self,
        registry: TunnelRegistry,
        agent_id: str,
        *,
        max_streams: int,
        streams_per_second: float,
    ) -> None:
        self.registry = registry
        self.agent_id = agent_id
        self._max_streams = max_streams
        self._bucket = TokenBucket(streams_per_second)

    def __repr__(self) -> str:
        return f"<StreamOpener agent={self.agent_id}>"

    async def open(self, target: Target) -> tuple[ChannelTransport, ChannelSession, bytes, Tunnel]:
        """Open a stream and wait for the agent's CONNECT answer; returns the
        transport (no protocol yet), its session, the bytes after the answer
        and the replica it runs through."""
        result = await self._on_a_replica(lambda tunnel: tunnel.open_stream(target))
        (transport, session, rest), tunnel = result
        return transport, session, rest, tunnel

    async def open_pipelined(
        self,
        target: Target,
        protocol: asyncio.BaseProtocol,
        *,
        deadline: float | None,
        late_message: str,
    ) -> tuple[ChannelTransport, Tunnel]:
        """Open a stream and hand it to *protocol* before the agent answers
        (``Tunnel.open_pipelined``); returns its transport and the replica it
        runs through."""
        return await self._on_a_replica(
            lambda tunnel: tunnel.open_pipelined(
                target, protocol, deadline=deadline, late_message=late_message
            )
        )

    async def _on_a_replica(self, open_on: Callable[[Tunnel], Awaitable[T]]) -> tuple[T, Tunnel]:
        """Open a stream on the least-busy replica; if that replica cannot open
        one (it is going away), try the next. Refusals from the agent itself
        (denied, connect failed) are answers, not replica failures."""
        replicas = self.registry.replicas(self.agent_id)
        if sum(t.in_flight for t in replicas) >= self._max_streams:
            raise AgentBusy(
                f"agent {self.agent_id} already has {self._max_streams} streams open "
                "(max_streams_per_agent)"
            )
        if not self._bucket.take():
            raise RateLimited(
                f"more than {self._bucket.rate:g} new streams per second to agent "
                f"{self.agent_id} (max_new_streams_per_second)"
            )
        tried: frozenset[int] = frozenset()
        while True:
            tunnel = self.registry.pick(self.agent_id, exclude=tried)
            try:
                opened = await open_on(tunnel)
            except TunnelLost:
                tried |= {tunnel.id}
                if not any(
                    t.id not in tried and not t.draining
                    for t in self.registry.replicas(self.agent_id)
                ):
                    raise
                continue
            return opened, tunnel


def stream_target(host: str, port: int | None) -> Target:
    """The CONNECT target for a URL's host and port, or InvalidTarget."""
    host = host.lower()
    if port is None:
        raise InvalidTarget(f"no port for {host}")
    try:
        return Target.parse(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except ConnectProtocolError as exc:
        raise InvalidTarget(
            f"{host}:{port} cannot be reached through an agent: {exc.reason}"
        ) from None
