"""The relay's long-lived parts, handed to the API as one typed object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from server.admin_token import AdminTokens
from server.connections import ConnectionService
from server.engine import Engine
from server.metrics import RelayMetrics
from server.store import Store
from server.tunnel_http import TunnelHTTP
from server.tunnels import TunnelRegistry


@dataclass
class Services:
    store: Store
    registry: TunnelRegistry
    tunnel_http: TunnelHTTP
    connections: ConnectionService
    engine: Engine
    metrics: RelayMetrics
    admin: AdminTokens
    ssh_listening: Callable[[], bool]
    max_body_bytes: int = 0
    ssh_fingerprint: str = ""
    # A caller that takes none of a streamed answer for this long is cut (0: never).
    stalled_reader_timeout: float = 0.0


SERVICES = web.AppKey("services", Services)
ACTOR = web.RequestKey("actor", str)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def actor_of(request: web.Request) -> str:
    """Who made this request (set by the auth middleware), for the audit trail."""
    return str(request.get(ACTOR, "anonymous"))


async def audit(
    request: web.Request, action: str, target: str | None = None, **details: object
) -> None:
    await services_of(request).store.audit(
        actor_of(request), action, target, request.remote, dict(details)
    )
