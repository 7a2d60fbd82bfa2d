"""The relay API for agents: create, list with live status, rotate, delete."""

from __future__ import annotations

import pytest

from server.relay import Relay
from sluice.tokens import AgentToken
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.waiting import wait_until

# Also run against PostgreSQL by `make test` when SLUICE_TEST_POSTGRES_URL is set.
pytestmark = pytest.mark.postgres


async def test_admin_token_required_everywhere_but_healthz(client: APIClient) -> None:
    assert (await client.call("GET", "/healthz", auth=False)).status == 200
    for method, path in [
        ("GET", "/v1/agents"),
        ("GET", "/v1/connections"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("GET", "/v1/openapi.json"),
        ("POST", "/v1/connections/test"),
    ]:
        answer = await client.call(method, path, auth=False)
        assert answer.status == 401, path
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.body["type"] == "unauthorized"
    wrong = await client.call(
        "GET", "/v1/agents", headers={"Authorization": "Bearer nope"}, auth=False
    )
    assert wrong.status == 401


async def test_agent_lifecycle_with_live_status(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    created = await client.call(
        "POST", "/v1/agents", json_body={"name": "warehouse"}, shows_token=True
    )
    assert created.status == 201
    token = AgentToken.parse(created.body["token"])
    remember_secret(str(token), token.secret)
    agent_id = created.body["id"]
    assert created.body["status"] == "offline"

    listed = await client.call("GET", "/v1/agents")
    assert [a["id"] for a in listed.body["agents"]] == [agent_id]
    assert all("token" not in a for a in listed.body["agents"])
    assert str(token) not in listed.text

    await start_agent([f"127.0.0.1:{api.port}"], token=token)
    got = await client.call("GET", f"/v1/agents/{agent_id}")
    assert got.body["status"] == "online"
    assert got.body["agent_version"].startswith("sluice-agent/")
    assert got.body["peer"].startswith("127.0.0.1:")
    assert len(got.body["replicas"]) == 1
    assert got.body["connected_since"]

    rotated = await client.call("POST", f"/v1/agents/{agent_id}/rotate-token", shows_token=True)
    assert rotated.status == 200
    remember_secret(rotated.body["token"])
    assert rotated.body["token"] != str(token)
    # The old token stops at once: its live tunnel is closed and cannot return.
    await wait_until(lambda: not relay.registry.is_online(agent_id), what="tunnel closed")
    assert (await client.call("GET", f"/v1/agents/{agent_id}")).body["status"] == "offline"

    deleted = await client.call("DELETE", f"/v1/agents/{agent_id}")
    assert deleted.status == 204
    missing = await client.call("GET", f"/v1/agents/{agent_id}")
    assert missing.status == 404
    assert missing.body["type"] == "not_found"


async def test_agent_in_use_cannot_be_deleted(client: APIClient) -> None:
    agent = (
        await client.call("POST", "/v1/agents", json_body={"name": "a"}, shows_token=True)
    ).body
    remember_secret(agent["token"])
    conn = await client.call(
        "POST",
        "/v1/connections",
        json_body={
            "name": "uses a",
            "mode": "on_premise",
            "agent_id": agent["id"],
            "http": {
                "base_uri": "http://inventory.internal/api",
                "media_type": "json",
                "auth": {"type": "token", "token": "t0ken-value-1", "location": "header"},
            },
        },
    )
    assert conn.status == 201, conn.text
    remember_secret("t0ken-value-1")
    refused = await client.call("DELETE", f"/v1/agents/{agent['id']}")
    assert refused.status == 409
    assert refused.body["type"] == "agent_in_use"
    assert conn.body["id"] in refused.body["detail"]


async def test_bad_agent_documents(client: APIClient) -> None:
    for body in [{}, {"name": ""}, {"name": "x" * 201}, {"name": 5}, {"name": "a\nb"}, []]:
        answer = await client.call("POST", "/v1/agents", json_body=body)
        assert answer.status == 422, body
        assert answer.body["errors"][0]["field"] == "name"
    broken = await client.call(
        "POST", "/v1/agents", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status == 400
    assert broken.headers["Content-Type"].startswith("application/problem+json")
