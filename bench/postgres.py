"""The PostgreSQL server the cluster benchmarks use, and a fresh database on it."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def fresh_database(server: str) -> AsyncIterator[str]:
    import asyncpg

    admin = server.replace("postgresql+asyncpg", "postgresql")
    name = f"sluice_bench_{secrets.token_hex(6)}"
    db = await asyncpg.connect(admin)
    try:
        await db.execute(f'CREATE DATABASE "{name}"')
    finally:
        await db.close()
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        db = await asyncpg.connect(admin)
        try:
            await db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await db.close()


def server_url() -> str | None:
    return os.environ.get("SLUICE_BENCH_POSTGRES_URL") or os.environ.get("SLUICE_TEST_POSTGRES_URL")


async def unavailable(server: str | None) -> str | None:
    """Why the cluster points cannot run here, or None when PostgreSQL answers."""
    if not server:
        return "no PostgreSQL: set SLUICE_BENCH_POSTGRES_URL (a server URL) to measure them"
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed"
    try:
        db = await asyncpg.connect(server.replace("postgresql+asyncpg", "postgresql"), timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at the configured URL did not answer ({type(exc).__name__})"
    await db.close()
    return None
