"""OAuth 2.0 (RFC 6749): an access token from the token endpoint, sent as
``Authorization: Bearer``.

The token is fetched on first use, again shortly before ``expires_in`` runs
out and once after a 401; concurrent callers share one token call. The token
endpoint is reached like the API (through the agent in on-premise mode). A
rotated refresh token is stored sealed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from server.connections.model import OAuth2Auth
from server.errors import RelayError
from server.proxy.auth.base import (
    AUTH_BODY_LIMIT,
    Grant,
    Handle,
    States,
    TokenRefreshFailed,
    Tools,
    describe,
)

log = structlog.get_logger("sluice.relay.auth")

# A token is replaced this long before it expires (at most; a tenth of its
# life for short-lived ones), so a request never carries one about to lapse.
EXPIRY_MARGIN = 30.0


@dataclass
class _State:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    access_token: str | None = None
    renew_at: float = float("inf")
    refresh_token: str | None = None  # rotated; newer than the handle's
    calls: int = 0

    def fresh(self) -> str | None:
        if self.access_token is not None and time.monotonic() < self.renew_at:
            return self.access_token
        return None


class OAuth2:
    def __init__(self, tools: Tools) -> None:
        self._tools = tools
        self._states = States(_State)

    def may_retry(self, handle: Handle) -> bool:
        return True

    def grant_now(self, handle: Handle, target: str) -> Grant | None:
        return None  # a session, challenge or token may have to be fetched first

    def _state(self, handle: Handle) -> _State:
        return self._states.get(handle)

    async def authorize(self, handle: Handle, method: str, target: str) -> Grant:
        state = self._state(handle)
        token = state.fresh()
        if token is None:
            async with state.lock:
                token = state.fresh()
                if token is None:
                    token = await self._fetch(handle, state)
        handle.masks.append(token)
        return Grant(target, [("Authorization", f"Bearer {token}")], used=token)

    def wants_retry(
        self, handle: Handle, grant: Grant, status: int, headers: CIMultiDictProxy[str]
    ) -> bool:
        return status == 401

    async def on_unauthorized(
        self, handle: Handle, grant: Grant, headers: CIMultiDictProxy[str]
    ) -> None:
        state = self._state(handle)
        async with state.lock:
            if state.access_token == grant.used:
                state.access_token = None  # the next authorize fetches one

    def forget(self, conn_id: str) -> None:
        self._states.forget(conn_id)

    # -- the token call ---------------------------------------------------------
    async def _fetch(self, handle: Handle, state: _State) -> str:
        auth = handle.connection.http.auth
        assert isinstance(auth, OAuth2Auth)
        form: dict[str, str] = {"grant_type": auth.grant_type}
        if auth.grant_type == "password":
            form["username"] = auth.username or ""
            form["password"] = auth.password or ""
        elif auth.grant_type == "refresh_token":
            form["refresh_token"] = state.refresh_token or auth.refresh_token or ""
        if auth.scope:
            form["scope"] = auth.scope
        if auth.audience:
            form["audience"] = auth.audience
        form.update(auth.extra_params)
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers["Accept"] = "application/json"
        if auth.client_id:
            if auth.client_secret and auth.client_credentials_location == "basic_header":
                # RFC 6749 §2.3.1: both form-encoded before joining.
                pair = f"{quote(auth.client_id, safe='')}:{quote(auth.client_secret, safe='')}"
                encoded = base64.b64encode(pair.encode()).decode("ascii")
                handle.masks.append(encoded)
                headers["Authorization"] = f"Basic {encoded}"
            else:
                form["client_id"] = auth.client_id
                if auth.client_secret:
                    form["client_secret"] = auth.client_secret
        url = URL(auth.token_uri, encoded=False)
        began = time.perf_counter()
        state.calls += 1
        try:
            response = await self._tools.send(
                handle, "POST", url, headers, urlencode(form).encode()
            )
        except RelayError as exc:
            self._tools.count("failed")
            raise TokenRefreshFailed(
                f"token endpoint {url.host} could not be reached: {handle.mask(str(exc))}"
            ) from exc
        async with response:
            raw = await response.content.read(AUTH_BODY_LIMIT)
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        if response.status >= 400 or not isinstance(document, dict):
            self._tools.count("failed")
            raise TokenRefreshFailed(_failure(response.status, document, raw, handle))
        access = document.get("access_token")
        if not isinstance(access, str) or not access:
            self._tools.count("failed")
            raise TokenRefreshFailed(
                f"the token endpoint's answer has no access_token: {describe(raw, handle)}"
            )
        handle.masks.append(access)
        now = time.monotonic()
        expires_in = document.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            margin = min(EXPIRY_MARGIN, max(expires_in, 0) / 10)
            state.renew_at = now + max(expires_in, 0) - margin
        else:
            state.renew_at = float("inf")
        state.access_token = access
        rotated = document.get("refresh_token")
        if isinstance(rotated, str) and rotated and auth.grant_type == "refresh_token":
            handle.masks.append(rotated)
            if rotated != (state.refresh_token or auth.refresh_token):
                state.refresh_token = rotated
                if handle.id is not None:
                    await self._tools.save_secrets(handle.id, {"http.auth.refresh_token": rotated})
        self._tools.count("ok")
        log.info(
            "oauth2_token_fetched",
            connection=handle.id,
            grant_type=auth.grant_type,
            expires_in=expires_in if isinstance(expires_in, int | float) else None,
            ms=round((time.perf_counter() - began) * 1000, 1),
        )
        return access


def _failure(status: int, document: object, raw: bytes, handle: Handle) -> str:
    """RFC 6749 §5.2: the provider's error and error_description, nothing else."""
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        # Masked before shortened: a secret cut in two would escape the mask.
        text = handle.mask(str(document["error"]))[:100]
        description = document.get("error_description")
        if isinstance(description, str) and description:
            text += f": {handle.mask(description)[:300]}"
        return f"the token endpoint answered HTTP {status}: {text}"
    return f"the token endpoint answered HTTP {status}: {describe(raw, handle)}"
