"""The cluster's side of traffic control, started and stopped together:
shared rate-limit deadlines, the lease that lets one relay run the health
schedule, and agent presence read from every relay."""

from __future__ import annotations

from server.cluster.agents_anywhere import AgentsAnywhere
from server.cluster.leadership import Leadership
from server.cluster.reactions import ChangeReactions
from server.cluster.shared_limits import ClusterLimits
from server.proxy.retry import RateLimits
from server.storage.coordination import LIMIT_CHANGE, Coordination
from server.storage.store import Store
from server.tunnel.registry import TunnelRegistry
from sluice.tasks import TaskSet


def lease_tick(min_health_interval: float) -> float:
    """How often the health lease is renewed: the health schedule's own tick
    (a quarter of the shortest interval, at most 5 s), but not below 0.25 s
    so one slow database round trip does not cost the lease."""
    return max(0.25, min(5.0, min_health_interval / 4))


class ClusterTraffic:
    def __init__(
        self,
        store: Store,
        registry: TunnelRegistry,
        relay_id: str,
        *,
        min_health_interval: float,
        presence_interval: float,
        dead_after: float,
    ) -> None:
        rows = Coordination(store)
        self._tasks = TaskSet()
        self.limits = ClusterLimits(rows, relay_id, self._tasks)
        self.health_lease = Leadership(rows, "health", relay_id, lease_tick(min_health_interval))
        self.agents = AgentsAnywhere(
            rows, registry, relay_id, interval=presence_interval, dead_after=dead_after
        )

    def __repr__(self) -> str:
        return f"<ClusterTraffic {self.limits!r} {self.health_lease!r} {self.agents!r}>"

    async def start(self, rate_limits: RateLimits, reactions: ChangeReactions) -> None:
        # Listen first, then read what is in force: nothing falls in between.
        reactions.on(LIMIT_CHANGE, self.limits.changed)
        reactions.on("connection", self.limits.connection_changed)  # deleted, or edited
        await self.limits.attach(rate_limits)
        await self.agents.start()
        self.health_lease.start()

    async def stop_leading(self) -> None:
        """Hand the health lease back now (shutdown begins): another relay
        takes the schedule while this one drains its requests."""
        await self.health_lease.close()

    async def close(self) -> None:
        """After the drain: the requests that finished during it have told
        the cluster what limits they met."""
        await self.health_lease.close()
        await self.agents.close()
        await self.limits.close()
        await self._tasks.close(timeout=1.0)
