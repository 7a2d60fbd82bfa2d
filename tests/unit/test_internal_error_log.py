"""An unexpected failure in an API route logs the route's template, not the
caller's path (a proxied path is the caller's data)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import aiohttp
from aiohttp import web
from structlog.testing import capture_logs

from server.web.api import problems_middleware
from server.web.services import SERVICES, Services


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def test_internal_error_logs_the_route_not_the_path() -> None:
    app = web.Application(middlewares=[problems_middleware])
    app[SERVICES] = cast(Services, SimpleNamespace(metrics=None))
    app.router.add_get("/v1/things/{id}/proxy/{path:.*}", _boom)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with capture_logs() as logs:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{port}/v1/things/t1/proxy/private-caller-path?q=1"
                ) as resp,
            ):
                body = await resp.json()
        assert resp.status == 500
        assert body["type"].endswith("internal_error")
        [line] = [entry for entry in logs if entry["event"] == "internal_error"]
        assert line["path"] == "/v1/things/{id}/proxy/{path}"
        assert "private-caller-path" not in repr(logs)
    finally:
        await runner.cleanup()
