"""`sluice-server rotate-master-key`: every stored secret re-encrypted, nothing lost."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from server.connections.model import TokenAuth
from server.relay import Relay
from server.secrets.crypto import MasterKey
from tests.conftest import relay_settings
from tests.support.capture import remember_secret

# Also run against PostgreSQL by `make test` when SLUICE_TEST_POSTGRES_URL is set.
pytestmark = pytest.mark.postgres

BIN = Path(sys.executable).parent


async def test_rotation_reseals_everything_and_a_running_relay_keeps_reading(
    tmp_path: Path, database: str | None
) -> None:
    secret = "rotate-me-" + "r" * 16
    remember_secret(secret)
    relay = await Relay.start(relay_settings(tmp_path))
    try:
        view = await relay.connections.create(
            {
                "name": "c",
                "mode": "cloud",
                "http": {
                    "base_uri": "https://api.example/",
                    "media_type": "json",
                    "auth": {"type": "token", "token": secret, "location": "header"},
                    "encrypted": {"password": secret},
                },
            }
        )
        data_dir = tmp_path / "relay"
        old_id = MasterKey.from_text((data_dir / "master.key").read_text().strip()).key_id
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env["SLUICE_SERVER_DATA_DIR"] = str(data_dir)
        if database:
            env["SLUICE_SERVER_DATABASE_URL"] = database
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "sluice-server"),
            "rotate-master-key",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        assert "re-encrypted the secrets of 1 connection(s)" in out.decode()
        new_id = MasterKey.from_text((data_dir / "master.key").read_text().strip()).key_id
        assert new_id != old_id
        assert (data_dir / f"master.key.previous-{old_id}").exists()

        row = await relay.store.get_connection(view["id"])
        assert row is not None
        sealed = json.loads(row.document)["http"]
        assert sealed["auth"]["token"].startswith(f"v1.{new_id}.")
        assert sealed["encrypted"]["password"].startswith(f"v1.{new_id}.")
        assert secret not in row.document

        # The running relay has only the old key in memory: it reads the key
        # files again on the first unknown key id.
        relay.connections.forget(view["id"])
        handle = await relay.connections.handle(view["id"])
        assert handle.connection.http.encrypted["password"] == secret
    finally:
        await relay.close()

    again = await Relay.start(relay_settings(tmp_path))
    try:
        handle = await again.connections.handle(view["id"])
        assert isinstance(handle.connection.http.auth, TokenAuth)
        assert handle.connection.http.auth.token == secret
    finally:
        await again.close()
