"""What a relay does about a change another process made."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from server.connections.service import ConnectionService
from server.proxy.engine import Engine
from server.storage.store import Store, utcnow
from server.tunnel.http_client import TunnelHTTP
from server.tunnel.registry import Tunnel, TunnelRegistry
from sluice.tasks import TaskSet

log = structlog.get_logger("sluice.relay.changes")

# How long after an agent's change its newly registered tunnels are checked.
_RECENT = 30.0


class ChangeReactions:
    """The feed's handler: each kind of change mapped to the local effect.

    Every reaction reads the current state instead of trusting the change's
    order, so applying a change twice (a notification, then the re-read of
    the same row) does no harm.
    """

    def __init__(
        self,
        store: Store,
        registry: TunnelRegistry,
        tunnel_http: TunnelHTTP,
        connections: ConnectionService,
        engine: Engine,
        tasks: TaskSet,
    ) -> None:
        self._store = store
        self._registry = registry
        self._tunnel_http = tunnel_http
        self._connections = connections
        self._engine = engine
        self._tasks = tasks
        self._others: dict[str, list[Callable[[str], None]]] = {}
        # Agents changed lately: a tunnel of theirs that registers now may
        # have logged in with the old token just before the change.
        self._recent: dict[str, float] = {}
        # The check armed for the end of each agent's rotation grace (one per
        # agent, the earliest asked for), cancelled when the relay stops.
        self._rechecks: dict[str, asyncio.TimerHandle] = {}
        self._closed = False
        registry.watch(self._tunnel_event)

    def __repr__(self) -> str:
        return f"<ChangeReactions kinds={sorted(self._others)} rechecks={len(self._rechecks)}>"

    def close(self) -> None:
        """Cancel the checks armed for the ends of grace periods (the relay
        stops: nothing may start on its store or tunnels any more)."""
        self._closed = True
        for handle in self._rechecks.values():
            handle.cancel()
        self._rechecks.clear()

    def on(self, kind: str, callback: Callable[[str], None]) -> None:
        """Also call *callback(target)* for changes of *kind* (admin token, relays)."""
        self._others.setdefault(kind, []).append(callback)

    def __call__(self, kind: str, target: str) -> None:
        if kind == "connection":
            self._connections.forget(target)
            self._engine.forget_token(target)
        elif kind == "connection_token":
            # A refreshed token stored (here or by another relay): read the
            # connection again. The engine's refresh state stays: callers
            # waiting on this relay's refresh use its result.
            self._connections.forget(target)
        elif kind == "agent":
            now = time.monotonic()
            self._recent = {a: t for a, t in self._recent.items() if now - t < _RECENT}
            self._recent[target] = now
            if self._registry.replicas(target):
                self._tasks.spawn(self.check_agent(target), name=f"check-agent-{target}")
        for callback in self._others.get(kind, ()):
            callback(target)

    def _tunnel_event(self, event: str, tunnel: Tunnel) -> None:
        changed = self._recent.get(tunnel.agent_id)
        if event == "added" and changed is not None and time.monotonic() - changed < _RECENT:
            self._tasks.spawn(self.check_agent(tunnel.agent_id))

    async def check_agent(self, agent_id: str) -> int:
        """Close this relay's tunnels of *agent_id* whose token no longer logs in.

        Returns how many closed. When a rotation's grace period keeps some
        open, the check runs again as it ends.
        """
        credentials = await self._store.agent_credentials(agent_id)
        now = utcnow()
        closed = 0
        for tunnel in self._registry.replicas(agent_id):
            if credentials is None or not credentials.accepts(tunnel.credential, now):
                tunnel.close()
                closed += 1
        if closed:
            await self._tunnel_http.forget(agent_id)
            log.info("tunnels_closed_by_change", agent_id=agent_id, tunnels_closed=closed)
        expires = credentials.previous_token_expires_at if credentials else None
        if (
            expires is not None
            and expires > now
            and self._registry.replicas(agent_id)
            and not self._closed  # (a check that ended after the relay's stop began)
        ):
            # The earliest end wins: checks finish in any order, and one that
            # read the credentials before a second rotation (a later end)
            # must not put off the recheck the newer read asked for.
            loop = asyncio.get_running_loop()
            when = loop.time() + (expires - now).total_seconds() + 0.05
            armed = self._rechecks.get(agent_id)
            if armed is None or when < armed.when():
                if armed is not None:
                    armed.cancel()
                self._rechecks[agent_id] = loop.call_at(when, self._recheck, agent_id)
        return closed

    def _recheck(self, agent_id: str) -> None:
        self._rechecks.pop(agent_id, None)
        self._tasks.spawn(self.check_agent(agent_id), name=f"recheck-agent-{agent_id}")
