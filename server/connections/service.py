"""Connections: validated, secrets encrypted at rest, served without secrets."""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from server.connections.documents import (
    iter_secrets,
    map_secrets,
    merge_patch,
    public_view,
    secret_context,
    set_secret,
    validation_problems,
)
from server.connections.model import Connection
from server.connections.status import health_view
from server.proxy.engine import Handle
from server.proxy.prepared import PreparedRequests
from server.secrets.crypto import DecryptionError, SecretBox
from server.storage.health import HealthRecord
from server.storage.store import ConnectionRow, Store

_ID_ALPHABET = string.ascii_lowercase + string.digits
CACHE_SECONDS = 2.0
# Fields of the view that are not settings; a client may send them back.
READ_ONLY_FIELDS = frozenset(
    {"id", "created_at", "updated_at", "last_test", "status", "last_checked_at", "last_error"}
)

# When read, the settings, their secrets, the heads made from them (server.proxy.prepared).
_Cached = tuple[float, Connection, list[str], PreparedRequests]


def new_connection_id() -> str:
    return "con_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


class InvalidConnection(Exception):
    """A connection document failed validation; `problems` name each field."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__(f"{len(problems)} invalid field(s)")
        self.problems = problems


class ConnectionNotFound(KeyError):
    pass


class ConnectionService:
    def __init__(
        self,
        store: Store,
        box: SecretBox,
        reload_box: Callable[[], SecretBox] | None = None,
        remember_secrets: Callable[..., None] | None = None,
        *,
        agent_online: Callable[[str], bool] | None = None,
        min_health_interval: float = 30.0,
    ) -> None:
        """*remember_secrets* is told every secret value a connection holds
        when it is decrypted (the log masker), so none reaches a log line."""
        self._store = store
        self._remember = remember_secrets
        self._agent_online = agent_online
        self._min_health_interval = min_health_interval
        self._box = box
        self._reload_box = reload_box
        self._cache: dict[str, _Cached] = {}
        self._loading: dict[str, tuple[int, asyncio.Future[_Cached]]] = {}
        self._purged = time.monotonic()
        self._generation = 0

    def __repr__(self) -> str:
        return f"<ConnectionService {self._box!r}>"

    # -- validation -----------------------------------------------------------
    async def validate(self, document: Any) -> Connection:
        if not isinstance(document, dict):
            raise InvalidConnection([{"field": "", "message": "expected a JSON object"}])
        try:
            connection = Connection.model_validate(document)
        except ValidationError as exc:
            raise InvalidConnection(validation_problems(exc)) from None
        if (
            connection.agent_id is not None
            and await self._store.get_agent(connection.agent_id) is None
        ):
            raise InvalidConnection(
                [{"field": "agent_id", "message": f"no agent with id {connection.agent_id!r}"}]
            )
        health = connection.http.health
        if health is not None and health.interval_seconds < self._min_health_interval:
            raise InvalidConnection(
                [
                    {
                        "field": "http.health.interval_seconds",
                        "message": f"must be at least {self._min_health_interval:g} seconds",
                    }
                ]
            )
        return connection

    # -- sealing --------------------------------------------------------------
    def _seal(self, conn_id: str, connection: Connection) -> str:
        doc = map_secrets(
            connection.model_dump(mode="json"),
            lambda path, value: self._box.encrypt(value, context=secret_context(conn_id, path)),
        )
        return json.dumps(doc, separators=(",", ":"))

    def _open(self, row: ConnectionRow) -> Connection:
        doc = map_secrets(
            json.loads(row.document),
            lambda path, value: self._decrypt(value, secret_context(row.id, path)),
        )
        return Connection.model_validate(doc)

    def _decrypt(self, value: str, context: str) -> str:
        try:
            return self._box.decrypt(value, context=context)
        except DecryptionError:
            # 'sluice-server rotate-master-key' may have run while we were up:
            # read the key files again once before giving up.
            if self._reload_box is None:
                raise
            self._box = self._reload_box()
            return self._box.decrypt(value, context=context)

    def _public(
        self, row: ConnectionRow, connection: Connection, health: HealthRecord | None = None
    ) -> dict[str, Any]:
        view = public_view(connection)
        view["id"] = row.id
        view["created_at"] = row.created_at.isoformat()
        view["updated_at"] = row.updated_at.isoformat()
        view["last_test"] = json.loads(row.last_test) if row.last_test else None
        view.update(health_view(row.mode, row.agent_id, health, self._agent_online))
        return view

    # -- CRUD -------------------------------------------------------------------
    async def preview(self, document: Any) -> dict[str, Any]:
        """What ``create`` would answer (without id and times), creating nothing."""
        return public_view(await self.validate(document))

    async def create(self, document: Any) -> dict[str, Any]:
        connection = await self.validate(document)
        conn_id = new_connection_id()
        row = await self._store.create_connection(
            conn_id,
            connection.name,
            connection.mode,
            connection.agent_id,
            self._seal(conn_id, connection),
        )
        return self._public(row, connection)

    async def _row(self, conn_id: str) -> ConnectionRow:
        row = await self._store.get_connection(conn_id)
        if row is None:
            raise ConnectionNotFound(conn_id)
        return row

    async def get(self, conn_id: str) -> dict[str, Any]:
        row = await self._row(conn_id)
        return self._public(row, self._open(row), await self._store.health.get(conn_id))

    async def list(self) -> list[dict[str, Any]]:
        health = await self._store.health.all()
        return [
            self._public(row, self._open(row), health.get(row.id))
            for row in await self._store.list_connections()
        ]

    async def patch(self, conn_id: str, patch: Any) -> dict[str, Any]:
        if not isinstance(patch, dict):
            raise InvalidConnection([{"field": "", "message": "expected a JSON object"}])
        row = await self._row(conn_id)
        patch = {k: v for k, v in patch.items() if k not in READ_ONLY_FIELDS}
        current = self._open(row).model_dump(mode="json")
        connection = await self.validate(merge_patch(copy.deepcopy(current), patch))
        await self._store.update_connection(
            conn_id,
            connection.name,
            connection.mode,
            connection.agent_id,
            self._seal(conn_id, connection),
        )
        self.forget(conn_id)
        return await self.get(conn_id)

    async def delete(self, conn_id: str) -> None:
        self.forget(conn_id)
        deleted = await self._store.delete_connection(conn_id)
        self.forget(conn_id)  # a request may have cached it again while the row went
        if not deleted:
            raise ConnectionNotFound(conn_id)

    # -- for the engine -----------------------------------------------------------
    async def handle(self, conn_id: str) -> Handle:
        """The connection, decrypted, for one request.

        Decrypted settings are cached for CACHE_SECONDS: every proxied request
        needs them, and reading, decrypting and validating costs more than
        forwarding a small request. Local edits drop the entry at once; an
        edit made through another relay sharing the database shows after at
        most CACHE_SECONDS.
        """
        now = time.monotonic()
        if now - self._purged > CACHE_SECONDS:
            self._purge(now)
        hit = self._cache.get(conn_id)
        if hit is None or now - hit[0] > CACHE_SECONDS:
            # One read per expiry however many requests wait for it: under load
            # every caller of a just-expired entry would otherwise read,
            # decrypt and validate the same row at once.
            loading = self._loading.get(conn_id)
            if loading is None or loading[0] != self._generation:
                task = asyncio.ensure_future(self._load(conn_id, self._generation))
                task.add_done_callback(_retrieve)
                loading = (self._generation, task)
                self._loading[conn_id] = loading
            hit = await asyncio.shield(loading[1])
        return Handle(id=conn_id, connection=hit[1], masks=list(hit[2]), prepared=hit[3])

    def cached_handle(self, conn_id: str) -> Handle | None:
        """``handle`` without waiting: the connection when its cached entry is
        fresh, else None (then ``handle`` reads it)."""
        hit = self._cache.get(conn_id)
        if hit is None or time.monotonic() - hit[0] > CACHE_SECONDS:
            return None
        return Handle(id=conn_id, connection=hit[1], masks=list(hit[2]), prepared=hit[3])

    def _purge(self, now: float) -> None:
        """Drop expired entries (at the first request after they expire), so an
        unused connection's decrypted secrets do not stay in memory."""
        self._purged = now
        for conn_id in [k for k, hit in self._cache.items() if now - hit[0] > CACHE_SECONDS]:
            del self._cache[conn_id]

    async def _load(self, conn_id: str, generation: int) -> _Cached:
        read_at = time.monotonic()  # the entry is as old as the read's start
        try:
            row = await self._row(conn_id)
            connection = self._open(row)
        finally:
            current = self._loading.get(conn_id)
            if current is not None and current[0] == generation:
                del self._loading[conn_id]
        hit = (read_at, connection, _secret_values(connection, self._remember), PreparedRequests())
        # An edit that landed while we read must not be undone by our copy.
        if generation == self._generation:
            self._cache[conn_id] = hit
        if len(self._cache) > 10_000:
            self._cache.pop(next(iter(self._cache)))
        return hit

    def forget(self, conn_id: str) -> None:
        self._generation += 1
        self._cache.pop(conn_id, None)

    async def unsaved_handle(self, document: Any) -> Handle:
        connection = await self.validate(document)
        return Handle(
            id=None, connection=connection, masks=_secret_values(connection, self._remember)
        )

    async def save_token(self, conn_id: str, token: str) -> None:
        """Store a refreshed token (encrypted) without touching anything else."""
        await self.save_secrets(conn_id, {"http.auth.token": token})

    async def save_secrets(self, conn_id: str, values: dict[str, str]) -> None:
        """Store refreshed or rotated secrets (sealed), keyed by their path
        (``http.auth.token``, ``http.encrypted.refresh_token``…), nothing else."""
        row = await self._store.get_connection(conn_id)
        if row is None:
            return
        doc = self._open(row).model_dump(mode="json")
        for path, value in values.items():
            if path.startswith("http.auth.") and doc["http"].get("auth") is None:
                return  # auth was removed meanwhile
            if path.startswith("http.encrypted."):
                doc["http"].setdefault("encrypted", {})
            set_secret(doc, path, value)
        connection = Connection.model_validate(doc)
        await self._store.update_document(conn_id, self._seal(conn_id, connection))
        self.forget(conn_id)
        await self._store.audit("relay", "connection.token_refreshed", conn_id)

    async def record_test(self, conn_id: str, result: dict[str, Any]) -> None:
        await self._store.set_last_test(conn_id, json.dumps(result))

    async def reseal_all(self, box: SecretBox) -> int:
        """Re-encrypt every stored secret under *box*'s current key."""

        def rewrite(conn_id: str, document: str) -> str:
            doc = map_secrets(
                json.loads(document),
                lambda path, value: box.rotate(value, context=secret_context(conn_id, path)),
            )
            return json.dumps(doc, separators=(",", ":"))

        return await self._store.rewrite_documents(rewrite)


def _retrieve(task: asyncio.Future[_Cached]) -> None:
    """Mark a load's failure as seen: its waiters may all have gone."""
    if not task.cancelled():
        task.exception()


def _secret_values(
    connection: Connection, remember: Callable[..., None] | None = None
) -> list[str]:
    values = [value for _path, value in iter_secrets(connection.model_dump(mode="json")) if value]
    if remember is not None:
        remember(*values)
    return values
