"""Health: scheduled pings keep a connection's status; an agent gone is offline at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.fragile_api import FragileAPI
from tests.support.waiting import wait_until

TOKEN = "tok-" + "h" * 20
TENANT_SECRET = "tenant-secret-" + "9" * 12


@pytest.fixture
async def quick_relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(
        relay_settings(
            tmp_path,
            allow_private_destinations=True,
            health_min_interval_seconds=0.2,
            data_dir=tmp_path / "quick",
        )
    )
    remember_secret(relay.admin_token, TOKEN, TENANT_SECRET)
    try:
        yield relay
    finally:
        await relay.close()


@pytest.fixture
async def quick(quick_relay: Relay) -> AsyncIterator[APIClient]:
    async with aiohttp.ClientSession() as session:
        yield APIClient(session, quick_relay.http_base, quick_relay.admin_token)


def _document(api: FragileAPI, **http: Any) -> dict[str, Any]:
    return {
        "name": "watched",
        "mode": "cloud",
        "http": {
            "base_uri": api.base,
            "auth": {"type": "token", "token": TOKEN},
            "encrypted": {"tenant": TENANT_SECRET},
            **http,
        },
    }


async def _status(client: APIClient, conn_id: str) -> dict[str, Any]:
    answer = await client.call("GET", f"/v1/connections/{conn_id}")
    assert answer.status == 200
    body: dict[str, Any] = answer.body
    return body


async def _wait_status(client: APIClient, conn_id: str, status: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def poll() -> bool:
        seen.update(await _status(client, conn_id))
        return bool(seen["status"] == status)

    # wait_until takes a plain predicate: poll the API from a small loop.
    deadline = time.monotonic() + 10
    while not await poll():
        assert time.monotonic() < deadline, f"status stayed {seen['status']!r}, not {status!r}"
        await asyncio.sleep(0.05)
    return seen


async def test_scheduled_pings_follow_the_api_down_and_up(
    quick: APIClient, fragile: FragileAPI
) -> None:
    document = _document(
        fragile,
        ping={"method": "GET", "relative_uri": "/health", "error_path": "detail"},
        health={"interval_seconds": 0.3},
    )
    created = await quick.call("POST", "/v1/connections", json_body=document)
    assert created.status == 201, created.text
    conn_id = created.body["id"]
    assert created.body["status"] == "unknown"
    online = await _wait_status(quick, conn_id, "online")
    assert online["last_error"] is None
    assert online["last_checked_at"]
    metrics = await quick.call("GET", "/metrics")
    assert f'sluice_connection_up{{connection="{conn_id}"}} 1.0' in metrics.text

    fragile.up = False
    offline = await _wait_status(quick, conn_id, "offline")
    assert offline["last_error"] == "maintenance"  # the value at error_path
    metrics = await quick.call("GET", "/metrics")
    assert f'sluice_connection_up{{connection="{conn_id}"}} 0.0' in metrics.text

    fragile.up = True
    await _wait_status(quick, conn_id, "online")


async def test_ping_body_template_and_fail_path(quick: APIClient, fragile: FragileAPI) -> None:
    fragile.up = False
    fragile.down_status = 200
    document = _document(
        fragile,
        ping={
            "method": "POST",
            "relative_uri": "/health",
            "body": '{"query": "{ health }", "tenant": "{{connection.http.encrypted.tenant}}"}',
            "fail_path": "status",
            "fail_values": ["down"],
        },
    )
    created = await quick.call("POST", "/v1/connections", json_body=document)
    assert created.status == 201, created.text
    conn_id = created.body["id"]
    tested = await quick.call("POST", f"/v1/connections/{conn_id}/test")
    assert tested.body["ok"] is False
    assert tested.body["message"] == "HTTP 200, fail path 'status' is \"down\""
    assert json.loads(fragile.health_bodies[-1]) == {"query": "{ health }", "tenant": TENANT_SECRET}
    assert (await _status(quick, conn_id))["status"] == "offline"
    fragile.up = True
    tested = await quick.call("POST", f"/v1/connections/{conn_id}/test")
    assert tested.body["ok"] is True
    assert (await _status(quick, conn_id))["status"] == "online"


async def test_health_interval_below_the_minimum_is_refused(
    client: APIClient, api: InternalAPI
) -> None:
    document = {
        "name": "too often",
        "mode": "cloud",
        "http": {"base_uri": api.base, "health": {"interval_seconds": 5}},
    }
    answer = await client.call("POST", "/v1/connections", json_body=document)
    assert answer.status == 422
    assert answer.body["errors"] == [
        {"field": "http.health.interval_seconds", "message": "must be at least 30 seconds"}
    ]


async def test_agent_stopping_marks_its_connections_offline(
    client: APIClient, api: InternalAPI, relay: Relay, start_agent: AgentFactory
) -> None:
    remember_secret(TOKEN)
    proc, token = await start_agent([f"127.0.0.1:{api.port}"])
    document = {
        "name": "on-prem",
        "mode": "on_premise",
        "agent_id": token.agent_id,
        "http": {
            "base_uri": api.base,
            "auth": {"type": "token", "token": TOKEN},
            "ping": {"method": "GET", "relative_uri": "/hello"},
        },
    }
    created = await client.call("POST", "/v1/connections", json_body=document)
    assert created.status == 201, created.text
    conn_id = created.body["id"]
    tested = await client.call("POST", f"/v1/connections/{conn_id}/test")
    assert tested.body["ok"] is True
    assert (await _status(client, conn_id))["status"] == "online"
    up = f'sluice_connection_up{{connection="{conn_id}"}}'
    assert f"{up} 1.0" in (await client.call("GET", "/metrics")).text
    await proc.stop()
    await wait_until(lambda: not relay.registry.is_online(token.agent_id), what="agent gone")
    shown = await _status(client, conn_id)
    assert shown["status"] == "offline"
    assert shown["last_error"].startswith(f"agent_offline: agent {token.agent_id}")
    assert f"{up} 0.0" in (await client.call("GET", "/metrics")).text
    listed = await client.call("GET", "/v1/connections")
    assert [c["status"] for c in listed.body["connections"] if c["id"] == conn_id] == ["offline"]
