"""The relay's persistent state: SQLAlchemy Core async over SQLite or PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from server.schema import agents
from sluice.tokens import AgentToken, new_agent_id, new_token, secret_matches

_MIGRATIONS = Path(__file__).parent / "migrations"
# Compared against when no agent has the presented id, so that an unknown id
# costs the same time as a wrong secret.
_DUMMY_HASH = "0" * 64


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@dataclass(frozen=True, slots=True)
class AgentRecord:
    id: str
    name: str
    created_at: dt.datetime
    token_rotated_at: dt.datetime | None


def _agent(row: Any) -> AgentRecord:
    created = _aware(row.created_at)
    assert created is not None
    return AgentRecord(
        id=row.id,
        name=row.name,
        created_at=created,
        token_rotated_at=_aware(row.token_rotated_at),
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _upgrade(sync_conn: sa.Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


class Store:
    """Agents (and, later, connections) kept in one SQL database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def __repr__(self) -> str:
        return f"<Store {self._engine.url.render_as_string(hide_password=True)}>"

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect and bring the schema up to date (Alembic, in-process)."""
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return cls(engine)

    async def close(self) -> None:
        await self._engine.dispose()

    # -- agents -----------------------------------------------------------

    async def create_agent(self, name: str) -> tuple[AgentRecord, AgentToken]:
        agent_id = new_agent_id()
        token = new_token(agent_id)
        now = utcnow()
        async with self._engine.begin() as conn:
            await conn.execute(
                agents.insert().values(
                    id=agent_id, name=name, token_hash=token.secret_hash(), created_at=now
                )
            )
        return AgentRecord(id=agent_id, name=name, created_at=now, token_rotated_at=None), token

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(agents.select().where(agents.c.id == agent_id))).first()
        return _agent(row) if row else None

    async def list_agents(self) -> list[AgentRecord]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(agents.select().order_by(agents.c.created_at))).all()
        return [_agent(r) for r in rows]

    async def delete_agent(self, agent_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(agents.delete().where(agents.c.id == agent_id))
        return result.rowcount > 0

    async def rotate_agent_token(self, agent_id: str) -> AgentToken | None:
        token = new_token(agent_id)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                agents.update()
                .where(agents.c.id == agent_id)
                .values(token_hash=token.secret_hash(), token_rotated_at=utcnow())
            )
        return token if result.rowcount else None

    async def authenticate_agent(self, token: AgentToken) -> AgentRecord | None:
        """The agent this token belongs to, or None; constant time in the secret."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(agents.select().where(agents.c.id == token.agent_id))).first()
        ok = secret_matches(token.secret, row.token_hash if row else _DUMMY_HASH)
        return _agent(row) if row is not None and ok else None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
