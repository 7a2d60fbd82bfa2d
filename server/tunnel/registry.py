"""Live tunnels by agent id: several replicas per agent, least-loaded first."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import asyncssh

from server.errors import AgentOffline
from server.tunnel.channel_transport import (
    ChannelSession,
    ChannelTransport,
    pipeline_connect,
    request_connect,
)
from server.tunnel.spare_channel import ChannelSupply
from server.tunnel.window_share import SHARED_WINDOW, WindowShare
from sluice.connect import Target
from sluice.window_tuning import WindowBudget

_ids = itertools.count(1)


@dataclass(eq=False)
class Tunnel:
    """One agent SSH connection (a replica) that registered its listener."""

    agent_id: str
    ssh: asyncssh.SSHServerConnection
    listen: tuple[str, int]
    peer: str
    agent_version: str
    connected_at: dt.datetime
    window: int
    max_pktsize: int
    max_inflight: int = 0
    # The agent's login round trip, seconds (0: not timed): before any
    # stream's round is timed, whether the link looks long (WindowBudget.setup_rtt).
    login_rtt: float = 0.0
    # The link was short at the login (sluice.window_tuning.short_link): its
    # streams' windows stay as they start.
    short_link: bool = False
    instance: str = ""
    # Hash of the token this replica logged in with: after a rotation, the
    # replica is closed unless that token still logs in.
    credential: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    in_flight: int = 0
    streams_total: int = 0
    draining: bool = False
    share: WindowShare = field(init=False)
    budget: WindowBudget = field(init=False)
    channels: ChannelSupply = field(init=False)

    def __post_init__(self) -> None:
        self.share = WindowShare(full=self.window, shared=min(self.window, SHARED_WINDOW))
        self.budget = WindowBudget(self.max_inflight)
        self.budget.setup_rtt = self.login_rtt
        self.budget.short = self.short_link
        self.channels = ChannelSupply(
            self.ssh,
            self.listen,
            window=self.window,
            max_pktsize=self.max_pktsize,
            share=self.share,
            budget=self.budget,
        )

    def __repr__(self) -> str:
        state = "draining" if self.draining else "live"
        return f"<Tunnel #{self.id} {self.agent_id} {self.peer} {state} in_flight={self.in_flight}>"

    async def open_stream(self, target: Target) -> tuple[ChannelTransport, ChannelSession, bytes]:
        """Open one CONNECT stream to *target* through this replica and wait
        for the agent's answer.

        The stream counts as in flight until its channel closes.
        """
        self.in_flight += 1
        self.streams_total += 1
        try:
            channel = await self.channels.take()
            transport, rest = await request_connect(channel, target)
        except BaseException:
            self.in_flight -= 1
            raise
        session = channel[1]
        session.on_closed(self._stream_closed)
        return transport, session, rest

    async def open_pipelined(
        self,
        target: Target,
        protocol: asyncio.BaseProtocol,
        *,
        deadline: float | None,
        late_message: str,
    ) -> ChannelTransport:
        """Open one CONNECT stream to *target* and hand it to *protocol* at once
        (``channel_transport.pipeline_connect``): its first request goes out
        with the CONNECT. Raises TunnelLost only if nothing was sent.
        """
        self.in_flight += 1
        self.streams_total += 1
        try:
            channel = await self.channels.take()
            transport = pipeline_connect(
                channel, target, protocol, deadline=deadline, late_message=late_message
            )
        except BaseException:
            self.in_flight -= 1
            raise
        channel[1].on_closed(self._stream_closed)
        return transport

    def _stream_closed(self) -> None:
        self.in_flight -= 1

    def close(self) -> None:
        self.channels.close()
        self.ssh.close()


class TunnelRegistry:
    """Which agents are online, through which SSH connections.

    A tunnel is added when its agent registers its listener and removed the
    moment its SSH connection ends, so ``pick()`` never returns a dead one.
    """

    def __init__(self) -> None:
        self._by_agent: dict[str, list[Tunnel]] = {}
        self._changed = asyncio.Event()
        self._draining_callbacks: list[Callable[[Tunnel], None]] = []
        self._watchers: list[Callable[[str, Tunnel], None]] = []

    def __repr__(self) -> str:
        return f"<TunnelRegistry agents={len(self._by_agent)} tunnels={len(self)}>"

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_agent.values())

    def __iter__(self) -> Iterator[Tunnel]:
        for tunnels in list(self._by_agent.values()):
            yield from list(tunnels)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def add(self, tunnel: Tunnel) -> list[Tunnel]:
        """Register *tunnel*; returns older tunnels of the same agent process.

        An agent that reconnects while its previous session still looks alive
        (a half-open TCP connection not yet noticed by keepalives) is the same
        process instance: its new session takes over at once and the caller
        closes the stale ones.
        """
        tunnels = self._by_agent.setdefault(tunnel.agent_id, [])
        stale = [t for t in tunnels if tunnel.instance and t.instance == tunnel.instance]
        for old in stale:
            tunnels.remove(old)
            self._tell("removed", old)
        tunnels.append(tunnel)
        self._tell("added", tunnel)
        self._notify()
        return stale

    def remove(self, tunnel: Tunnel) -> None:
        tunnels = self._by_agent.get(tunnel.agent_id, [])
        if tunnel in tunnels:
            tunnels.remove(tunnel)
            if not tunnels:
                del self._by_agent[tunnel.agent_id]
            self._tell("removed", tunnel)
            self._notify()

    def watch(self, callback: Callable[[str, Tunnel], None]) -> None:
        """Call *callback(event, tunnel)* on "added", "removed" and "draining"."""
        self._watchers.append(callback)

    def _tell(self, event: str, tunnel: Tunnel) -> None:
        for callback in self._watchers:
            callback(event, tunnel)

    def on_draining(self, callback: Callable[[Tunnel], None]) -> None:
        """Call *callback* whenever a replica starts draining."""
        self._draining_callbacks.append(callback)

    def mark_draining(self, tunnel: Tunnel) -> None:
        """The agent cancelled its listener: no new streams go to this replica."""
        if tunnel.draining:
            return
        tunnel.draining = True
        tunnel.channels.close()
        for callback in self._draining_callbacks:
            callback(tunnel)
        self._tell("draining", tunnel)
        self._notify()

    def replicas(self, agent_id: str) -> list[Tunnel]:
        return list(self._by_agent.get(agent_id, ()))

    def is_online(self, agent_id: str) -> bool:
        # A loop, not any() over a generator: this runs for every proxied request.
        for tunnel in self._by_agent.get(agent_id, ()):  # noqa: SIM110 (as said above)
            if not tunnel.draining:
                return True
        return False

    def pick(self, agent_id: str, exclude: frozenset[int] = frozenset()) -> Tunnel:
        """The live, non-draining replica with the fewest streams in flight."""
        live = [
            t for t in self._by_agent.get(agent_id, ()) if not t.draining and t.id not in exclude
        ]
        if not live:
            raise AgentOffline(f"agent {agent_id} has no live tunnel")
        return min(live, key=lambda t: (t.in_flight, t.streams_total))

    def close_agent(self, agent_id: str) -> int:
        """Close every tunnel of an agent (token rotated or agent deleted)."""
        tunnels = self._by_agent.get(agent_id, [])
        for tunnel in list(tunnels):
            tunnel.close()
        return len(tunnels)

    async def wait_changed(self) -> None:
        await self._changed.wait()
