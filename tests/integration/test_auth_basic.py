"""Basic auth against nginx's auth_basic with an htpasswd file, in cloud and
on-premise mode: the right password gets the file, a wrong one is nginx's own
401 passed to the caller after exactly one request (no retry loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentFactory
from tests.support.capture import APIClient, remember_secret
from tests.support.daemons import Daemon, access_lines, htpasswd, nginx_command, run_daemon
from tests.support.waiting import wait_until

USER = "integrator"
PASSWORD = "pw-" + "Zx9" * 8


@pytest.fixture
async def nginx_basic(tmp_path: Path) -> AsyncIterator[Daemon]:
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    htpasswd(workdir / "htpasswd", USER, PASSWORD)
    (workdir / "www" / "api").mkdir(parents=True)
    (workdir / "www" / "api" / "items.json").write_text('{"items": [1, 2, 3]}')
    block = """
        root {dir}/www;
        location /api/ {
            auth_basic "internal api";
            auth_basic_user_file {dir}/htpasswd;
        }
    """
    async with run_daemon(workdir, nginx_command(workdir, block)) as daemon:
        yield daemon


def basic_doc(base: str, password: str, agent_id: str | None = None) -> dict[str, Any]:
    return {
        "name": "Internal API (basic)",
        "mode": "on_premise" if agent_id else "cloud",
        "agent_id": agent_id,
        "http": {
            "base_uri": f"{base}/api",
            "auth": {"type": "basic", "username": USER, "password": password},
            "ping": {"relative_uri": "/items.json"},
        },
    }


async def _check(client: APIClient, daemon: Daemon, agent_id: str | None) -> None:
    remember_secret(PASSWORD, "wrong-" + PASSWORD)
    created = await client.call(
        "POST", "/v1/connections", json_body=basic_doc(daemon.base(), PASSWORD, agent_id)
    )
    assert created.status == 201, created.text
    assert created.body["http"]["auth"] == {"type": "basic", "username": USER, "password_set": True}
    conn_id = created.body["id"]
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/items.json")
    assert answer.status == 200, answer.text
    assert answer.body == {"items": [1, 2, 3]}
    tested = await client.call("POST", f"/v1/connections/{conn_id}/test")
    assert tested.body["ok"] is True, tested.text

    wrong = await client.call(
        "POST", "/v1/connections", json_body=basic_doc(daemon.base(), "wrong-" + PASSWORD, agent_id)
    )
    answer = await client.call("GET", f"/v1/connections/{wrong.body['id']}/proxy/items.json?w=1")
    assert answer.status == 401
    assert "401 Authorization Required" in answer.text  # nginx's own page
    # nginx logs each request as it ends: once a later request is logged, a
    # retry of the wrong one would be too.
    marker = await client.call("GET", f"/v1/connections/{conn_id}/proxy/items.json?marker=1")
    assert marker.status == 200
    await wait_until(
        lambda: any("marker=1" in line for line in access_lines(daemon)), what="nginx log"
    )
    wrong_lines = [line for line in access_lines(daemon) if "w=1" in line]
    assert len(wrong_lines) == 1, wrong_lines
    assert '"GET /api/items.json?w=1 HTTP/1.1" 401' in wrong_lines[0]
    audit = await client.call("GET", "/v1/audit?limit=50")  # audit entries join the leak check
    assert audit.status == 200


async def test_basic_cloud(open_client: APIClient, nginx_basic: Daemon) -> None:
    await _check(open_client, nginx_basic, None)


async def test_basic_on_premise(
    client: APIClient, nginx_basic: Daemon, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{nginx_basic.port}"])
    await _check(client, nginx_basic, token.agent_id)
