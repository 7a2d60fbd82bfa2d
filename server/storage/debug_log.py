"""Debug-log windows and entries in the database, so every relay of a cluster
records into the same log and any of them can page through it."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from server.storage.schema import connections, debug_entries, debug_windows


@dataclass(frozen=True, slots=True)
class DebugWindow:
    connection_id: str
    started_at: dt.datetime
    until: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "connection_id": self.connection_id,
            "started_at": self.started_at.isoformat(),
            "until": self.until.isoformat(),
        }


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class DebugLogRecords:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def __repr__(self) -> str:
        return "<DebugLogRecords>"

    async def open_window(
        self, conn_id: str, started_at: dt.datetime, until: dt.datetime
    ) -> DebugWindow | None:
        """Open (or replace) the connection's window; None if it does not exist."""
        async with self._engine.begin() as db:
            exists = await db.scalar(sa.select(connections.c.id).where(connections.c.id == conn_id))
            if not exists:
                return None
            await db.execute(debug_windows.delete().where(debug_windows.c.connection_id == conn_id))
            await db.execute(
                debug_windows.insert().values(
                    connection_id=conn_id, started_at=started_at, until=until
                )
            )
        return DebugWindow(conn_id, started_at, until)

    async def close_window(self, conn_id: str, at: dt.datetime) -> DebugWindow | None:
        """End the window now (its entries stay for the retention period)."""
        async with self._engine.begin() as db:
            await db.execute(
                debug_windows.update()
                .where(debug_windows.c.connection_id == conn_id, debug_windows.c.until > at)
                .values(until=at)
            )
        return await self.window(conn_id)

    async def window(self, conn_id: str) -> DebugWindow | None:
        async with self._engine.connect() as db:
            row = (
                await db.execute(
                    debug_windows.select().where(debug_windows.c.connection_id == conn_id)
                )
            ).first()
        if row is None:
            return None
        return DebugWindow(row.connection_id, _aware(row.started_at), _aware(row.until))

    async def append(self, conn_id: str, at: dt.datetime, entry: dict[str, Any], keep: int) -> None:
        """Add an entry (already masked) and drop the oldest beyond *keep*."""
        async with self._engine.begin() as db:
            await db.execute(
                debug_entries.insert().values(
                    connection_id=conn_id, at=at, entry=json.dumps(entry, separators=(",", ":"))
                )
            )
            oldest_kept = await db.scalar(
                sa.select(debug_entries.c.id)
                .where(debug_entries.c.connection_id == conn_id)
                .order_by(debug_entries.c.id.desc())
                .offset(keep - 1)
                .limit(1)
            )
            if oldest_kept is not None:
                await db.execute(
                    debug_entries.delete().where(
                        debug_entries.c.connection_id == conn_id,
                        debug_entries.c.id < oldest_kept,
                    )
                )

    async def page(
        self, conn_id: str, *, limit: int, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; page on with *before* (an entry id)."""
        query = (
            sa.select(debug_entries.c.id, debug_entries.c.at, debug_entries.c.entry)
            .where(debug_entries.c.connection_id == conn_id)
            .order_by(debug_entries.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(debug_entries.c.id < before)
        async with self._engine.connect() as db:
            rows = (await db.execute(query)).all()
        return [
            {"id": row.id, "at": _aware(row.at).isoformat(), **json.loads(row.entry)}
            for row in rows
        ]

    async def purge(self, ended_before: dt.datetime) -> int:
        """Delete windows that ended before *ended_before*, and their entries."""
        async with self._engine.begin() as db:
            ended = (
                (
                    await db.execute(
                        sa.select(debug_windows.c.connection_id).where(
                            debug_windows.c.until < ended_before
                        )
                    )
                )
                .scalars()
                .all()
            )
            if not ended:
                return 0
            result = await db.execute(
                debug_entries.delete().where(debug_entries.c.connection_id.in_(ended))
            )
            await db.execute(debug_windows.delete().where(debug_windows.c.connection_id.in_(ended)))
        return int(result.rowcount or 0)
