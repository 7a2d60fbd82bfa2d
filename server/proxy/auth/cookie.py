"""Cookie sessions: log in, keep the cookies the login answer sets, send them
with every request, log in again once when the API answers 401.

The cookies live in the relay's memory only (never stored, never returned).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from server.connections.model import CookieAuth, media_type_header
from server.errors import RelayError
from server.proxy.auth.base import (
    AUTH_BODY_LIMIT,
    Grant,
    Handle,
    LoginFailed,
    States,
    Tools,
    describe,
)
from server.proxy.templating import TemplateError, render_body, render_header_value, render_uri
from server.proxy.urls import URLError, join_uri

log = structlog.get_logger("sluice.relay.auth")


@dataclass
class _Session:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cookie: str | None = None  # the Cookie header value
    logins: int = 0


class Cookie:
    def __init__(self, tools: Tools) -> None:
        self._tools = tools
        self._sessions = States(_Session)

    def may_retry(self, handle: Handle) -> bool:
        return True

    def grant_now(self, handle: Handle, target: str) -> Grant | None:
        return None  # a session, challenge or token may have to be fetched first

    def _session(self, handle: Handle) -> _Session:
        return self._sessions.get(handle)

    async def authorize(self, handle: Handle, method: str, target: str) -> Grant:
        session = self._session(handle)
        cookie = session.cookie
        if cookie is None:
            async with session.lock:
                if session.cookie is None:
                    session.cookie = await self._login(handle)
                cookie = session.cookie
        handle.masks.append(cookie)
        return Grant(target, [("Cookie", cookie)], used=cookie)

    def wants_retry(
        self, handle: Handle, grant: Grant, status: int, headers: CIMultiDictProxy[str]
    ) -> bool:
        return status == 401

    async def on_unauthorized(
        self, handle: Handle, grant: Grant, headers: CIMultiDictProxy[str]
    ) -> None:
        session = self._session(handle)
        async with session.lock:
            if session.cookie == grant.used:
                session.cookie = None

    def forget(self, conn_id: str) -> None:
        self._sessions.forget(conn_id)

    async def _login(self, handle: Handle) -> str:
        auth = handle.connection.http.auth
        assert isinstance(auth, CookieAuth)
        context = handle.template_context()
        media_type = auth.media_type or handle.connection.http.media_type
        try:
            uri = render_uri(auth.uri, context, name="http.auth.uri")
            body = render_body(auth.body, context, media_type) if auth.body else None
            headers: CIMultiDict[str] = CIMultiDict()
            headers["Content-Type"] = media_type_header(media_type)
            headers["Accept"] = media_type_header(media_type)
            for header in auth.headers:
                headers[header.name] = render_header_value(
                    header.value, context, name=f"login header {header.name}"
                )
            absolute = URL(uri)
            url = (
                absolute
                if absolute.is_absolute()
                else join_uri(handle.connection.http.base_uri, uri)
            )
        except (TemplateError, URLError, ValueError) as exc:
            raise LoginFailed(f"login request: {handle.mask(str(exc))}") from None
        began = time.perf_counter()
        try:
            response = await self._tools.send(
                handle, auth.method, url, headers, body.encode() if body is not None else None
            )
        except RelayError as exc:
            raise LoginFailed(f"login call failed: {handle.mask(str(exc))}") from exc
        async with response:
            raw = await response.content.read(AUTH_BODY_LIMIT)
            set_cookies = response.headers.getall("Set-Cookie", [])
        if response.status != auth.success_status:
            raise LoginFailed(
                f"login answered HTTP {response.status}, not {auth.success_status}: "
                f"{describe(raw, handle)}"
            )
        jar: dict[str, str] = {}
        for line in set_cookies:
            parsed: SimpleCookie = SimpleCookie()
            try:
                parsed.load(line)
            except CookieError:
                continue
            for name, morsel in parsed.items():
                jar[name] = morsel.coded_value
        if not jar:
            raise LoginFailed("the login answer set no cookie (no valid Set-Cookie header)")
        cookie = "; ".join(f"{name}={value}" for name, value in jar.items())
        handle.masks.append(cookie)
        handle.masks.extend(jar.values())
        log.info(
            "session_login",
            connection=handle.id,
            cookies=sorted(jar),
            ms=round((time.perf_counter() - began) * 1000, 1),
        )
        return cookie
