"""Each connection's latest health check, kept so every relay shows the same."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from server.storage.schema import connection_health, connections


@dataclass(frozen=True, slots=True)
class HealthRecord:
    status: str  # online / offline
    last_checked_at: dt.datetime
    last_error: str | None


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class HealthRecords:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def __repr__(self) -> str:
        return "<HealthRecords>"

    async def record(self, conn_id: str, status: str, at: dt.datetime, error: str | None) -> None:
        """Replace the connection's latest check (*error* must hold no secret)."""
        async with self._engine.begin() as db:
            exists = await db.scalar(sa.select(connections.c.id).where(connections.c.id == conn_id))
            if not exists:
                return  # deleted meanwhile
            await db.execute(
                connection_health.delete().where(connection_health.c.connection_id == conn_id)
            )
            await db.execute(
                connection_health.insert().values(
                    connection_id=conn_id,
                    status=status,
                    last_checked_at=at,
                    last_error=error[:1000] if error else None,
                )
            )

    async def all(self) -> dict[str, HealthRecord]:
        async with self._engine.connect() as db:
            rows = (await db.execute(connection_health.select())).all()
        return {row.connection_id: _record(row) for row in rows}

    async def get(self, conn_id: str) -> HealthRecord | None:
        async with self._engine.connect() as db:
            row = (
                await db.execute(
                    connection_health.select().where(connection_health.c.connection_id == conn_id)
                )
            ).first()
        return _record(row) if row is not None else None


def _record(row: Any) -> HealthRecord:
    return HealthRecord(row.status, _aware(row.last_checked_at), row.last_error)
