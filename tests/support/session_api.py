"""An API with a login endpoint that sets a session cookie (for cookie auth tests).

POST /login with ``{"user", "password"}`` sets ``sid`` (and a second cookie);
every other path needs a live ``sid`` or answers 401. ``expire_all`` ends the
sessions, as a server's session timeout would.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

USER = "ops"
PASSWORD = "pw-" + "c00kie" * 4


@dataclass
class SessionAPI:
    port: int = 0
    sessions: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)
    logins: int = 0
    failed_logins: int = 0
    unauthorized: int = 0
    cookies_seen: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expire_all(self) -> None:
        self.sessions.clear()


async def serve_session_api() -> AsyncIterator[SessionAPI]:
    api = SessionAPI()

    async def login(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = {}
        if body.get("user") != USER or body.get("password") != PASSWORD:
            api.failed_logins += 1
            return web.json_response({"error": "bad credentials"}, status=403)
        api.logins += 1
        sid = "sid-" + secrets.token_urlsafe(18)
        api.sessions.add(sid)
        api.issued.append(sid)
        response = web.json_response({"welcome": USER})
        response.set_cookie("sid", sid, httponly=True, path="/")
        response.set_cookie("lang", "en", path="/")
        return response

    async def data(request: web.Request) -> web.Response:
        api.cookies_seen.append(request.headers.get("Cookie", ""))
        if request.cookies.get("sid") not in api.sessions:
            api.unauthorized += 1
            return web.json_response({"error": "session expired"}, status=401)
        return web.json_response(
            {"ok": True, "path": request.path, "lang": request.cookies["lang"]}
        )

    app = web.Application()
    app.router.add_post("/auth/login", login)
    app.router.add_route("*", "/{tail:.*}", data)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api.port = runner.addresses[0][1]
    try:
        yield api
    finally:
        await runner.cleanup()
