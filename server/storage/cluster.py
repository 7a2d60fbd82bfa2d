"""The cluster's tables: the change feed, shared secrets, relays and presence.

Every relay that uses the same database is a member; these queries are all
they share. Kept apart from ``store.py`` (agents, connections, audit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from server.storage.schema import changes, cluster_secrets, presence, relays
from server.storage.store import Store, _aware, record_change, utcnow


@dataclass(frozen=True, slots=True)
class Change:
    id: int
    kind: str
    target: str


@dataclass(frozen=True, slots=True)
class RelayRow:
    id: str
    advertise_ssh: str
    cluster_url: str
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    draining: bool


@dataclass(frozen=True, slots=True)
class PresenceRow:
    relay_id: str
    tunnel_id: int
    agent_id: str
    peer: str
    agent_version: str
    connected_at: dt.datetime
    draining: bool


def _relay(row: Any) -> RelayRow:
    return RelayRow(
        id=row.id,
        advertise_ssh=row.advertise_ssh,
        cluster_url=row.cluster_url,
        started_at=_aware(row.started_at) or utcnow(),
        heartbeat_at=_aware(row.heartbeat_at) or utcnow(),
        draining=bool(row.draining),
    )


class ClusterStore:
    """Cluster queries on the relay's Store (same engine, same transactions' rules)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._engine = store.engine

    def __repr__(self) -> str:
        return f"<ClusterStore {self._store!r}>"

    # -- the change feed -----------------------------------------------------------
    async def last_change_id(self) -> int:
        async with self._engine.connect() as db:
            value = (await db.execute(sa.select(sa.func.max(changes.c.id)))).scalar()
        return int(value or 0)

    async def changes_after(self, after: int, limit: int = 1000) -> list[Change]:
        async with self._engine.connect() as db:
            rows = (
                await db.execute(
                    sa.select(changes.c.id, changes.c.kind, changes.c.target)
                    .where(changes.c.id > after)
                    .order_by(changes.c.id)
                    .limit(limit)
                )
            ).all()
        return [Change(r.id, r.kind, r.target) for r in rows]

    async def record(self, kind: str, target: str) -> None:
        async with self._engine.begin() as db:
            await record_change(db, kind, target)

    async def prune_changes(self, older_than: dt.timedelta) -> None:
        async with self._engine.begin() as db:
            await db.execute(changes.delete().where(changes.c.at < utcnow() - older_than))

    # -- shared secrets ------------------------------------------------------------
    async def secret(self, name: str) -> str | None:
        async with self._engine.connect() as db:
            return (
                await db.execute(
                    sa.select(cluster_secrets.c.value).where(cluster_secrets.c.name == name)
                )
            ).scalar()

    async def secret_or_store(self, name: str, value: str) -> str:
        """The stored value of *name*; stores *value* first when there is none.

        Two relays starting at once both try; the database keeps the first and
        both get that one.
        """
        existing = await self.secret(name)
        if existing is not None:
            return existing
        try:
            async with self._engine.begin() as db:
                await db.execute(
                    cluster_secrets.insert().values(name=name, value=value, updated_at=utcnow())
                )
        except IntegrityError:
            pass
        stored = await self.secret(name)
        assert stored is not None
        return stored

    async def set_secret(self, name: str, value: str, *, change: str | None = None) -> None:
        """Replace *name*; with *change*, every relay is told (kind *change*)."""
        async with self._engine.begin() as db:
            updated = await db.execute(
                cluster_secrets.update()
                .where(cluster_secrets.c.name == name)
                .values(value=value, updated_at=utcnow())
            )
            if updated.rowcount == 0:
                await db.execute(
                    cluster_secrets.insert().values(name=name, value=value, updated_at=utcnow())
                )
            if change is not None:
                await record_change(db, change, name)

    async def rewrite_secrets(self, rewrite: Callable[[str, str], str]) -> int:
        """Pass every (name, sealed value) through *rewrite* in one transaction."""
        async with self._engine.begin() as db:
            rows = (
                await db.execute(sa.select(cluster_secrets.c.name, cluster_secrets.c.value))
            ).all()
            for name, value in rows:
                await db.execute(
                    cluster_secrets.update()
                    .where(cluster_secrets.c.name == name)
                    .values(value=rewrite(name, value), updated_at=utcnow())
                )
        return len(rows)

    # -- relays and presence ---------------------------------------------------------
    async def register_relay(self, relay_id: str, advertise_ssh: str, cluster_url: str) -> None:
        now = utcnow()
        async with self._engine.begin() as db:
            await db.execute(presence.delete().where(presence.c.relay_id == relay_id))
            await db.execute(relays.delete().where(relays.c.id == relay_id))
            await db.execute(
                relays.insert().values(
                    id=relay_id,
                    advertise_ssh=advertise_ssh,
                    cluster_url=cluster_url,
                    started_at=now,
                    heartbeat_at=now,
                    draining=False,
                )
            )
            await record_change(db, "relays", relay_id)

    async def heartbeat(self, relay_id: str, *, draining: bool = False) -> bool:
        """Refresh this relay's row; False when it was gone (expired by a peer)."""
        async with self._engine.begin() as db:
            result = await db.execute(
                relays.update()
                .where(relays.c.id == relay_id)
                .values(heartbeat_at=utcnow(), draining=draining)
            )
        return result.rowcount > 0

    async def expire_relays(self, dead_after: dt.timedelta) -> list[str]:
        """Delete relays (and their presence) whose heartbeat is older than *dead_after*."""
        cutoff = utcnow() - dead_after
        async with self._engine.begin() as db:
            dead = list(
                (await db.execute(sa.select(relays.c.id).where(relays.c.heartbeat_at < cutoff)))
                .scalars()
                .all()
            )
            if dead:
                await db.execute(presence.delete().where(presence.c.relay_id.in_(dead)))
                await db.execute(relays.delete().where(relays.c.id.in_(dead)))
                await record_change(db, "relays", ",".join(dead)[:64])
        return dead

    async def unregister_relay(self, relay_id: str) -> None:
        async with self._engine.begin() as db:
            await db.execute(presence.delete().where(presence.c.relay_id == relay_id))
            await db.execute(relays.delete().where(relays.c.id == relay_id))
            await record_change(db, "relays", relay_id)

    async def live_relays(self, dead_after: dt.timedelta) -> list[RelayRow]:
        """Relays whose heartbeat is recent, oldest first."""
        cutoff = utcnow() - dead_after
        async with self._engine.connect() as db:
            rows = (
                await db.execute(
                    relays.select()
                    .where(relays.c.heartbeat_at >= cutoff)
                    .order_by(relays.c.started_at, relays.c.id)
                )
            ).all()
        return [_relay(r) for r in rows]

    async def add_presence(self, relay_id: str, row: PresenceRow) -> None:
        async with self._engine.begin() as db:
            await db.execute(
                presence.delete().where(
                    presence.c.relay_id == relay_id, presence.c.tunnel_id == row.tunnel_id
                )
            )
            await db.execute(
                presence.insert().values(
                    relay_id=relay_id,
                    tunnel_id=row.tunnel_id,
                    agent_id=row.agent_id,
                    peer=row.peer[:128],
                    agent_version=row.agent_version[:64],
                    connected_at=row.connected_at,
                    draining=row.draining,
                )
            )

    async def set_presence_draining(self, relay_id: str, tunnel_id: int) -> None:
        async with self._engine.begin() as db:
            await db.execute(
                presence.update()
                .where(presence.c.relay_id == relay_id, presence.c.tunnel_id == tunnel_id)
                .values(draining=True)
            )

    async def remove_presence(self, relay_id: str, tunnel_id: int) -> None:
        async with self._engine.begin() as db:
            await db.execute(
                presence.delete().where(
                    presence.c.relay_id == relay_id, presence.c.tunnel_id == tunnel_id
                )
            )

    async def presence_of(
        self, agent_id: str | None, dead_after: dt.timedelta
    ) -> list[PresenceRow]:
        """The agent's tunnels (None: every agent's) on live relays."""
        cutoff = utcnow() - dead_after
        query = (
            sa.select(presence)
            .join(relays, relays.c.id == presence.c.relay_id)
            .where(relays.c.heartbeat_at >= cutoff)
            .order_by(presence.c.connected_at)
        )
        if agent_id is not None:
            query = query.where(presence.c.agent_id == agent_id)
        async with self._engine.connect() as db:
            rows = (await db.execute(query)).all()
        return [
            PresenceRow(
                relay_id=r.relay_id,
                tunnel_id=r.tunnel_id,
                agent_id=r.agent_id,
                peer=r.peer,
                agent_version=r.agent_version,
                connected_at=_aware(r.connected_at) or utcnow(),
                draining=bool(r.draining),
            )
            for r in rows
        ]
