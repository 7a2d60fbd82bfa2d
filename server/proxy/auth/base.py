"""What every auth scheme shares: the grant it adds to a request, its errors,
and the engine's calls it may use (send a request, store a rotated secret)."""

from __future__ import annotations

import json
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from server.connections.model import Connection
from server.errors import RelayError
from server.tunnel.http1 import Answer


class Handle(Protocol):
    """The engine's Handle as schemes see it: settings with secrets decrypted,
    replaced when a token or refresh token changes; ``masks`` lists values
    to hide in messages."""

    id: str | None
    connection: Connection
    masks: list[str]

    def template_context(self) -> dict[str, Any]: ...

    def mask(self, text: str) -> str: ...


T = TypeVar("T")

# Bodies read from token, refresh and login answers (they are small).
AUTH_BODY_LIMIT = 1024 * 1024


class TokenRefreshFailed(RelayError):
    type = "token_refresh_failed"
    status = 502
    title = "The connection's token could not be refreshed"


class LoginFailed(RelayError):
    type = "login_failed"
    status = 502
    title = "The connection could not log in to the API"


class Send(Protocol):
    """The engine's way to the API (directly, or through the connection's agent)."""

    def __call__(
        self,
        handle: Handle,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | None,
    ) -> Awaitable[Answer]: ...


# (connection id, {secret path: new value}): store rotated secrets sealed.
SaveSecrets = Callable[[str, dict[str, str]], Awaitable[None]]


@dataclass
class Grant:
    """What a scheme adds to one request, and what it used (to tell, on a
    401, whether another caller already replaced it)."""

    target: str  # the request-target (origin-form), maybe with a credential added
    headers: list[tuple[str, str]] = field(default_factory=list)
    used: Any = None


@dataclass
class Tools:
    """The engine services a scheme may call."""

    send: Send
    save_secrets: SaveSecrets
    on_refresh: Callable[[str], None] | None = None

    def count(self, outcome: str) -> None:
        if self.on_refresh is not None:
            self.on_refresh(outcome)


class Scheme(Protocol):
    """One auth type. ``authorize`` runs before each request;
    ``wants_retry`` looks at the answer (no awaiting, nothing read);
    ``on_unauthorized`` runs when it said yes, before the one retry."""

    def may_retry(self, handle: Handle) -> bool: ...

    async def authorize(self, handle: Handle, method: str, target: str) -> Grant: ...

    def grant_now(self, handle: Handle, target: str) -> Grant | None:
        """What ``authorize`` would give, when it needs no waiting; else None."""
        ...

    def wants_retry(
        self, handle: Handle, grant: Grant, status: int, headers: CIMultiDictProxy[str]
    ) -> bool: ...

    async def on_unauthorized(
        self, handle: Handle, grant: Grant, headers: CIMultiDictProxy[str]
    ) -> None: ...

    def forget(self, conn_id: str) -> None: ...


def state_key(handle: Handle) -> str:
    """Connection id, or the handle's identity for unsaved settings (a test)."""
    return handle.id or f"unsaved:{id(handle)}"


class States(Generic[T]):
    """A scheme's state per connection (token, session, challenge).

    A saved connection's lives until ``forget``; an unsaved one's (the test
    endpoint's) goes when its handle does, so tested secrets do not pile up.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._states: dict[str, T] = {}

    def __len__(self) -> int:
        return len(self._states)

    def get(self, handle: Handle) -> T:
        key = state_key(handle)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self._factory()
            if handle.id is None:
                weakref.finalize(handle, self._states.pop, key, None)
        return state

    def forget(self, conn_id: str) -> None:
        self._states.pop(conn_id, None)


def describe(raw: bytes, handle: Handle) -> str:
    """A short, secret-masked description of a response body for error messages.

    Masked before it is shortened: a secret cut in two would no longer match.
    """
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        text = handle.mask(raw.decode("utf-8", "replace"))[:160]
        return repr(text) if text else "an empty body"
    if isinstance(document, dict):
        parts = []
        for key, value in list(document.items())[:8]:
            shown = "{…}" if isinstance(value, dict | list) else handle.mask(json.dumps(value))
            parts.append(f"{handle.mask(str(key))[:40]}={shown[:60]}")
        return "{" + ", ".join(parts) + "}"
    return handle.mask(json.dumps(document))[:160]
