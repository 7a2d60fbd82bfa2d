"""Only `sluice-server run` and `sluice-server migrate` change the database schema.

Several relays may share one PostgreSQL: an admin command of another version
must not migrate the schema under relays that are running.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import create_async_engine

import server.storage
from server.settings import sqlite_url
from tests.support.ports import free_port

BIN = Path(sys.executable).parent / "sluice-server"
MIGRATIONS_DIR = Path(server.storage.__file__).parent / "migrations"


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    # `run` would listen, were it to get that far: loopback, free ports.
    env["SLUICE_SERVER_SSH_LISTEN"] = f"127.0.0.1:{free_port()}"
    env["SLUICE_SERVER_HTTP_LISTEN"] = f"127.0.0.1:{free_port()}"
    return subprocess.run(
        [str(BIN), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def _with_schema(data_dir: Path, revision: str, *, stamp: str | None = None) -> None:
    """A database migrated to *revision*, its recorded revision then set to *stamp*."""

    def migrate(conn: sa.Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        if stamp is not None:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": stamp})

    async def run() -> None:
        engine = create_async_engine(sqlite_url(data_dir / "sluice.db"))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(migrate)
        finally:
            await engine.dispose()

    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run())


def _revision(data_dir: Path) -> str:
    engine = sa.create_engine(f"sqlite:///{data_dir / 'sluice.db'}")
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar())
    finally:
        engine.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_admin_commands_refuse_an_older_schema_and_leave_it(tmp_path: Path) -> None:
    _with_schema(tmp_path, "0002")
    for args in (("agents", "list"), ("agents", "create", "w1"), ("rotate-master-key",)):
        out = _cli(tmp_path, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "older" in out.stderr
        assert "0002" in out.stderr
        assert _head() in out.stderr
        assert "sluice-server migrate" in out.stderr
        assert "Traceback" not in out.stderr
        assert _revision(tmp_path) == "0002"

    migrated = _cli(tmp_path, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"0002 -> {_head()}" in migrated.stdout
    assert _revision(tmp_path) == _head()
    listed = _cli(tmp_path, "agents", "list")
    assert listed.returncode == 0, listed.stderr


def test_admin_commands_refuse_a_newer_schema(tmp_path: Path) -> None:
    _with_schema(tmp_path, "head", stamp="9999")
    for args in (("agents", "list"), ("migrate",), ("run",)):
        out = _cli(tmp_path, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        said = out.stderr + out.stdout  # `run` logs it
        assert "newer" in said
        assert "9999" in said
        assert "Traceback" not in said
        assert _revision(tmp_path) == "9999"


def test_admin_commands_create_the_schema_of_an_empty_database(tmp_path: Path) -> None:
    """Nothing runs on an empty database: creating its schema changes nobody's."""
    out = _cli(tmp_path, "agents", "list")
    assert out.returncode == 0, out.stderr
    assert _revision(tmp_path) == _head()
