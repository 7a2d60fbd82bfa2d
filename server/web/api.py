"""The relay's JSON API (aiohttp): agents, connections, tests, health, metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import HttpVersion11, web
from aiohttp.http import SERVER_SOFTWARE

from server.cluster.presence import Replica
from server.connections.importer import UnsupportedExport, from_integrator
from server.connections.service import ConnectionNotFound, InvalidConnection
from server.errors import RelayError
from server.proxy.route import hop_actor, proxy
from server.secrets.admin_token import AdminTokenConfigured, AdminTokenReadOnly, AdminTokens
from server.secrets.crypto import DecryptionError
from server.storage.failures import is_database_failure
from server.storage.store import AgentInUse, AgentRecord
from server.web.debug_api import add_debug_routes
from server.web.metrics import RelayMetrics
from server.web.openapi import openapi_document
from server.web.paging import page_query
from server.web.problems import problem, validation_problem
from server.web.services import (
    ACTOR,
    FORWARDED,
    HOP_PURPOSE,
    SERVICES,
    Services,
    audit,
    services_of,
    told_everywhere,
)
from server.web.ui import add_console
from sluice import __version__

log = structlog.get_logger("sluice.relay.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# What the relay calls itself in its answers (not aiohttp's name and version,
# which only help an attacker pick exploits); an API's own Server passes.
SERVER_NAME = "Sluice"
SERVER_FIELD = b"Server: Sluice\r\n"

PUBLIC_PATHS = ("/healthz", "/ui")
PUBLIC_PREFIXES = ("/ui/",)


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into problem+json; never leak internals."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error"
        )
        return problem(exc.status, kind, exc.reason, exc.text if exc.text != exc.reason else None)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:
        return error_problem(exc, services_of(request).metrics, _route_label(request))


def _route_label(request: web.Request) -> str:
    """The route's template (``/v1/connections/{id}/proxy/{path}``), not the
    caller's path: a proxied path is the caller's data, kept out of the log."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unrouted"


def error_problem(exc: Exception, metrics: RelayMetrics, path: str) -> web.Response:
    """The problem document for a failed request: a stable type, never internals."""
    if isinstance(exc, InvalidConnection):
        return validation_problem(exc.problems)
    if isinstance(exc, ConnectionNotFound):
        return problem(404, "not_found", "No such connection", f"no connection {exc.args[0]}")
    if isinstance(exc, AgentInUse):
        return problem(
            409,
            "agent_in_use",
            "The agent is used by connections",
            f"agent {exc.agent_id} is used by {', '.join(exc.connection_ids)}; "
            "delete or move those connections first",
            connections=exc.connection_ids,
        )
    if isinstance(exc, RelayError):
        metrics.errors.labels(exc.type).inc()
        return problem(exc.status, exc.type, exc.title, str(exc))
    if isinstance(exc, DecryptionError):
        log.error("secret_unreadable", error=str(exc))
        return problem(
            500,
            "secret_unreadable",
            "A stored secret could not be decrypted",
            "check the relay's master key settings",
        )
    if is_database_failure(exc):
        metrics.errors.labels("database_unavailable").inc()
        log.error("database_failed", path=path, error_type=type(exc).__name__)
        return problem(
            503,
            "database_unavailable",
            "The relay's database did not answer",
            "try again shortly; the relay's log says more",
        )
    log.error("internal_error", path=path, error_type=type(exc).__name__, exc_info=exc)
    return problem(
        500, "internal_error", "The relay failed to handle the request", "see the relay's log"
    )


def bearer_actor(admin: AdminTokens, authorization: str) -> str | None:
    """Who sent this Authorization header, or None unless it holds a valid admin token."""
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return admin.actor(presented.strip())


def bearer_is_current(admin: AdminTokens, authorization: str) -> bool:
    """Whether this Authorization header holds the current admin token."""
    scheme, _, presented = authorization.partition(" ")
    return scheme.lower() == "bearer" and admin.is_current(presented.strip())


def unauthorized() -> web.Response:
    response = problem(
        401,
        "unauthorized",
        "Admin token required",
        "send 'Authorization: Bearer <admin token>'",
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="sluice"'
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    services = services_of(request)
    actor = bearer_actor(services.admin, request.headers.get("Authorization", ""))
    if actor is None:
        hop = hop_actor(services, request)
        if hop is None:
            return unauthorized()
        actor = hop[0]
        request[FORWARDED] = True
        request[HOP_PURPOSE] = hop[1]
    request[ACTOR] = actor
    return await handler(request)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except ValueError:
        raise web.HTTPBadRequest(reason="Invalid JSON", text="the body is not valid JSON") from None


# -- health -------------------------------------------------------------------


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = services_of(request)
    ok = services.ssh_listening()
    body = {"status": "ready" if ok else "not_ready", "tunnels": len(services.registry)}
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=services_of(request).metrics.render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def relay_info(request: web.Request) -> web.Response:
    """What an agent needs to pin this relay, and the relay's version."""
    return web.json_response(
        {"ssh_fingerprint": services_of(request).ssh_fingerprint, "version": __version__}
    )


async def cluster_info(request: web.Request) -> web.Response:
    """The relays of the cluster (one on SQLite) and which one answers."""
    presence = services_of(request).presence
    relays = await presence.relays()
    return web.json_response(
        {
            "relay": presence.relay_id,
            "relays": [
                {
                    "id": r.id,
                    "ssh": r.advertise_ssh,
                    "started_at": r.started_at.isoformat(),
                    "heartbeat_at": r.heartbeat_at.isoformat(),
                    "draining": r.draining,
                }
                for r in relays
            ],
        }
    )


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(openapi_document())


# -- agents -------------------------------------------------------------------


def agent_view(agent: AgentRecord, replicas: list[Replica]) -> dict[str, Any]:
    """The agent as the API shows it; *replicas* are its tunnels on every relay."""
    live = [t for t in replicas if not t.draining]
    first = min(live, key=lambda t: t.connected_at) if live else None
    return {
        "id": agent.id,
        "name": agent.name,
        "status": "online" if live else "offline",
        "created_at": agent.created_at.isoformat(),
        "token_rotated_at": agent.token_rotated_at.isoformat() if agent.token_rotated_at else None,
        "last_seen_at": (
            None
            if agent.last_seen_at is None and not replicas
            else (agent.last_seen_at.isoformat() if agent.last_seen_at else None)
        ),
        "connected_since": first.connected_at.isoformat() if first else None,
        "peer": first.peer if first else None,
        "agent_version": first.agent_version if first else None,
        "replicas": [t.view() for t in replicas],
    }


async def create_agent(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await _json(request)
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        return validation_problem(
            [{"field": "name", "message": "required: a non-empty name of at most 200 characters"}]
        )
    if any(ord(c) < 32 for c in name):
        return validation_problem(
            [{"field": "name", "message": "must not contain control characters"}]
        )
    agent, token = await services.store.create_agent(name.strip())
    view = agent_view(agent, [])
    view["token"] = str(token)  # shown once; only its hash is kept
    log.info("agent_created", agent_id=agent.id)
    await audit(request, "agent.created", agent.id, name=agent.name)
    return web.json_response(view, status=201)


async def list_agents(request: web.Request) -> web.Response:
    services = services_of(request)
    agents = await services.store.list_agents()
    replicas = await services.presence.replicas()
    return web.json_response({"agents": [agent_view(a, replicas.get(a.id, [])) for a in agents]})


async def _agent(request: web.Request) -> AgentRecord:
    agent = await services_of(request).store.get_agent(request.match_info["agent_id"])
    if agent is None:
        agent_id = request.match_info["agent_id"]
        raise web.HTTPNotFound(reason="No such agent", text=f"no agent {agent_id}")
    return agent


async def get_agent(request: web.Request) -> web.Response:
    agent = await _agent(request)
    replicas = await services_of(request).presence.replicas(agent.id)
    return web.json_response(agent_view(agent, replicas.get(agent.id, [])))


async def delete_agent(request: web.Request) -> web.Response:
    services = services_of(request)
    agent = await _agent(request)
    async with told_everywhere(request, "agent", agent.id):
        await services.store.delete_agent(agent.id)
    closed = services.registry.close_agent(agent.id)
    await services.tunnel_http.forget(agent.id)
    log.info("agent_deleted", agent_id=agent.id, tunnels_closed=closed)
    await audit(request, "agent.deleted", agent.id, tunnels_closed=closed)
    return web.Response(status=204)


async def _grace_seconds(request: web.Request) -> float | web.Response:
    if not request.body_exists:
        return 0.0
    body = await _json(request)
    grace = body.get("grace_seconds", 0) if isinstance(body, dict) else None
    if (
        not isinstance(grace, int | float)
        or isinstance(grace, bool)
        or not 0 <= grace <= 30 * 86400
    ):
        return validation_problem(
            [{"field": "grace_seconds", "message": "a number of seconds from 0 to 2592000"}]
        )
    return float(grace)


async def rotate_agent_token(request: web.Request) -> web.Response:
    """New token. Without a grace period the old one stops at once and live
    tunnels close; with one, both work until it ends so agents can switch."""
    services = services_of(request)
    agent = await _agent(request)
    grace = await _grace_seconds(request)
    if isinstance(grace, web.Response):
        return grace
    async with told_everywhere(request, "agent", agent.id):
        token = await services.store.rotate_agent_token(agent.id, grace_seconds=grace)
    assert token is not None
    closed = 0
    if not grace:
        closed = services.registry.close_agent(agent.id)
        await services.tunnel_http.forget(agent.id)
    # With a grace, the tunnels open now logged in with the old token and end
    # with it: the change feed checks them again when the grace ends
    # (server.cluster.reactions), on every relay.
    log.info("agent_token_rotated", agent_id=agent.id, tunnels_closed=closed, grace_s=grace)
    await audit(
        request, "agent.token_rotated", agent.id, grace_seconds=grace, tunnels_closed=closed
    )
    return web.json_response(
        {
            "id": agent.id,
            "token": str(token),
            "tunnels_closed": closed,
            "previous_token_valid_for_seconds": grace,
        }
    )


async def rotate_admin_token(request: web.Request) -> web.Response:
    services = services_of(request)
    grace = await _grace_seconds(request)
    if isinstance(grace, web.Response):
        return grace
    try:
        token = services.admin.rotate(grace)
    except AdminTokenConfigured as exc:
        return problem(409, "admin_token_configured", "The admin token is configured", str(exc))
    except AdminTokenReadOnly as exc:
        return problem(409, "admin_token_read_only", "The admin token file is read-only", str(exc))
    if services.publish_admin is not None:
        await services.publish_admin()
    log.info("admin_token_rotated", grace_s=grace)
    await audit(request, "admin.token_rotated", None, grace_seconds=grace)
    return web.json_response({"token": token, "previous_token_valid_for_seconds": grace})


async def list_audit(request: web.Request) -> web.Response:
    page = page_query(request.query, default=100, maximum=1000, item="an event")
    if isinstance(page, web.Response):
        return page
    limit, before = page
    events = await services_of(request).store.audit_events(limit=limit, before=before)
    return web.json_response({"events": events})


# -- connections ----------------------------------------------------------------


async def create_connection(request: web.Request) -> web.Response:
    view = await services_of(request).connections.create(await _json(request))
    log.info("connection_created", connection=view["id"])
    await audit(request, "connection.created", view["id"], name=view["name"], mode=view["mode"])
    return web.json_response(view, status=201)


async def import_connection(request: web.Request) -> web.Response:
    """POST /v1/connections/import: an integrator.io HTTP connection export in,
    the created connection and every field not carried over (with why) out.
    With ``?dry_run=true`` nothing is created: the console's preview."""
    agent_id = request.query.get("agent_id") or None
    try:
        imported = from_integrator(await _json(request), agent_id)
    except UnsupportedExport as exc:
        raise InvalidConnection(exc.problems) from None
    connections = services_of(request).connections
    if request.query.get("dry_run") == "true":
        preview = await connections.preview(imported.document)
        return web.json_response({"connection": preview, "unmapped": imported.unmapped})
    view = await connections.create(imported.document)
    log.info("connection_imported", connection=view["id"], unmapped=len(imported.unmapped))
    await audit(
        request,
        "connection.created",
        view["id"],
        name=view["name"],
        mode=view["mode"],
        source="integrator.io",
    )
    return web.json_response({"connection": view, "unmapped": imported.unmapped}, status=201)


async def list_connections(request: web.Request) -> web.Response:
    return web.json_response({"connections": await services_of(request).connections.list()})


async def get_connection(request: web.Request) -> web.Response:
    return web.json_response(await services_of(request).connections.get(request.match_info["id"]))


async def patch_connection(request: web.Request) -> web.Response:
    services = services_of(request)
    conn_id = request.match_info["id"]
    patch = await _json(request)
    async with told_everywhere(request, "connection", conn_id):
        view = await services.connections.patch(conn_id, patch)
    services.engine.forget_token(conn_id)
    changed = _changed_fields(patch)
    if any(f == "http" or f.startswith("http.rate_limit") for f in changed):
        services.rate_limits.forget(conn_id)  # a new rule starts with an open gate
    log.info("connection_updated", connection=conn_id)
    await audit(request, "connection.updated", conn_id, fields=changed)
    return web.json_response(view)


async def delete_connection(request: web.Request) -> web.Response:
    services = services_of(request)
    conn_id = request.match_info["id"]
    async with told_everywhere(request, "connection", conn_id):
        await services.connections.delete(conn_id)
    services.engine.forget_token(conn_id)
    services.health.forget(conn_id)
    services.rate_limits.forget(conn_id)
    services.debug.forget(conn_id)
    services.stats.forget(conn_id)
    log.info("connection_deleted", connection=conn_id)
    await audit(request, "connection.deleted", conn_id)
    return web.Response(status=204)


async def test_unsaved(request: web.Request) -> web.Response:
    services = services_of(request)
    handle = await services.connections.unsaved_handle(await _json(request))
    result = await services.engine.ping(handle)
    return web.json_response(result.as_dict())


async def test_saved(request: web.Request) -> web.Response:
    services = services_of(request)
    conn_id = request.match_info["id"]
    handle = await services.connections.handle(conn_id)
    result = await services.engine.ping(handle)
    record = result.as_dict() | {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    await services.connections.record_test(conn_id, record)
    connection = handle.connection
    await services.health.record(conn_id, connection.mode, connection.agent_id, result)
    return web.json_response(result.as_dict())


def _changed_fields(patch: Any, prefix: str = "") -> list[str]:
    """Dotted names of what a patch touches (never the values: some are secrets)."""
    if not isinstance(patch, dict):
        return [prefix] if prefix else []
    out: list[str] = []
    for key, value in patch.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and key not in ("encrypted", "unencrypted"):
            out.extend(_changed_fields(value, name))
        elif isinstance(value, dict):
            out.extend(f"{name}.{k}" for k in value)
        else:
            out.append(name)
    return out[:50]


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """Expect: 100-continue gets its interim answer; anything else a problem
    document (aiohttp's own answer would be plain text, outside the middlewares)."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None
    return problem(
        417, "expectation_failed", "Expectation Failed", "only 'Expect: 100-continue' is understood"
    )


async def _server_name(_: web.Request, response: web.StreamResponse) -> None:
    # aiohttp has written its own name already (an API's Server field passes).
    if response.headers.get("Server") == SERVER_SOFTWARE:
        response.headers["Server"] = SERVER_NAME


def build_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[problems_middleware, auth_middleware], client_max_size=1024 * 1024
    )
    app[SERVICES] = services
    app.on_response_prepare.append(_server_name)
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/openapi.json", openapi)
    r.add_get("/v1/relay", relay_info)
    r.add_get("/v1/cluster", cluster_info)
    r.add_post("/v1/agents", create_agent)
    r.add_get("/v1/agents", list_agents)
    r.add_get("/v1/agents/{agent_id}", get_agent)
    r.add_delete("/v1/agents/{agent_id}", delete_agent)
    r.add_post("/v1/agents/{agent_id}/rotate-token", rotate_agent_token)
    r.add_post("/v1/admin/rotate-token", rotate_admin_token)
    r.add_get("/v1/audit", list_audit)
    r.add_post("/v1/connections", create_connection)
    r.add_get("/v1/connections", list_connections)
    r.add_post("/v1/connections/test", test_unsaved)
    r.add_post("/v1/connections/import", import_connection)
    r.add_get("/v1/connections/{id}", get_connection)
    r.add_patch("/v1/connections/{id}", patch_connection)
    r.add_delete("/v1/connections/{id}", delete_connection)
    r.add_post("/v1/connections/{id}/test", test_saved)
    add_debug_routes(r)
    r.add_route(
        "*", "/v1/connections/{id}/proxy{tail:(/.*)?}", proxy, expect_handler=expect_handler
    )
    add_console(app)
    return app
