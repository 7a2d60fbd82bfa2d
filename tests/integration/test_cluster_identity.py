"""One cluster, one identity: the SSH host key and the admin token shared
through the database, the master key checked, one relay per SQLite file."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from server.relay import Relay
from sluice.sshconfig import fingerprint
from tests.conftest import relay_settings
from tests.support.capture import remember_secret
from tests.support.ports import free_port

BIN = Path(sys.executable).parent


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.mark.postgres
async def test_a_relay_with_another_master_key_refuses_to_start(tmp_path: Path) -> None:
    first = _key()
    remember_secret(first)
    relay = await Relay.start(relay_settings(tmp_path, master_key=first), serve_http=False)
    key_id = relay.box.current_key_id
    await relay.close()
    other = _key()
    remember_secret(other)
    with pytest.raises(ValueError, match="master key") as refused:
        await Relay.start(relay_settings(tmp_path, master_key=other), serve_http=False)
    message = str(refused.value)
    assert f"(id {key_id})" in message  # names the key the database expects
    assert "SLUICE_SERVER_MASTER_KEY" in message
    assert first not in message
    assert other not in message
    # The right key still starts.
    again = await Relay.start(relay_settings(tmp_path, master_key=first), serve_http=False)
    await again.close()


async def test_two_relays_on_one_sqlite_file_refuse(tmp_path: Path) -> None:
    relay = await Relay.start(relay_settings(tmp_path), serve_http=False)
    try:
        with pytest.raises(ValueError, match="SQLite serves one relay"):
            await Relay.start(relay_settings(tmp_path), serve_http=False)
        # The same file reached through another data dir is refused too.
        shared = relay_settings(
            tmp_path,
            data_dir=tmp_path / "other",
            database_url=relay.store.engine.url.render_as_string(),
        )
        with pytest.raises(ValueError, match="another relay"):
            await Relay.start(shared, serve_http=False)
        # As the operator sees it: the process exits with the reason in its log.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(
            {
                "SLUICE_SERVER_DATA_DIR": str(relay.settings.data_dir),
                "SLUICE_SERVER_SSH_LISTEN": f"127.0.0.1:{free_port()}",
                "SLUICE_SERVER_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
                "SLUICE_SERVER_LOG_FORMAT": "json",
            }
        )
        out = subprocess.run(
            [str(BIN / "sluice-server"), "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 1
        assert "SQLite serves one relay" in out.stdout + out.stderr
    finally:
        await relay.close()
    # Released with the relay: the next one starts.
    again = await Relay.start(relay_settings(tmp_path), serve_http=False)
    await again.close()


async def test_relays_on_one_database_share_host_key_and_admin_token(
    tmp_path: Path, cluster_database: str
) -> None:
    key = _key()
    remember_secret(key)
    a_settings = relay_settings(
        tmp_path, data_dir=tmp_path / "a", database_url=cluster_database, master_key=key
    )
    b_settings = relay_settings(
        tmp_path, data_dir=tmp_path / "b", database_url=cluster_database, master_key=key
    )
    # Relay B's data dir already has its own key (it ran alone before).
    b_settings.data_dir.mkdir(parents=True)
    from server.secrets.hostkey import load_or_create_host_key

    b_old = fingerprint(load_or_create_host_key(b_settings.host_key_path))
    a = await Relay.start(a_settings)
    b = await Relay.start(b_settings)
    try:
        remember_secret(a.admin_token)
        assert a.fingerprint == b.fingerprint != b_old
        # The CLI prints the cluster's key for either data dir.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(
            {
                "SLUICE_SERVER_DATA_DIR": str(b_settings.data_dir),
                "SLUICE_SERVER_DATABASE_URL": cluster_database,
                "SLUICE_SERVER_MASTER_KEY": key,
            }
        )
        out = subprocess.run(
            [str(BIN / "sluice-server"), "fingerprint"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == a.fingerprint

        # One admin token, and a rotation on A reaches B.
        assert a.admin_token == b.admin_token
        old = a.admin_token
        async with aiohttp.ClientSession() as http:
            async with http.post(
                a.http_base + "/v1/admin/rotate-token",
                headers={"Authorization": f"Bearer {old}"},
            ) as resp:
                assert resp.status == 200
                new = (await resp.json())["token"]
            remember_secret(new)

            async def status(token: str) -> int:
                async with http.get(
                    b.http_base + "/v1/agents", headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    return resp.status

            statuses: dict[str, int] = {}

            async def poll() -> None:
                statuses["new"] = await status(new)
                statuses["old"] = await status(old)

            deadline = time.monotonic() + 5  # the feed's promise
            while True:
                await poll()
                if statuses == {"new": 200, "old": 401}:
                    break
                assert time.monotonic() < deadline, statuses
                await asyncio.sleep(0.05)
    finally:
        await b.close()
        await a.close()
