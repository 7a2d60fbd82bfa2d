"""Rows the relays of a cluster coordinate through (PostgreSQL only): each
connection's shared rate-limit deadline with its probe lease, and leases
for jobs one relay runs at a time (the health schedule).

Lease times are the database's clock (``now()``), so relays on hosts whose
clocks differ still agree on who holds what.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from server.storage.schema import (
    cluster_leases,
    connection_limits,
    connections,
    presence,
    relays,
)
from server.storage.store import Store, _aware, record_change, utcnow

# The change kind every relay reads a connection's limit row again on.
LIMIT_CHANGE = "limit"


@dataclass(frozen=True, slots=True)
class ProbeTurn:
    """The answer to "may this relay's probe go?"."""

    go: bool
    deadline: dt.datetime | None = None  # the limit is not over before this
    lease_until: dt.datetime | None = None  # another relay's probe may take until this


class Coordination:
    def __init__(self, store: Store) -> None:
        self._engine = store.engine

    def __repr__(self) -> str:
        return "<Coordination>"

    # -- shared rate-limit deadlines ---------------------------------------------
    async def set_limit(self, conn_id: str, until: dt.datetime) -> None:
        """Nobody sends through *conn_id* before *until* (a later deadline stays);
        a probe lease ends with it."""
        statement = pg_insert(connection_limits).values(connection_id=conn_id, until=until)
        statement = statement.on_conflict_do_update(
            index_elements=[connection_limits.c.connection_id],
            set_={
                "until": sa.func.greatest(connection_limits.c.until, statement.excluded.until),
                "probe_by": None,
                "probe_until": None,
            },
        )
        try:
            async with self._engine.begin() as db:
                await db.execute(statement)
                await record_change(db, LIMIT_CHANGE, conn_id)
        except IntegrityError:
            pass  # the connection was deleted meanwhile

    async def clear_limit(self, conn_id: str, *, passed_only: bool) -> None:
        """The limit is over (*passed_only*: unless a later one arrived meanwhile)."""
        query = connection_limits.delete().where(connection_limits.c.connection_id == conn_id)
        if passed_only:
            query = query.where(connection_limits.c.until <= sa.func.now())
        async with self._engine.begin() as db:
            if (await db.execute(query)).rowcount:
                await record_change(db, LIMIT_CHANGE, conn_id)

    async def limit_of(self, conn_id: str) -> dt.datetime | None:
        async with self._engine.connect() as db:
            value = await db.scalar(
                sa.select(connection_limits.c.until).where(
                    connection_limits.c.connection_id == conn_id
                )
            )
        return _aware(value)

    async def connection_exists(self, conn_id: str) -> bool:
        async with self._engine.connect() as db:
            found = await db.scalar(sa.select(connections.c.id).where(connections.c.id == conn_id))
        return found is not None

    async def all_limits(self) -> dict[str, dt.datetime]:
        async with self._engine.connect() as db:
            rows = (await db.execute(sa.select(connection_limits))).all()
        return {r.connection_id: _aware(r.until) or utcnow() for r in rows}

    async def take_probe(self, conn_id: str, relay_id: str, lease: float) -> ProbeTurn:
        """The probe lease of *conn_id* for *relay_id*, once the deadline passed and
        no other relay's lease is running; no limit row at all means go."""
        async with self._engine.begin() as db:
            taken = await db.execute(
                connection_limits.update()
                .where(
                    connection_limits.c.connection_id == conn_id,
                    connection_limits.c.until <= sa.func.now(),
                    sa.or_(
                        connection_limits.c.probe_by.is_(None),
                        connection_limits.c.probe_by == relay_id,
                        connection_limits.c.probe_until < sa.func.now(),
                    ),
                )
                .values(
                    probe_by=relay_id,
                    probe_until=sa.func.now() + dt.timedelta(seconds=lease),
                )
            )
            if taken.rowcount:
                return ProbeTurn(True)
            row = (
                await db.execute(
                    sa.select(
                        connection_limits.c.until,
                        connection_limits.c.probe_until,
                        sa.func.now().label("now"),
                    ).where(connection_limits.c.connection_id == conn_id)
                )
            ).first()
        if row is None:
            return ProbeTurn(True)
        now = _aware(row.now)
        until = _aware(row.until)
        if until is not None and now is not None and until > now:
            return ProbeTurn(False, deadline=until)
        return ProbeTurn(False, lease_until=_aware(row.probe_until))

    async def release_probe(self, conn_id: str, relay_id: str) -> None:
        async with self._engine.begin() as db:
            await db.execute(
                connection_limits.update()
                .where(
                    connection_limits.c.connection_id == conn_id,
                    connection_limits.c.probe_by == relay_id,
                )
                .values(probe_by=None, probe_until=None)
            )

    # -- leases ---------------------------------------------------------------------
    async def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease *name* for *seconds*: True when *holder* has it."""
        expires = sa.func.now() + dt.timedelta(seconds=seconds)
        statement = pg_insert(cluster_leases).values(name=name, holder=holder, expires=expires)
        statement = statement.on_conflict_do_update(
            index_elements=[cluster_leases.c.name],
            set_={"holder": holder, "expires": expires},
            where=sa.or_(
                cluster_leases.c.holder == holder, cluster_leases.c.expires < sa.func.now()
            ),
        )
        async with self._engine.begin() as db:
            return bool((await db.execute(statement)).rowcount)

    async def release_lease(self, name: str, holder: str) -> None:
        async with self._engine.begin() as db:
            await db.execute(
                cluster_leases.delete().where(
                    cluster_leases.c.name == name, cluster_leases.c.holder == holder
                )
            )

    # -- agents ------------------------------------------------------------------------
    async def agents_elsewhere(self, relay_id: str, dead_after: dt.timedelta) -> set[str]:
        """Agents with a tunnel to a live relay other than *relay_id*."""
        query = (
            sa.select(presence.c.agent_id)
            .distinct()
            .join(relays, relays.c.id == presence.c.relay_id)
            .where(relays.c.heartbeat_at >= utcnow() - dead_after, presence.c.relay_id != relay_id)
        )
        async with self._engine.connect() as db:
            return set((await db.execute(query)).scalars().all())
