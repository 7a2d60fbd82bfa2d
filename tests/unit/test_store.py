"""The store on SQLite (default) or PostgreSQL (SLUICE_TEST_DATABASE=postgres)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from server.settings import sqlite_url
from server.storage.store import AgentInUse, Store
from sluice.tokens import AgentToken

# Also run against PostgreSQL by `make test` when SLUICE_TEST_POSTGRES_URL is set.
pytestmark = pytest.mark.postgres


@pytest.fixture
async def url(tmp_path: Path, database: str | None) -> str:
    return database or sqlite_url(tmp_path / "s.db")


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = await Store.open(url)
    try:
        yield s
    finally:
        await s.close()


async def test_agents_round_trip_and_token_checks(store: Store) -> None:
    agent, token = await store.create_agent("w1")
    assert (await store.get_agent(agent.id)) == agent
    assert (await store.authenticate_agent(token)) == agent
    wrong = AgentToken(agent_id=agent.id, secret="Z" * 40)
    assert await store.authenticate_agent(wrong) is None
    unknown = AgentToken(agent_id="agt_0000000000000000", secret=token.secret)
    assert await store.authenticate_agent(unknown) is None

    new = await store.rotate_agent_token(agent.id)
    assert new is not None
    assert await store.authenticate_agent(token) is None
    assert await store.authenticate_agent(new) is not None
    assert await store.rotate_agent_token("agt_nope") is None

    await store.touch_agent(agent.id)
    touched = await store.get_agent(agent.id)
    assert touched is not None
    assert touched.last_seen_at is not None


async def test_agent_in_use_and_connections_crud(store: Store) -> None:
    agent, _ = await store.create_agent("w1")
    row = await store.create_connection("con_1", "c", "on_premise", agent.id, '{"a":1}')
    with pytest.raises(AgentInUse) as err:
        await store.delete_agent(agent.id)
    assert err.value.connection_ids == ["con_1"]

    assert await store.update_connection("con_1", "c2", "cloud", None, '{"a":2}')
    got = await store.get_connection("con_1")
    assert got is not None
    assert (got.name, got.mode, got.agent_id, got.document) == ("c2", "cloud", None, '{"a":2}')
    assert got.updated_at >= row.created_at
    await store.set_last_test("con_1", '{"ok":true}')
    assert await store.update_document("con_1", '{"a":3}')
    got = await store.get_connection("con_1")
    assert got is not None
    assert got.last_test == '{"ok":true}'
    assert got.document == '{"a":3}'

    assert await store.delete_agent(agent.id)  # no longer referenced
    assert [c.id for c in await store.list_connections()] == ["con_1"]
    assert await store.rewrite_documents(lambda cid, doc: doc.replace("3", "4")) == 1
    got = await store.get_connection("con_1")
    assert got is not None
    assert got.document == '{"a":4}'
    assert await store.delete_connection("con_1")
    assert not await store.delete_connection("con_1")


async def test_reopen_keeps_everything_and_migrations_are_idempotent(url: str) -> None:
    first = await Store.open(url)
    agent, token = await first.create_agent("persisted")
    await first.create_connection("con_x", "x", "cloud", None, "{}")
    await first.close()
    second = await Store.open(url)
    try:
        assert await second.authenticate_agent(token) is not None
        assert [a.id for a in await second.list_agents()] == [agent.id]
        assert (await second.get_connection("con_x")) is not None
    finally:
        await second.close()


async def test_close_waits_for_a_connection_in_use_then_is_bounded(url: str) -> None:
    """A query still running when the store closes ends first: closing does
    not leave it to finish after the event loop (aiosqlite's thread then
    fails on a closed loop)."""
    store = await Store.open(url)
    held, release = asyncio.Event(), asyncio.Event()
    answers: list[int] = []

    async def query_in_flight() -> None:
        async with store.engine.connect() as db:
            answers.append((await db.execute(sa.text("SELECT 1"))).scalar_one())
            held.set()
            await release.wait()
            answers.append((await db.execute(sa.text("SELECT 2"))).scalar_one())

    task = asyncio.create_task(query_in_flight())
    await held.wait()
    closing = asyncio.create_task(store.close())
    done, _ = await asyncio.wait({closing}, timeout=0.3)
    assert not done, "closed while a connection was in use"
    release.set()
    async with asyncio.timeout(5):
        await closing
        await task
    assert answers == [1, 2]
