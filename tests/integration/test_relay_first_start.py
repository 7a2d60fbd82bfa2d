"""What the relay tells the operator about the admin token it generates on first start.

Under systemd stdout is the journal (readable by the adm group), under Docker
`docker logs`: the value is shown only when stdout is a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
from pathlib import Path

from tests.support.capture import remember_secret
from tests.support.relay_process import BIN, RelayProcess
from tests.support.waiting import wait_until


async def test_generated_admin_token_stays_out_of_a_non_terminal_stdout(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    relay = RelayProcess(data_dir, tmp_path / "relay.log")
    del relay.env["SLUICE_SERVER_ADMIN_TOKEN"]
    await relay.start()
    assert await relay.stop() == 0
    token_file = data_dir / "admin_token"
    token = token_file.read_text().strip()
    remember_secret(token)
    out = (tmp_path / "relay.log").read_text()
    assert token not in out
    assert str(token_file) in out, out
    assert f"cat {token_file}" in out, out
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"


async def test_generated_admin_token_is_shown_on_a_terminal(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    relay = RelayProcess(data_dir, tmp_path / "relay.log")
    del relay.env["SLUICE_SERVER_ADMIN_TOKEN"]
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "sluice-server"), "run", env=relay.env, stdout=follower, stderr=follower
    )
    os.close(follower)
    seen = bytearray()
    token_file = data_dir / "admin_token"

    def shown() -> bool:
        with contextlib.suppress(BlockingIOError):
            seen.extend(os.read(leader, 65536))
        return token_file.exists() and token_file.read_text().strip().encode() in seen

    try:
        await wait_until(shown, timeout=20, what="the admin token on the terminal")
    finally:
        proc.terminate()
        async with asyncio.timeout(40):
            await proc.wait()
        os.close(leader)
    assert proc.returncode == 0
