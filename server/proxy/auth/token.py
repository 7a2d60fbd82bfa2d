"""Token auth: a token in a header or URL parameter, with an optional refresh
call (one shared by concurrent callers) when the API answers one of the
``refresh.fail_status_codes``; a rotated refresh token is stored."""

from __future__ import annotations

import asyncio
import json
import time

import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from server.connections.model import Connection, TokenAuth, media_type_header
from server.errors import RelayError
from server.proxy.auth.base import (
    AUTH_BODY_LIMIT,
    Grant,
    Handle,
    States,
    TokenRefreshFailed,
    Tools,
    describe,
    state_key,
)
from server.proxy.success_path import lookup
from server.proxy.templating import TemplateError, render_body, render_header_value, render_uri
from server.proxy.urls import join_uri, with_target_param

log = structlog.get_logger("sluice.relay.auth")

REFRESH_TOKEN_KEY = "refresh_token"  # noqa: S105 - http.encrypted key, not a secret


class Token:
    def __init__(self, tools: Tools) -> None:
        self._tools = tools
        self._locks = States(asyncio.Lock)
        self._latest: dict[str, str] = {}
        self._latest_refresh: dict[str, str] = {}

    def may_retry(self, handle: Handle) -> bool:
        return _auth(handle).refresh is not None

    async def authorize(self, handle: Handle, method: str, target: str) -> Grant:
        auth = _auth(handle)
        if auth.refresh is not None and not auth.token:
            await self._refresh(handle, used=None)
            auth = _auth(handle)
        return _grant(auth, target)

    def grant_now(self, handle: Handle, target: str) -> Grant | None:
        auth = _auth(handle)
        if auth.refresh is not None and not auth.token:
            return None  # the first token is fetched first: authorize
        return _grant(auth, target)

    def wants_retry(
        self, handle: Handle, grant: Grant, status: int, headers: CIMultiDictProxy[str]
    ) -> bool:
        refresh = _auth(handle).refresh
        return refresh is not None and status in refresh.fail_status_codes

    async def on_unauthorized(
        self, handle: Handle, grant: Grant, headers: CIMultiDictProxy[str]
    ) -> None:
        await self._refresh(handle, used=grant.used)

    def forget(self, conn_id: str) -> None:
        self._latest.pop(conn_id, None)
        self._latest_refresh.pop(conn_id, None)
        self._locks.forget(conn_id)

    # -- refresh --------------------------------------------------------------
    async def _refresh(self, handle: Handle, used: str | None) -> None:
        key = state_key(handle)
        lock = self._locks.get(handle)
        async with lock:
            latest = self._latest.get(key)
            if latest is not None and latest != used:
                _set(handle, token=latest)  # another caller refreshed meanwhile
                return
            rotated = self._latest_refresh.get(key)
            if rotated is not None:
                _set(handle, refresh_token=rotated)
            token, refresh_token = await self._call(handle)
            _set(handle, token=token, refresh_token=refresh_token)
            if handle.id is None:
                return
            self._latest[key] = token
            secrets = {"http.auth.token": token}
            if refresh_token is not None:
                self._latest_refresh[key] = refresh_token
                secrets[f"http.encrypted.{REFRESH_TOKEN_KEY}"] = refresh_token
            await self._tools.save_secrets(handle.id, secrets)

    async def _call(self, handle: Handle) -> tuple[str, str | None]:
        refresh = _auth(handle).refresh
        assert refresh is not None
        context = handle.template_context()
        try:
            media_type = refresh.media_type or handle.connection.http.media_type
            relative = render_uri(
                refresh.relative_uri or "", context, name="http.auth.refresh.relative_uri"
            )
            body = render_body(refresh.body, context, media_type) if refresh.body else None
            headers: CIMultiDict[str] = CIMultiDict()
            content_type = media_type_header(media_type)
            headers["Content-Type"] = content_type
            headers["Accept"] = content_type
            for header in refresh.headers:
                headers[header.name] = render_header_value(
                    header.value, context, name=f"refresh header {header.name}"
                )
        except TemplateError as exc:
            self._tools.count("failed")
            raise TokenRefreshFailed(f"refresh template: {exc}") from None
        url = join_uri(handle.connection.http.base_uri, relative)
        began = time.perf_counter()
        try:
            response = await self._tools.send(
                handle,
                refresh.method,
                url,
                headers,
                body.encode() if body is not None else None,
            )
        except RelayError as exc:
            self._tools.count("failed")
            raise TokenRefreshFailed(f"refresh call failed: {handle.mask(str(exc))}") from exc
        async with response:
            raw = await response.content.read(AUTH_BODY_LIMIT)
        ms = (time.perf_counter() - began) * 1000
        if response.status >= 400:
            self._tools.count("failed")
            raise TokenRefreshFailed(
                f"refresh call answered HTTP {response.status}: {describe(raw, handle)}"
            )
        try:
            document = json.loads(raw)
        except ValueError:
            self._tools.count("failed")
            raise TokenRefreshFailed(
                f"refresh answer is not JSON: {describe(raw, handle)}"
            ) from None
        found, value = lookup(document, refresh.token_path or "")
        if not found or value in (None, "") or isinstance(value, dict | list):
            self._tools.count("failed")
            raise TokenRefreshFailed(
                f"no token at path {refresh.token_path!r} in the refresh answer; "
                f"it held: {describe(raw, handle)}"
            )
        rotated: str | None = None
        if refresh.refresh_token_path:
            found, new = lookup(document, refresh.refresh_token_path)
            if found and isinstance(new, str) and new:
                rotated = new
        self._tools.count("ok")
        log.info("token_refreshed", connection=handle.id, ms=round(ms, 1), rotated=bool(rotated))
        return str(value), rotated


def _grant(auth: TokenAuth, target: str) -> Grant:
    if not auth.token:
        return Grant(target)
    if auth.location == "url" and auth.param_name:
        return Grant(with_target_param(target, auth.param_name, auth.token), used=auth.token)
    scheme = (auth.scheme or "").strip()
    value = f"{scheme} {auth.token}" if scheme else auth.token
    return Grant(target, [(auth.header_name or "Authorization", value)], used=auth.token)


def _auth(handle: Handle) -> TokenAuth:
    auth = handle.connection.http.auth
    assert isinstance(auth, TokenAuth)
    return auth


def _set(handle: Handle, *, token: str | None = None, refresh_token: str | None = None) -> None:
    """Put a new token (and rotated refresh token) into the handle's settings."""
    connection: Connection = handle.connection
    http = connection.http
    updates: dict[str, object] = {}
    if token is not None:
        updates["auth"] = _auth(handle).model_copy(update={"token": token})
        handle.masks.append(token)
    if refresh_token is not None:
        updates["encrypted"] = {**http.encrypted, REFRESH_TOKEN_KEY: refresh_token}
        handle.masks.append(refresh_token)
    handle.connection = connection.model_copy(update={"http": http.model_copy(update=updates)})
