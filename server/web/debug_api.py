"""What a connection did: its debug log (open and close the window, page the
log) and its traffic over the last hour."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from server.connections.service import ConnectionNotFound
from server.proxy.debug_log import MAX_MINUTES
from server.storage.store import utcnow
from server.web.paging import page_query
from server.web.problems import validation_problem
from server.web.services import audit, services_of


async def _body(request: web.Request) -> Any:
    if not request.body_exists:
        return {}
    try:
        return await request.json(loads=json.loads)
    except ValueError:
        raise web.HTTPBadRequest(reason="Invalid JSON", text="the body is not valid JSON") from None


async def start_debug(request: web.Request) -> web.Response:
    """POST /v1/connections/{id}/debug {"minutes": N}: record for N minutes (at most 60)."""
    conn_id = request.match_info["id"]
    document = await _body(request)
    minutes = document.get("minutes", 15) if isinstance(document, dict) else None
    if (
        isinstance(minutes, bool)
        or not isinstance(minutes, int | float)
        or not 0 < minutes <= MAX_MINUTES
    ):
        return validation_problem(
            [{"field": "minutes", "message": f"a number of minutes above 0, at most {MAX_MINUTES}"}]
        )
    window = await services_of(request).debug.start(conn_id, float(minutes))
    if window is None:
        raise ConnectionNotFound(conn_id)
    await audit(request, "connection.debug_started", conn_id, minutes=minutes)
    return web.json_response(window.as_dict() | {"active": True})


async def stop_debug(request: web.Request) -> web.Response:
    """DELETE /v1/connections/{id}/debug: stop recording now (the log stays)."""
    conn_id = request.match_info["id"]
    await services_of(request).connections.get(conn_id)  # 404 for an unknown id
    window = await services_of(request).debug.stop(conn_id)
    await audit(request, "connection.debug_stopped", conn_id)
    return web.json_response((window.as_dict() if window else {}) | {"active": False})


async def debug_log(request: web.Request) -> web.Response:
    """GET /v1/connections/{id}/debug-log?limit=&before=: newest entries first."""
    conn_id = request.match_info["id"]
    services = services_of(request)
    await services.connections.get(conn_id)  # 404 for an unknown id
    page = page_query(request.query, default=50, maximum=200, item="an entry")
    if isinstance(page, web.Response):
        return page
    limit, before = page
    entries = await services.debug.page(conn_id, limit=limit, before=before)
    window = await services.debug.window(conn_id)
    view: dict[str, Any] = {
        "window": window.as_dict() if window else None,
        "active": window is not None and window.until > utcnow(),
        "entries": entries,
        "next_before": entries[-1]["id"] if len(entries) == limit else None,
    }
    return web.json_response(view)


async def traffic(request: web.Request) -> web.Response:
    """GET /v1/connections/{id}/traffic: the last hour, minute by minute.

    In a cluster, every live relay's requests (and ``relays``: which answered);
    ``?scope=relay`` gives this relay's own series with its kept samples (what
    the other relays ask for over the hop).
    """
    conn_id = request.match_info["id"]
    services = services_of(request)
    await services.connections.get(conn_id)  # 404 for an unknown id
    scope = request.query.get("scope", "cluster")
    if scope not in ("cluster", "relay"):
        return validation_problem(
            [{"field": "scope", "message": "'relay' (this relay's own) or 'cluster' (the default)"}]
        )
    if scope == "relay":
        return web.json_response(
            {"relay": services.presence.relay_id, "series": services.stats.export(conn_id)}
        )
    if services.cluster_charts is not None:
        return web.json_response(await services.cluster_charts.last_hour(conn_id, services.stats))
    return web.json_response({"minutes": services.stats.last_hour(conn_id)})


def add_debug_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/connections/{id}/debug", start_debug)
    router.add_delete("/v1/connections/{id}/debug", stop_debug)
    router.add_get("/v1/connections/{id}/debug-log", debug_log)
    router.add_get("/v1/connections/{id}/traffic", traffic)
