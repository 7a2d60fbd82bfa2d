"""The two command lines, run as a user runs them."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from server.relay import Relay
from sluice import __version__
from tests.support.api import InternalAPI
from tests.support.capture import remember_secret
from tests.support.ports import free_port
from tests.support.relay_process import RelayProcess

BIN = Path(sys.executable).parent


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    clean.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, env=clean, timeout=30)


async def _arun(*args: str, env: dict[str, str]) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    clean.update(env)
    proc = await asyncio.create_subprocess_exec(
        *args, env=clean, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def test_fingerprint_prints_only_the_fingerprint_and_is_stable(tmp_path: Path) -> None:
    first = _run(str(BIN / "sluice-server"), "--data-dir", str(tmp_path), "fingerprint")
    second = _run(str(BIN / "sluice-server"), "--data-dir", str(tmp_path), "fingerprint")
    assert first.returncode == 0
    assert re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}\n", first.stdout)
    assert first.stdout == second.stdout
    assert oct((tmp_path / "ssh_host_ed25519_key").stat().st_mode & 0o777) == "0o600"


def test_agents_create_prints_the_token_once_and_stores_only_a_hash(tmp_path: Path) -> None:
    out = _run(str(BIN / "sluice-server"), "--data-dir", str(tmp_path), "agents", "create", "w1")
    assert out.returncode == 0, out.stderr
    agent_id = re.search(r"agent_id: (agt_\w+)", out.stdout)
    token = re.search(r"token: (slc_agt_\w+_(\w+))", out.stdout)
    assert agent_id
    assert token
    assert token.group(1).startswith(f"slc_{agent_id.group(1)}_")
    secret = token.group(2).encode()
    for f in tmp_path.iterdir():
        assert secret not in f.read_bytes(), f
    listed = _run(str(BIN / "sluice-server"), "--data-dir", str(tmp_path), "agents", "list")
    assert agent_id.group(1) in listed.stdout
    assert token.group(1) not in listed.stdout


def test_versions() -> None:
    for prog in ("sluice-agent", "sluice-server"):
        out = _run(str(BIN / prog), "--version")
        assert out.returncode == 0
        assert out.stdout.strip() == f"{prog} {__version__}"


def test_agent_refuses_bad_settings_naming_them() -> None:
    out = _run(
        str(BIN / "sluice-agent"),
        "check",
        env={
            "SLUICE_AGENT_RELAY": "relay:notaport",
            "SLUICE_AGENT_ALLOW": "db",
        },
    )
    assert out.returncode == 2
    assert "relay (SLUICE_AGENT_RELAY)" in out.stderr
    assert "allow (SLUICE_AGENT_ALLOW)" in out.stderr
    assert "Traceback" not in out.stderr


async def test_agent_check_reports_relay_key_token_and_rules(
    relay: Relay, api: InternalAPI
) -> None:
    _, token = await relay.store.create_agent("checked")
    host, port = relay.ssh_address
    env = {
        "SLUICE_AGENT_RELAY": f"{host}:{port}",
        "SLUICE_AGENT_TOKEN": str(token),
        "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
        "SLUICE_AGENT_ALLOW": f"localhost:{api.port},127.0.0.1:{api.port},*.corp.example:443",
        "SLUICE_AGENT_LOG_FORMAT": "json",
    }
    code, out = await _arun(str(BIN / "sluice-agent"), "check", env=env)
    assert code == 0, out
    assert f"relay {host}:{port}: ok (host key {relay.fingerprint}, token accepted)" in out
    assert "allow localhost:" in out
    assert "resolves to" in out
    assert str(token) not in out

    bad = dict(env, SLUICE_AGENT_TOKEN=f"slc_{token.agent_id}_{'Z' * 40}")
    code, out = await _arun(str(BIN / "sluice-agent"), "check", env=bad)
    assert code == 1
    assert "refused the access token" in out

    wrong_key = dict(env, SLUICE_AGENT_RELAY_FINGERPRINT="SHA256:" + "Q" * 43)
    code, out = await _arun(str(BIN / "sluice-agent"), "check", env=wrong_key)
    assert code == 1
    assert f"presented host key {relay.fingerprint}" in out


@pytest.mark.parametrize("token", ["   ", " " * 10 + "a" * 15 + "\t"])
async def test_a_blank_or_short_admin_token_is_refused_at_start(tmp_path: Path, token: str) -> None:
    env = {
        "SLUICE_SERVER_DATA_DIR": str(tmp_path),
        "SLUICE_SERVER_ADMIN_TOKEN": token,
        "SLUICE_SERVER_SSH_LISTEN": f"127.0.0.1:{free_port()}",
        "SLUICE_SERVER_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "sluice-server"),
        "run",
        env=clean | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        code = await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"the relay started with admin token {token!r}") from None
    assert proc.stdout is not None
    out = (await proc.stdout.read()).decode()
    assert code == 2, out
    assert "admin_token" in out, out
    assert "at least 16 characters" in out, out


def test_an_admin_token_file_with_a_short_token_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  tiny  \n")
    result = _run(
        str(BIN / "sluice-server"),
        "--data-dir",
        str(tmp_path),
        "run",
        env={
            "SLUICE_SERVER_ADMIN_TOKEN_FILE": str(token_file),
            "SLUICE_SERVER_SSH_LISTEN": f"127.0.0.1:{free_port()}",
            "SLUICE_SERVER_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        },
    )
    assert result.returncode != 0
    assert "at least 16 characters" in result.stdout + result.stderr


async def test_the_data_dir_and_database_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    data_dir.mkdir(mode=0o755)  # left open by an earlier version or by hand
    data_dir.chmod(0o755)
    relay = RelayProcess(data_dir, tmp_path / "relay.log")
    remember_secret(relay.admin_token)
    old = os.umask(0)  # the relay process inherits it: the worst case
    try:
        await relay.start()
    finally:
        os.umask(old)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {relay.admin_token}"}
            async with http.post(
                relay.base + "/v1/agents", json={"name": "a"}, headers=headers
            ) as resp:
                assert resp.status == 201  # the database has been written to
                remember_secret((await resp.json())["token"])
        assert data_dir.stat().st_mode & 0o777 == 0o700
        modes = {p.name: p.stat().st_mode & 0o777 for p in data_dir.iterdir() if p.is_file()}
        assert "sluice.db" in modes, modes
        assert all(mode & 0o077 == 0 for mode in modes.values()), modes
    finally:
        await relay.stop()
