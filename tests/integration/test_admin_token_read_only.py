"""Admin token rotation when the token comes from a read-only place.

The docs suggest handing the admin token to the relay as a systemd credential
(LoadCredential=, a read-only mount). Rotating it there cannot be stored, and
would be lost on restart anyway: the relay says so up front and writes nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.support.capture import remember_secret
from tests.support.relay_process import RelayProcess

# Run the relay in its own mount namespace, with the token's directory
# bind-mounted read-only onto itself: a credential directory in miniature.
READ_ONLY = 'mount --bind -o ro "$0" "$0" && exec "$@"'


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare (util-linux) for a read-only mount",
)
async def test_rotation_with_a_read_only_admin_token_file_is_refused_up_front(
    tmp_path: Path,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    token = "slcadm_readonly_" + os.urandom(16).hex()
    remember_secret(token)
    (credentials / "admin_token").write_text(token)
    (credentials / "admin_token").chmod(0o400)
    data_dir = tmp_path / "relay"
    relay = RelayProcess(
        data_dir,
        tmp_path / "relay.log",
        prefix=[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            READ_ONLY,
            str(credentials),
        ],
        admin_token_file=str(credentials / "admin_token"),
    )
    del relay.env["SLUICE_SERVER_ADMIN_TOKEN"]
    await relay.start()
    try:
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                relay.base + "/v1/admin/rotate-token", json={"grace_seconds": 60}, headers=auth
            ) as resp:
                status, body = resp.status, await resp.json(content_type=None)
            async with http.get(relay.base + "/v1/agents", headers=auth) as still:
                assert still.status == 200  # the configured token still works
    finally:
        assert await relay.stop() == 0
    assert status == 409, body
    assert body["type"] == "admin_token_read_only"
    assert "admin_token_file" in body["detail"]
    assert str(credentials / "admin_token") in body["detail"]
    assert "read-only" in body["detail"]
    assert not (data_dir / "admin_token.previous").exists()
    assert sorted(p.name for p in credentials.iterdir()) == ["admin_token"]
    assert (credentials / "admin_token").read_text() == token
