"""The relay's cache of decrypted connections: one read per expiry, edits win."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from server.connections import service as connections_module
from server.connections.service import ConnectionNotFound, ConnectionService
from server.secrets.crypto import MasterKey, SecretBox
from server.settings import sqlite_url
from server.storage.store import ConnectionRow, Store

TOKEN = "cache-test-token-0123456789"


class CountingStore(Store):
    """The real store, counting connection reads; *before_delete* runs just
    before a row is deleted (a request arriving at that moment)."""

    reads = 0
    before_delete: Callable[[], Awaitable[object]] | None = None

    async def get_connection(self, conn_id: str) -> ConnectionRow | None:
        self.reads += 1
        return await super().get_connection(conn_id)

    async def delete_connection(self, conn_id: str) -> bool:
        if self.before_delete is not None:
            await self.before_delete()
        return await super().delete_connection(conn_id)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[ConnectionService, CountingStore]]:
    store = await CountingStore.open(sqlite_url(tmp_path / "c.db"))
    assert isinstance(store, CountingStore)
    try:
        yield ConnectionService(store, SecretBox(MasterKey.generate())), store
    finally:
        await store.close()


def _document(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "mode": "cloud",
        "http": {
            "base_uri": "https://api.example.test/v1",
            "media_type": "json",
            "auth": {"type": "token", "token": TOKEN, "location": "header"},
        },
    }


async def test_concurrent_callers_of_an_expired_entry_share_one_read(
    service: tuple[ConnectionService, CountingStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, store = service
    conn_id = (await svc.create(_document("one")))["id"]
    handles = await asyncio.gather(*(svc.handle(conn_id) for _ in range(32)))
    assert store.reads == 1
    assert {h.connection.name for h in handles} == {"one"}
    assert all(h.masks == [TOKEN] for h in handles)
    # Each handle has its own mask list: a refresh appending to one leaves the others.
    handles[0].masks.append("x")
    assert handles[1].masks == [TOKEN]

    monkeypatch.setattr(connections_module, "CACHE_SECONDS", -1.0)  # everything expired
    await asyncio.gather(*(svc.handle(conn_id) for _ in range(32)))
    assert store.reads == 2


async def test_an_edit_during_a_read_is_not_undone(
    service: tuple[ConnectionService, CountingStore],
) -> None:
    svc, store = service
    conn_id = (await svc.create(_document("before")))["id"]
    stale = asyncio.ensure_future(svc.handle(conn_id))
    await asyncio.sleep(0)  # the read has started
    await svc.patch(conn_id, {"name": "after"})
    fresh = await svc.handle(conn_id)
    assert fresh.connection.name == "after"
    await stale
    assert (await svc.handle(conn_id)).connection.name == "after"
    assert store.reads >= 2


async def test_a_missing_connection_fails_every_waiter(
    service: tuple[ConnectionService, CountingStore],
) -> None:
    svc, store = service
    outcomes = await asyncio.gather(
        *(svc.handle("con_missing") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, ConnectionNotFound) for o in outcomes)
    assert store.reads == 1
    with pytest.raises(ConnectionNotFound):
        await svc.handle("con_missing")  # a failure is not cached
    assert store.reads == 2


async def test_a_cancelled_caller_does_not_cancel_the_read(
    service: tuple[ConnectionService, CountingStore],
) -> None:
    svc, store = service
    conn_id = (await svc.create(_document("kept")))["id"]
    first = asyncio.ensure_future(svc.handle(conn_id))
    second = asyncio.ensure_future(svc.handle(conn_id))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).connection.name == "kept"
    assert store.reads == 1


async def test_a_deleted_connection_is_not_served_from_the_cache(
    service: tuple[ConnectionService, CountingStore],
) -> None:
    svc, store = service
    conn_id = (await svc.create(_document("gone")))["id"]
    store.before_delete = lambda: svc.handle(conn_id)  # cached again mid-delete
    await svc.delete(conn_id)
    with pytest.raises(ConnectionNotFound):
        await svc.handle(conn_id)


async def test_expired_entries_leave_memory(
    service: tuple[ConnectionService, CountingStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, _ = service
    used = (await svc.create(_document("used")))["id"]
    idle = (await svc.create(_document("idle")))["id"]
    await svc.handle(used)
    await svc.handle(idle)
    monkeypatch.setattr(connections_module, "CACHE_SECONDS", -1.0)  # everything expired
    await svc.handle(used)
    assert idle not in svc._cache  # its decrypted token is gone too
