"""How a connection authenticates, one module per ``http.auth.type``.

The engine calls ``Authenticator.authorize`` before each request and, when
``wants_retry`` says the answer calls for it, ``on_unauthorized`` then
``authorize`` again for the one retry. Schemes reach token and login
endpoints through the engine's ``send`` (so through the agent in on-premise
mode) and store rotated secrets through ``save_secrets``.
"""

from __future__ import annotations

from multidict import CIMultiDictProxy

from server.proxy.auth.base import Grant, Handle, LoginFailed, Scheme, TokenRefreshFailed, Tools
from server.proxy.auth.basic import Basic
from server.proxy.auth.cookie import Cookie
from server.proxy.auth.digest import Digest
from server.proxy.auth.oauth2 import OAuth2
from server.proxy.auth.token import Token

__all__ = ["Authenticator", "Grant", "LoginFailed", "TokenRefreshFailed", "Tools"]


class Authenticator:
    def __init__(self, tools: Tools) -> None:
        self._schemes: dict[str, Scheme] = {
            "token": Token(tools),
            "basic": Basic(),
            "digest": Digest(),
            "oauth2": OAuth2(tools),
            "cookie": Cookie(tools),
        }

    def __repr__(self) -> str:
        return f"<Authenticator schemes={sorted(self._schemes)}>"

    def _scheme(self, handle: Handle) -> Scheme | None:
        auth = handle.connection.http.auth
        return None if auth is None else self._schemes.get(auth.type)

    def may_retry(self, handle: Handle) -> bool:
        """Whether a request may be sent twice (its body is then kept to replay)."""
        scheme = self._scheme(handle)
        return scheme is not None and scheme.may_retry(handle)

    async def authorize(self, handle: Handle, method: str, target: str) -> Grant:
        """The request-target and headers to send this request with."""
        scheme = self._scheme(handle)
        if scheme is None:
            return Grant(target)
        return await scheme.authorize(handle, method, target)

    def grant_at_once(self, handle: Handle, target: str) -> Grant | None:
        """``authorize``'s grant when the scheme needs no waiting for it (no
        auth, basic, a token in hand) and never sends the request twice; None when
        it may (the body is then kept to replay) or must wait first: the fast
        path's one question, asked with one lookup of the scheme."""
        auth = handle.connection.http.auth
        scheme = None if auth is None else self._schemes.get(auth.type)
        if scheme is None:
            return Grant(target)
        if scheme.may_retry(handle):
            return None
        return scheme.grant_now(handle, target)

    def wants_retry(
        self, handle: Handle, grant: Grant, status: int, headers: CIMultiDictProxy[str]
    ) -> bool:
        """Called on each answer before it is read: should it be retried once?"""
        scheme = self._scheme(handle)
        return scheme is not None and scheme.wants_retry(handle, grant, status, headers)

    async def on_unauthorized(
        self, handle: Handle, grant: Grant, headers: CIMultiDictProxy[str]
    ) -> None:
        """Called after wants_retry said yes, before the retry's ``authorize``."""
        scheme = self._scheme(handle)
        if scheme is not None:
            await scheme.on_unauthorized(handle, grant, headers)

    def forget(self, conn_id: str) -> None:
        """Drop what is cached for a connection (it was edited or deleted)."""
        for scheme in self._schemes.values():
            scheme.forget(conn_id)
