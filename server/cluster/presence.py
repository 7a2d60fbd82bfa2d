"""Presence: this relay's row in ``relays`` (kept fresh by heartbeats) and a
row per tunnel it holds in ``presence``, so every relay knows who holds whom.

A relay that stops heartbeating is dead after ``relay_dead_after`` seconds:
readers ignore its rows from then on, and the next live relay to heartbeat
deletes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from dataclasses import dataclass

import structlog

from server.storage.cluster import ClusterStore, PresenceRow, RelayRow
from server.tunnel.registry import Tunnel, TunnelRegistry

log = structlog.get_logger("sluice.relay.presence")


def new_relay_id() -> str:
    return "rly_" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Replica:
    """One tunnel of an agent, on this relay or another."""

    relay: str  # the holding relay's advertised SSH address
    relay_id: str
    peer: str
    agent_version: str
    connected_at: dt.datetime
    draining: bool
    streams_in_flight: int | None  # known only for this relay's own tunnels

    def view(self) -> dict[str, object]:
        return {
            "peer": self.peer,
            "agent_version": self.agent_version,
            "connected_since": self.connected_at.isoformat(),
            "streams_in_flight": self.streams_in_flight,
            "draining": self.draining,
            "relay": self.relay,
        }


class Presence:
    """Publishes this relay's tunnels and reads everyone's."""

    def __init__(
        self,
        cluster: ClusterStore,
        registry: TunnelRegistry,
        *,
        relay_id: str,
        advertise_ssh: str,
        cluster_url: str,
        heartbeat_interval: float,
        dead_after: float,
        shared: bool = True,
    ) -> None:
        self._cluster = cluster
        self._registry = registry
        self.relay_id = relay_id
        self.advertise_ssh = advertise_ssh
        self.cluster_url = cluster_url
        self._interval = heartbeat_interval
        self.dead_after = dt.timedelta(seconds=dead_after)
        self._writes: asyncio.Queue[tuple[str, Tunnel]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.draining = False
        self.started = False
        # False on SQLite: no other relay can read the tunnels, so they are
        # not written (a single relay answers from memory, as before clusters).
        self.shared = shared

    def __repr__(self) -> str:
        return f"<Presence {self.relay_id} {self.advertise_ssh}>"

    async def start(self) -> None:
        await self._cluster.register_relay(self.relay_id, self.advertise_ssh, self.cluster_url)
        self.started = True
        if self.shared:
            self._registry.watch(self._tunnel_event)
            # Agents may have logged in between the SSH listener opening and now.
            for tunnel in self._registry:
                self._tunnel_event("added", tunnel)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(), name="presence-writes"),
            loop.create_task(self._heartbeat_loop(), name="presence-heartbeat"),
        ]
        log.info("relay_joined", relay_id=self.relay_id, advertise_ssh=self.advertise_ssh)

    async def close(self) -> None:
        """Leave the cluster: the others stop counting on our tunnels at once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if not self.started:
            return
        try:
            await self._cluster.unregister_relay(self.relay_id)
        except Exception as exc:
            log.warning("relay_leave_failed", error=type(exc).__name__)

    # -- writing ------------------------------------------------------------------------
    def _tunnel_event(self, event: str, tunnel: Tunnel) -> None:
        # In order, one at a time: a tunnel's row must not reappear after its removal.
        self._writes.put_nowait((event, tunnel))

    def _row(self, tunnel: Tunnel) -> PresenceRow:
        return PresenceRow(
            relay_id=self.relay_id,
            tunnel_id=tunnel.id,
            agent_id=tunnel.agent_id,
            peer=tunnel.peer,
            agent_version=tunnel.agent_version,
            connected_at=tunnel.connected_at,
            draining=tunnel.draining,
        )

    async def _write_loop(self) -> None:
        while True:
            event, tunnel = await self._writes.get()
            try:
                if event == "added":
                    await self._cluster.add_presence(self.relay_id, self._row(tunnel))
                elif event == "removed":
                    await self._cluster.remove_presence(self.relay_id, tunnel.id)
                else:
                    await self._cluster.set_presence_draining(self.relay_id, tunnel.id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The next heartbeat that finds us missing writes every row again.
                log.warning("presence_write_failed", event=event, error=type(exc).__name__)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat_failed", error=type(exc).__name__, detail=str(exc)[:200])

    async def beat(self) -> None:
        """One heartbeat; also expires dead relays, and re-joins if we were expired."""
        if not self.started:
            return
        if not await self._cluster.heartbeat(self.relay_id, draining=self.draining):
            # The database was out of reach long enough for a peer to expire us.
            log.warning("relay_rejoined", relay_id=self.relay_id)
            await self._cluster.register_relay(self.relay_id, self.advertise_ssh, self.cluster_url)
            for tunnel in self._registry if self.shared else ():
                await self._cluster.add_presence(self.relay_id, self._row(tunnel))
        dead = await self._cluster.expire_relays(self.dead_after)
        if dead:
            log.info("relays_expired", relays=dead)

    # -- reading ------------------------------------------------------------------------
    async def relays(self) -> list[RelayRow]:
        return await self._cluster.live_relays(self.dead_after)

    def _mine(self, tunnel: Tunnel) -> Replica:
        return Replica(
            relay=self.advertise_ssh,
            relay_id=self.relay_id,
            peer=tunnel.peer,
            agent_version=tunnel.agent_version,
            connected_at=tunnel.connected_at,
            draining=tunnel.draining,
            streams_in_flight=tunnel.in_flight,
        )

    async def replicas(self, agent_id: str | None = None) -> dict[str, list[Replica]]:
        """Every live tunnel of *agent_id* (None: of every agent) in the cluster,
        by agent, oldest first; this relay's own from memory."""
        found: dict[str, list[Replica]] = {}
        tunnels = self._registry if agent_id is None else self._registry.replicas(agent_id)
        for tunnel in tunnels:
            found.setdefault(tunnel.agent_id, []).append(self._mine(tunnel))
        if not self.shared:
            return found
        rows = await self._cluster.presence_of(agent_id, self.dead_after)
        relays = {r.id: r for r in await self.relays()} if rows else {}
        for row in rows:
            relay = relays.get(row.relay_id)
            if row.relay_id == self.relay_id or relay is None:
                continue
            found.setdefault(row.agent_id, []).append(
                Replica(
                    relay=relay.advertise_ssh,
                    relay_id=row.relay_id,
                    peer=row.peer,
                    agent_version=row.agent_version,
                    connected_at=row.connected_at,
                    draining=row.draining or relay.draining,
                    streams_in_flight=None,
                )
            )
        for replicas in found.values():
            replicas.sort(key=lambda r: r.connected_at)
        return found
