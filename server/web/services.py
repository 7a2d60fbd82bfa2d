"""The relay's long-lived parts, handed to the API as one typed object."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from server.cluster.changes import ChangeFeed
from server.cluster.charts import ClusterCharts
from server.cluster.forward import Forwarder, HopAuth
from server.cluster.presence import Presence
from server.cluster.shares import CapShares
from server.connections.health import HealthMonitor
from server.connections.service import ConnectionService
from server.proxy.debug_log import DebugLog
from server.proxy.engine import Engine
from server.proxy.limits import ConcurrencyLimits
from server.proxy.retry import RateLimits
from server.proxy.traffic_stats import TrafficStats
from server.secrets.admin_token import AdminTokens
from server.storage.store import Store
from server.tunnel.http_client import TunnelHTTP
from server.tunnel.registry import TunnelRegistry
from server.web.metrics import RelayMetrics


@dataclass
class Services:
    store: Store
    registry: TunnelRegistry
    tunnel_http: TunnelHTTP
    connections: ConnectionService
    engine: Engine
    metrics: RelayMetrics
    admin: AdminTokens
    presence: Presence
    ssh_listening: Callable[[], bool]
    limits: ConcurrencyLimits
    rate_limits: RateLimits
    health: HealthMonitor
    debug: DebugLog
    stats: TrafficStats
    max_body_bytes: int = 0
    ssh_fingerprint: str = ""
    # A caller that takes none of a streamed answer for this long is cut (0: never).
    stalled_reader_timeout: float = 0.0
    # After the admin token is rotated here: share it with the other relays.
    publish_admin: Callable[[], Awaitable[None]] | None = None
    # Relay-to-relay: checks forwarded requests, forwards ours.
    hop: HopAuth | None = None
    forwarder: Forwarder | None = None
    # The change feed: a change made here is answered once the cluster heard it.
    feed: ChangeFeed | None = None
    # The cluster's concurrency cap: this relay's share (None: a single relay).
    shares: CapShares | None = None
    # The cluster's traffic charts: the other relays' series (None: a single relay).
    cluster_charts: ClusterCharts | None = None
    # Answer heads on the handed-on route go out as bytes (server.proxy.raw_head).
    raw_heads: bool = False


SERVICES = web.AppKey("services", Services)
ACTOR = web.RequestKey("actor", str)
# Set on a request another relay forwarded: it is served here or not at all.
FORWARDED = web.RequestKey("forwarded", bool)
# What the relay that forwarded it asked for (server.cluster.forward.HopAuth.sign).
HOP_PURPOSE = web.RequestKey("hop_purpose", str)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def actor_of(request: web.Request) -> str:
    """Who made this request (set by the auth middleware), for the audit trail."""
    return str(request.get(ACTOR, "anonymous"))


@contextlib.asynccontextmanager
async def told_everywhere(request: web.Request, kind: str, target: str) -> AsyncIterator[None]:
    """Around a change: the answer waits (bounded) until the change's notification
    came back, so the caller's next request through any relay sees it."""
    feed = services_of(request).feed
    future = feed.expect(kind, target) if feed is not None else None
    made = False
    try:
        yield
        made = True
    finally:
        if feed is not None and made:
            await feed.settle(future)
        elif feed is not None:
            feed.forget(future)


async def audit(
    request: web.Request, action: str, target: str | None = None, **details: object
) -> None:
    await services_of(request).store.audit(
        actor_of(request), action, target, request.remote, dict(details)
    )
