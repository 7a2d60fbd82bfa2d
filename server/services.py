"""The relay's long-lived parts, handed to the API as one typed object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

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
    admin_token: str
    ssh_listening: Callable[[], bool]


SERVICES = web.AppKey("services", Services)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]
