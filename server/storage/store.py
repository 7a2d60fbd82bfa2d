"""The relay's persistent state: SQLAlchemy Core async over SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from server.storage.debug_log import DebugLogRecords
from server.storage.health import HealthRecords
from server.storage.private_files import private_sqlite_file
from server.storage.schema import agents, audit_events, changes, connections
from sluice import __version__
from sluice.tokens import AgentToken, new_agent_id, new_token, secret_matches

log = structlog.get_logger("sluice.relay.store")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Seconds a PostgreSQL statement may take unless the relay's settings say
# (database_timeout); admin commands use it as it is.
DATABASE_TIMEOUT = 30.0
# Compared against when no agent has the presented id, so that an unknown id
# costs the same time as a wrong secret.
_DUMMY_HASH = "0" * 64
# The PostgreSQL advisory lock taken while migrating (any fixed number).
_MIGRATE_LOCK = 0x51_1C_E0


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
    last_seen_at: dt.datetime | None = None
    # Set by authenticate_agent when the token presented is the previous one,
    # in a rotation's grace: when it stops working (and its tunnels close).
    token_expires_at: dt.datetime | None = None


def _agent(row: Any) -> AgentRecord:
    created = _aware(row.created_at)
    assert created is not None
    return AgentRecord(
        id=row.id,
        name=row.name,
        created_at=created,
        token_rotated_at=_aware(row.token_rotated_at),
        last_seen_at=_aware(row.last_seen_at),
    )


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    """A stored connection; `document` is JSON whose secrets are ciphertexts."""

    id: str
    name: str
    mode: str
    agent_id: str | None
    document: str
    last_test: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


def _connection(row: Any) -> ConnectionRow:
    created, updated = _aware(row.created_at), _aware(row.updated_at)
    assert created is not None
    assert updated is not None
    return ConnectionRow(
        id=row.id,
        name=row.name,
        mode=row.mode,
        agent_id=row.agent_id,
        document=row.document,
        last_test=row.last_test,
        created_at=created,
        updated_at=updated,
    )


class AgentInUse(Exception):
    """An agent cannot be deleted while connections use it."""

    def __init__(self, agent_id: str, connection_ids: list[str]) -> None:
        super().__init__(f"agent {agent_id} is used by {len(connection_ids)} connection(s)")
        self.agent_id = agent_id
        self.connection_ids = connection_ids


# The PostgreSQL channel relays LISTEN on; the payload is "<kind>:<target>".
CHANGES_CHANNEL = "sluice_changes"


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    """What a live tunnel's token is checked against after a change."""

    token_hash: str
    previous_token_hash: str | None
    previous_token_expires_at: dt.datetime | None

    def accepts(self, credential: str, now: dt.datetime) -> bool:
        """Whether a tunnel that logged in with *credential* (a hash) may stay."""
        if credential == self.token_hash:
            return True
        expires = self.previous_token_expires_at
        return (
            self.previous_token_hash is not None
            and credential == self.previous_token_hash
            and expires is not None
            and now < expires
        )


async def record_change(db: AsyncConnection, kind: str, target: str) -> None:
    """Tell every relay, when this transaction commits, that *target* changed.

    On PostgreSQL a NOTIFY goes out at commit; SQLite relays find the row at
    their next poll.
    """
    await db.execute(changes.insert().values(at=utcnow(), kind=kind, target=target[:64]))
    if db.dialect.name == "postgresql":
        await db.execute(sa.select(sa.func.pg_notify(CHANGES_CHANNEL, f"{kind}:{target[:64]}")))


class SchemaMismatch(Exception):
    """The database schema is not the one this program was built for."""


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """What opening the store did to the schema: revisions before and after."""

    before: str | None
    after: str


def _alembic(sync_conn: sa.Connection) -> tuple[Config, ScriptDirectory]:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = sync_conn
    return cfg, ScriptDirectory.from_config(cfg)


def _prepare_schema(sync_conn: sa.Connection, migrate: bool) -> SchemaChange:
    """Bring the schema to this program's head when *migrate*, else only check it.

    An empty database gets its schema either way: no relay runs on it yet.
    Raises SchemaMismatch, saying what to do, for a schema newer than this
    program, or (without *migrate*) older.
    """
    cfg, scripts = _alembic(sync_conn)
    head = scripts.get_current_head()
    assert head is not None
    current = MigrationContext.configure(sync_conn).get_current_revision()
    if current is not None:
        try:
            scripts.get_revision(current)
        except CommandError:
            raise SchemaMismatch(
                f"the database schema is at revision {current}, newer than this "
                f"sluice-server {__version__} knows (up to {head}): a newer version has "
                "migrated it; run that version's sluice-server"
            ) from None
        if current != head and not migrate:
            raise SchemaMismatch(
                f"the database schema is at revision {current}, older than this "
                f"sluice-server {__version__} needs ({head}); this command does not change "
                "the schema, since relays of the older version may be running on it. "
                "Upgrade the relays: run 'sluice-server migrate' (or 'sluice-server run') "
                "of this version, then this command"
            )
    if current != head:
        command.upgrade(cfg, "head")
    return SchemaChange(before=current, after=head)


class Store:
    """Agents, connections and the audit trail, kept in one SQL database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.health = HealthRecords(engine)
        self.debug = DebugLogRecords(engine)

    def __repr__(self) -> str:
        return f"<Store {self._engine.url.render_as_string(hide_password=True)}>"

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, timeout: float | None = None) -> Store:
        """Connect and bring the schema up to date (Alembic, in-process).

        With *migrate* False (admin commands) the schema is only checked:
        SchemaMismatch unless it is this program's (an empty one is created).
        """
        store, _ = await cls.open_reporting(url, migrate=migrate, timeout=timeout)
        return store

    @classmethod
    async def open_reporting(
        cls, url: str, *, migrate: bool, timeout: float | None = None
    ) -> tuple[Store, SchemaChange]:
        """As open(), also saying what happened to the schema.

        *timeout* bounds every PostgreSQL statement and connection attempt
        (asyncpg's own timers, so a database that stops answering without
        closing its connections gives errors, not requests that hang).
        """
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        elif url.startswith("postgresql+asyncpg"):
            limit = DATABASE_TIMEOUT if timeout is None else timeout
            kwargs["connect_args"] = {"timeout": limit, "command_timeout": limit}
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            private_sqlite_file(engine.url.database)
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            async with engine.begin() as db:
                if engine.dialect.name == "postgresql":
                    # Relays of a cluster start together: one migrates, the
                    # others wait here and then find the schema up to date.
                    await db.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK}
                    )
                change = await db.run_sync(_prepare_schema, migrate)
        except BaseException:
            await engine.dispose()
            raise
        if engine.dialect.name == "sqlite":
            private_sqlite_file(engine.url.database)  # the WAL files the upgrade made
        return cls(engine), change

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def close(self, timeout: float = 5.0) -> None:
        """Close the database's connections, once those in use are back
        (for up to *timeout* seconds).

        A query in flight when its caller was cancelled (an agent's login
        when the SSH server closes) still runs to its end, in aiosqlite's
        thread, and then hands its result to the event loop: disposing of
        the engine does not wait for a connection that is checked out, so
        that result could arrive after the loop closed (an error in the
        thread). A database that stalls holds this for *timeout* at most.
        """
        pool = self._engine.pool
        if isinstance(pool, sa.pool.QueuePool) and pool.checkedout():
            returned = asyncio.Event()
            loop = asyncio.get_running_loop()

            def checked_in(*_: object) -> None:
                # Called as the connection goes back, before the count drops;
                # thread-safe, as a connection lost to the garbage collector
                # is checked in from wherever that runs.
                loop.call_soon_threadsafe(lambda: None if pool.checkedout() else returned.set())

            sa.event.listen(pool, "checkin", checked_in)
            try:
                async with asyncio.timeout(timeout):
                    await returned.wait()
            except TimeoutError:
                log.warning("store_close_connections_in_use", in_use=pool.checkedout())
            finally:
                sa.event.remove(pool, "checkin", checked_in)
        await self._engine.dispose()

    # -- agents -----------------------------------------------------------

    async def create_agent(self, name: str) -> tuple[AgentRecord, AgentToken]:
        agent_id = new_agent_id()
        token = new_token(agent_id)
        now = utcnow()
        async with self._engine.begin() as db:
            await db.execute(
                agents.insert().values(
                    id=agent_id, name=name, token_hash=token.secret_hash(), created_at=now
                )
            )
        return AgentRecord(id=agent_id, name=name, created_at=now, token_rotated_at=None), token

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        async with self._engine.connect() as db:
            row = (await db.execute(agents.select().where(agents.c.id == agent_id))).first()
        return _agent(row) if row else None

    async def list_agents(self) -> list[AgentRecord]:
        async with self._engine.connect() as db:
            rows = (await db.execute(agents.select().order_by(agents.c.created_at))).all()
        return [_agent(r) for r in rows]

    async def delete_agent(self, agent_id: str) -> bool:
        """Delete an agent; raises AgentInUse while a connection refers to it."""
        async with self._engine.begin() as db:
            users = (
                (
                    await db.execute(
                        sa.select(connections.c.id).where(connections.c.agent_id == agent_id)
                    )
                )
                .scalars()
                .all()
            )
            if users:
                raise AgentInUse(agent_id, list(users))
            result = await db.execute(agents.delete().where(agents.c.id == agent_id))
            if result.rowcount > 0:
                await record_change(db, "agent", agent_id)
        return result.rowcount > 0

    async def touch_agent(self, agent_id: str) -> None:
        """Record that the agent was seen now (tunnel up or down)."""
        async with self._engine.begin() as db:
            await db.execute(
                agents.update().where(agents.c.id == agent_id).values(last_seen_at=utcnow())
            )

    async def rotate_agent_token(
        self, agent_id: str, grace_seconds: float = 0
    ) -> AgentToken | None:
        """A new token; with a grace period the old one keeps working until it ends."""
        token = new_token(agent_id)
        now = utcnow()
        async with self._engine.begin() as db:
            row = (
                await db.execute(sa.select(agents.c.token_hash).where(agents.c.id == agent_id))
            ).first()
            if row is None:
                return None
            grace = grace_seconds > 0
            await db.execute(
                agents.update()
                .where(agents.c.id == agent_id)
                .values(
                    token_hash=token.secret_hash(),
                    token_rotated_at=now,
                    previous_token_hash=row.token_hash if grace else None,
                    previous_token_expires_at=(
                        now + dt.timedelta(seconds=grace_seconds) if grace else None
                    ),
                )
            )
            await record_change(db, "agent", agent_id)
        return token

    async def agent_credentials(self, agent_id: str) -> AgentCredentials | None:
        """The hashes a tunnel of this agent may have logged in with; None: no agent."""
        async with self._engine.connect() as db:
            row = (
                await db.execute(
                    sa.select(
                        agents.c.token_hash,
                        agents.c.previous_token_hash,
                        agents.c.previous_token_expires_at,
                    ).where(agents.c.id == agent_id)
                )
            ).first()
        if row is None:
            return None
        return AgentCredentials(
            row.token_hash, row.previous_token_hash, _aware(row.previous_token_expires_at)
        )

    async def authenticate_agent(self, token: AgentToken) -> AgentRecord | None:
        """The agent this token belongs to, or None; constant time in the secret.

        Both the current and (during a rotation's grace) the previous token are
        compared every time, so timing does not tell which one matched.
        """
        async with self._engine.connect() as db:
            row = (await db.execute(agents.select().where(agents.c.id == token.agent_id))).first()
        current = secret_matches(token.secret, row.token_hash if row else _DUMMY_HASH)
        previous_hash = row.previous_token_hash if row is not None else None
        previous = secret_matches(token.secret, previous_hash or _DUMMY_HASH)
        if previous:
            expires = _aware(row.previous_token_expires_at) if row is not None else None
            previous = expires is not None and utcnow() < expires
        ok = current or (previous and previous_hash is not None)
        if row is None or not ok:
            return None
        agent = _agent(row)
        if not current:
            agent = dataclasses.replace(
                agent, token_expires_at=_aware(row.previous_token_expires_at)
            )
        return agent

    # -- connections --------------------------------------------------------

    async def create_connection(
        self, conn_id: str, name: str, mode: str, agent_id: str | None, document: str
    ) -> ConnectionRow:
        now = utcnow()
        row = ConnectionRow(conn_id, name, mode, agent_id, document, None, now, now)
        async with self._engine.begin() as db:
            await db.execute(
                connections.insert().values(
                    id=conn_id,
                    name=name,
                    mode=mode,
                    agent_id=agent_id,
                    document=document,
                    created_at=now,
                    updated_at=now,
                )
            )
        return row

    async def get_connection(self, conn_id: str) -> ConnectionRow | None:
        async with self._engine.connect() as db:
            row = (
                await db.execute(connections.select().where(connections.c.id == conn_id))
            ).first()
        return _connection(row) if row else None

    async def list_connections(self) -> list[ConnectionRow]:
        async with self._engine.connect() as db:
            rows = (await db.execute(connections.select().order_by(connections.c.created_at))).all()
        return [_connection(r) for r in rows]

    async def update_connection(
        self, conn_id: str, name: str, mode: str, agent_id: str | None, document: str
    ) -> bool:
        async with self._engine.begin() as db:
            result = await db.execute(
                connections.update()
                .where(connections.c.id == conn_id)
                .values(
                    name=name,
                    mode=mode,
                    agent_id=agent_id,
                    document=document,
                    updated_at=utcnow(),
                )
            )
            if result.rowcount > 0:
                await record_change(db, "connection", conn_id)
        return result.rowcount > 0

    async def update_document(self, conn_id: str, document: str) -> bool:
        """Replace only the document (a refreshed token); not a user edit."""
        async with self._engine.begin() as db:
            result = await db.execute(
                connections.update().where(connections.c.id == conn_id).values(document=document)
            )
            if result.rowcount > 0:
                await record_change(db, "connection_token", conn_id)
        return result.rowcount > 0

    async def set_last_test(self, conn_id: str, result_json: str) -> None:
        async with self._engine.begin() as db:
            await db.execute(
                connections.update()
                .where(connections.c.id == conn_id)
                .values(last_test=result_json)
            )

    async def delete_connection(self, conn_id: str) -> bool:
        async with self._engine.begin() as db:
            result = await db.execute(connections.delete().where(connections.c.id == conn_id))
            if result.rowcount > 0:
                await record_change(db, "connection", conn_id)
        return result.rowcount > 0

    async def rewrite_documents(self, rewrite: Callable[[str, str], str]) -> int:
        """Pass every (id, document) through *rewrite* in one transaction."""
        count = 0
        async with self._engine.begin() as db:
            rows = (await db.execute(sa.select(connections.c.id, connections.c.document))).all()
            for conn_id, document in rows:
                await db.execute(
                    connections.update()
                    .where(connections.c.id == conn_id)
                    .values(document=rewrite(conn_id, document))
                )
                await record_change(db, "connection", conn_id)
                count += 1
        return count

    # -- audit --------------------------------------------------------------

    async def audit(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        source: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append one event; *details* must hold no secret value."""
        async with self._engine.begin() as db:
            await db.execute(
                audit_events.insert().values(
                    at=utcnow(),
                    actor=actor[:64],
                    action=action[:64],
                    target=target[:64] if target else None,
                    source=source[:64] if source else None,
                    details=json.dumps(details or {}, sort_keys=True),
                )
            )

    async def audit_events(
        self, *, limit: int = 100, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; page with *before* (an event id)."""
        query = audit_events.select().order_by(audit_events.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(audit_events.c.id < before)
        async with self._engine.connect() as db:
            rows = (await db.execute(query)).all()
        return [
            {
                "id": r.id,
                "at": (_aware(r.at) or utcnow()).isoformat(),
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "source": r.source,
                "details": json.loads(r.details),
            }
            for r in rows
        ]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
