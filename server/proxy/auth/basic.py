"""HTTP Basic (RFC 7617): user and password, UTF-8, on every request."""

from __future__ import annotations

import base64

from multidict import CIMultiDictProxy

from server.connections.model import BasicAuth
from server.proxy.auth.base import Grant, Handle


def basic_credentials(username: str, password: str) -> str:
    """The ``Basic …`` header value (RFC 7617 with charset UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class Basic:
    """Nothing to refresh: a 401 is the API's answer, passed on as it is."""

    def may_retry(self, handle: Handle) -> bool:
        return False

    async def authorize(self, handle: Handle, method: str, target: str) -> Grant:
        return self.grant_now(handle, target)

    def grant_now(self, handle: Handle, target: str) -> Grant:
        auth = handle.connection.http.auth
        assert isinstance(auth, BasicAuth)
        value = basic_credentials(auth.username, auth.password or "")
        handle.masks.append(value.removeprefix("Basic "))
        return Grant(target, [("Authorization", value)])

    def wants_retry(
        self, handle: Handle, grant: Grant, status: int, headers: CIMultiDictProxy[str]
    ) -> bool:
        return False

    async def on_unauthorized(
        self, handle: Handle, grant: Grant, headers: CIMultiDictProxy[str]
    ) -> None:
        return None

    def forget(self, conn_id: str) -> None:
        return None
