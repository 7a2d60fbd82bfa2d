"""Digest auth (RFC 7616) against Apache httpd's mod_auth_digest (MD5) and
lighttpd's mod_auth (SHA-256): the challenge answered, the nonce reused with a
counting nc, a stale nonce replaced once, a wrong password passed on."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentFactory
from tests.support.capture import APIClient, remember_secret
from tests.support.daemons import (
    Daemon,
    access_lines,
    apache_command,
    htdigest_line,
    lighttpd_command,
    run_daemon,
    shared_dir,
)
from tests.support.waiting import wait_until

USER = "digest-user"
PASSWORD = "pw-" + "D1g3st" * 4
REALM = "internal api"
NONCE_LIFETIME = 1  # seconds: Apache calls the nonce stale after this


def _www(workdir: Path, algorithm: str) -> None:
    (workdir / "www" / "api").mkdir(parents=True)
    (workdir / "www" / "api" / "items.json").write_text('{"items": [1, 2, 3]}')
    (workdir / "htdigest").write_text(htdigest_line(USER, REALM, PASSWORD, algorithm))
    for path in (workdir / "www", workdir / "www" / "api"):
        path.chmod(0o755)
    for path in (workdir / "htdigest", workdir / "www" / "api" / "items.json"):
        path.chmod(0o644)


@pytest.fixture
async def apache(tmp_path: Path) -> AsyncIterator[Daemon]:
    workdir = shared_dir(tmp_path, "apache")
    try:
        _www(workdir, "MD5")
        block = f"""
    AuthType Digest
    AuthName "{REALM}"
    AuthDigestProvider file
    AuthUserFile {{dir}}/htdigest
    AuthDigestNonceLifetime {NONCE_LIFETIME}
    Require valid-user
"""
        async with run_daemon(workdir, apache_command(workdir, block)) as daemon:
            yield daemon
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def lighttpd(tmp_path: Path) -> AsyncIterator[Daemon]:
    workdir = shared_dir(tmp_path, "lighttpd")
    try:
        _www(workdir, "SHA-256")
        block = f"""
auth.backend = "htdigest"
auth.backend.htdigest.userfile = "{{dir}}/htdigest"
auth.require = ("/api/" => (
    "method" => "digest", "algorithm" => "SHA-256",
    "realm" => "{REALM}", "require" => "valid-user"
))
"""
        async with run_daemon(workdir, lighttpd_command(workdir, block)) as daemon:
            yield daemon
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def digest_doc(daemon: Daemon, agent_id: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "name": "Digest API",
        "mode": "on_premise",
        "agent_id": agent_id,
        "http": {
            "base_uri": f"{daemon.base()}/api",
            "auth": {"type": "digest", "username": USER, "password": password},
            "ping": {"relative_uri": "/items.json"},
        },
    }


async def _create(client: APIClient, document: dict[str, Any]) -> str:
    created = await client.call("POST", "/v1/connections", json_body=document)
    assert created.status == 201, created.text
    assert created.body["http"]["auth"]["password_set"] is True
    return str(created.body["id"])


def statuses(daemon: Daemon) -> list[str]:
    return [line.rsplit(" ", 1)[-1] for line in access_lines(daemon)]


async def _logged(daemon: Daemon, count: int) -> list[str]:
    await wait_until(lambda: len(access_lines(daemon)) >= count, what="access log")
    return statuses(daemon)


async def _answers_and_reuses_the_nonce(
    client: APIClient, daemon: Daemon, start_agent: AgentFactory
) -> str:
    remember_secret(PASSWORD)
    _, agent = await start_agent([f"127.0.0.1:{daemon.port}"])
    conn_id = await _create(client, digest_doc(daemon, agent.agent_id))
    for i in range(3):
        answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/items.json?n={i}")
        assert answer.status == 200, answer.text
        assert answer.body == {"items": [1, 2, 3]}
    # One challenge, then three answers on the same nonce (nc 1, 2, 3).
    assert await _logged(daemon, 4) == ["401", "200", "200", "200"]
    return agent.agent_id


async def test_apache_md5(client: APIClient, apache: Daemon, start_agent: AgentFactory) -> None:
    agent_id = await _answers_and_reuses_the_nonce(client, apache, start_agent)
    conn_id = await _create(client, digest_doc(apache, agent_id))
    first = await client.call("GET", f"/v1/connections/{conn_id}/proxy/items.json")
    assert first.status == 200
    began = time.monotonic()
    await wait_until(lambda: time.monotonic() - began > NONCE_LIFETIME + 0.2, what="stale nonce")
    stale = await client.call("GET", f"/v1/connections/{conn_id}/proxy/items.json")
    assert stale.status == 200, stale.text  # stale=true: one new answer, no caller-visible 401
    assert (await _logged(apache, 8))[4:] == ["401", "200", "401", "200"]

    remember_secret("wrong-" + PASSWORD)
    wrong = await _create(client, digest_doc(apache, agent_id, "wrong-" + PASSWORD))
    answer = await client.call("GET", f"/v1/connections/{wrong}/proxy/items.json")
    assert answer.status == 401  # the API's answer, passed on
    assert (await _logged(apache, 10))[8:] == ["401", "401"]  # challenge, one answer, done


async def test_lighttpd_sha256(
    client: APIClient, lighttpd: Daemon, start_agent: AgentFactory
) -> None:
    await _answers_and_reuses_the_nonce(client, lighttpd, start_agent)
