"""Outbound request heads made once per distinct request of a connection.

A kept-alive caller that sends the same request again (a poller, a client
that calls one endpoint in a loop) would otherwise have its URL joined, its
fields rewritten and its head serialised anew each time, for the same
bytes. ``PreparedRequests`` keeps what those steps made, keyed by everything
they read, so the fast path (``Engine.begin_now``) sends the head it made
the first time.

Its lifetime is that of a connection's cached settings
(``server.connections.service``): an edit, another relay's change, or the
cache entry's expiry gives the connection a new, empty one, so a head never
outlives the settings it was made from. Each entry also names the settings
object it was made from and is used only with that very object (a handle
whose token was refreshed carries a copy of the settings, and makes its own).

A request the fast path sent twice is also kept whole (``requests``), keyed
by what the caller sent (method, path, fields, body size): its next repeat
finds the head in one look, without joining the target, asking the auth
scheme for its grant, or making the key of the head again. Only what those
steps make from the settings alone is kept so: a grant the scheme gives at
once (``Authenticator.grant_at_once``, a function of the settings and the
target), no templated field, no TLS context (one looked up per request).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from yarl import URL

from server.connections.model import Connection
from server.tunnel.stream_pool import Prepared

# What ``requests`` keeps of a request: the settings it was made from (used
# only with that very object), the API's origin, the head, and the secrets
# the auth scheme added to the handle's masks for it.
Kept = tuple[Connection, URL, Prepared, tuple[str, ...]]

# Distinct requests kept per connection; past it, the oldest half is dropped.
LIMIT = 256


class PreparedRequests:
    """The joined targets and prepared heads of one connection's settings."""

    __slots__ = ("_heads", "_targets", "requests")

    def __init__(self) -> None:
        self._targets: dict[tuple[str, str], tuple[URL, str]] = {}
        self._heads: dict[Hashable, tuple[Connection, Prepared]] = {}
        # Read by the engine with a plain ``get`` (a Python call fewer per
        # request than a method); filled through ``keep_request``.
        self.requests: dict[Hashable, Kept] = {}

    def __repr__(self) -> str:
        return f"<PreparedRequests targets={len(self._targets)} heads={len(self._heads)}>"

    def target(self, base_uri: str, relative: str) -> tuple[URL, str] | None:
        """The origin and request-target ``join_target`` made for these, if kept."""
        return self._targets.get((base_uri, relative))

    def keep_target(self, base_uri: str, relative: str, joined: tuple[URL, str]) -> None:
        _bounded(self._targets)
        self._targets[(base_uri, relative)] = joined

    def head(self, key: Hashable, connection: Connection) -> Prepared | None:
        """The head made for *key* from *connection* (this very object), if kept."""
        kept = self._heads.get(key)
        if kept is None or kept[0] is not connection:
            return None
        return kept[1]

    def keep_head(self, key: Hashable, connection: Connection, prepared: Prepared) -> None:
        _bounded(self._heads)
        self._heads[key] = (connection, prepared)

    def keep_request(self, key: Hashable, kept: Kept) -> None:
        """Keep a whole request the fast path sent (the module's doc)."""
        _bounded(self.requests)
        self.requests[key] = kept


def _bounded(kept: dict[Any, Any]) -> None:
    """Make room for one more entry (dicts keep insertion order: oldest first)."""
    if len(kept) >= LIMIT:
        for old in list(kept)[: LIMIT // 2]:
            del kept[old]
