"""The debug log: a time-limited window records requests through cloud and
on-premise connections, every secret masked, bounded, audited."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.fragile_api import serve_fragile
from tests.support.waiting import poll_until

URL_TOKEN = "urltok-" + "u" * 20
HEADER_TOKEN = "hdrtok-" + "h" * 20
TENANT = "tenant-" + "t" * 20
COOKIE = "cookie-" + "c" * 20
SECRETS = (URL_TOKEN, HEADER_TOKEN, TENANT, COOKIE)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    """The conftest relay, with cloud mode allowed to loopback and a short log."""
    relay = await Relay.start(
        relay_settings(tmp_path, allow_private_destinations=True, debug_log_entries=10)
    )
    remember_secret(relay.admin_token, *SECRETS)
    try:
        yield relay
    finally:
        await relay.close()


async def _create(client: APIClient, document: dict[str, Any]) -> str:
    created = await client.call("POST", "/v1/connections", json_body=document)
    assert created.status == 201, created.text
    conn_id: str = created.body["id"]
    return conn_id


async def _log(client: APIClient, conn_id: str, query: str = "") -> dict[str, Any]:
    answer = await client.call("GET", f"/v1/connections/{conn_id}/debug-log{query}")
    assert answer.status == 200, answer.text
    body: dict[str, Any] = answer.body
    return body


async def _stored(client: APIClient, conn_id: str, count: int) -> None:
    """Wait until the log holds *count* entries: an entry is stored after its
    answer went out (the caller is not kept waiting for the database), so a
    log read at once can miss the last one."""

    async def there() -> bool:
        return len((await _log(client, conn_id))["entries"]) >= count

    await poll_until(there, 10, what=f"{count} debug entries of {conn_id}")


async def _traffic(client: APIClient, conn_id: str) -> None:
    proxy = f"/v1/connections/{conn_id}/proxy"
    got = await client.call("GET", f"{proxy}/hello?x=1", headers={"Cookie": f"session={COOKIE}"})
    assert got.status == 200
    posted = await client.call(
        "POST",
        f"{proxy}/echo",
        data=json.dumps({"tenant": TENANT, "note": "hello"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert posted.status == 200


def _assert_masked(entries: list[dict[str, Any]]) -> None:
    text = json.dumps(entries)
    for secret in SECRETS:
        assert secret not in text


async def test_window_records_cloud_and_on_premise_with_secrets_masked(
    client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    tenant_header = [{"name": "X-Tenant", "value": "{{connection.http.encrypted.tenant}}"}]
    cloud = await _create(
        client,
        {
            "name": "cloud",
            "mode": "cloud",
            "http": {
                "base_uri": api.base,
                "headers": tenant_header,
                "encrypted": {"tenant": TENANT},
                "auth": {
                    "type": "token",
                    "token": URL_TOKEN,
                    "location": "url",
                    "param_name": "api_key",
                },
            },
        },
    )
    on_prem = await _create(
        client,
        {
            "name": "on-prem",
            "mode": "on_premise",
            "agent_id": token.agent_id,
            "http": {
                "base_uri": api.base,
                "headers": tenant_header,
                "encrypted": {"tenant": TENANT},
                "auth": {"type": "token", "token": HEADER_TOKEN, "scheme": "Bearer"},
            },
        },
    )
    for conn_id in (cloud, on_prem):
        await _traffic(client, conn_id)  # before the window: not recorded
        started = await client.call(
            "POST", f"/v1/connections/{conn_id}/debug", json_body={"minutes": 15}
        )
        assert started.status == 200, started.text
        assert started.body["active"] is True
        await _traffic(client, conn_id)

    # The API did get the secrets: what is masked is only the log.
    assert any(seen.query == f"x=1&api_key={URL_TOKEN}" for seen in api.seen)
    for conn_id in (cloud, on_prem):
        await _stored(client, conn_id, 2)
    cloud_log = await _log(client, cloud)
    assert cloud_log["active"] is True
    entries = cloud_log["entries"]
    assert [e["request"]["method"] for e in entries] == ["POST", "GET"]  # newest first
    post, get = entries
    assert get["request"]["url"] == f"{api.base}/hello?x=1&api_key=***"
    assert get["answer"]["status"] == 200
    assert json.loads(get["answer"]["body"]) == {"hello": "world", "path": "/hello?x=1"}
    request_headers = dict(get["request"]["headers"])
    assert request_headers["Cookie"] == "***"
    assert request_headers["X-Tenant"] == "***"
    assert get["elapsed_ms"] > 0
    assert json.loads(post["request"]["body"]) == {"tenant": "***", "note": "hello"}
    assert post["request"]["body_bytes"] > 0
    _assert_masked(entries)

    on_prem_entries = (await _log(client, on_prem))["entries"]
    assert len(on_prem_entries) == 2
    get = on_prem_entries[1]
    assert dict(get["request"]["headers"])["Authorization"] == "***"
    assert get["request"]["url"] == f"{api.base}/hello?x=1"
    _assert_masked(on_prem_entries)

    stopped = await client.call("DELETE", f"/v1/connections/{on_prem}/debug")
    assert stopped.body["active"] is False
    await _traffic(client, on_prem)
    assert len((await _log(client, on_prem))["entries"]) == 2

    audit = await client.call("GET", "/v1/audit")
    actions = [(e["action"], e["target"]) for e in audit.body["events"]]
    assert ("connection.debug_started", cloud) in actions
    assert ("connection.debug_stopped", on_prem) in actions


async def test_entries_stop_when_the_window_ends_and_the_log_is_bounded(
    client: APIClient, api: InternalAPI
) -> None:
    conn_id = await _create(client, {"name": "c", "mode": "cloud", "http": {"base_uri": api.base}})
    started = await client.call(
        "POST", f"/v1/connections/{conn_id}/debug", json_body={"minutes": 0.02}
    )
    assert started.status == 200
    proxy = f"/v1/connections/{conn_id}/proxy"
    for i in range(12):
        assert (await client.call("GET", f"{proxy}/hello?n={i}")).status == 200

    async def newest_stored() -> bool:
        entries = (await _log(client, conn_id))["entries"]
        return bool(entries) and entries[0]["request"]["url"].endswith("n=11")

    await poll_until(newest_stored, 10, what="the last request's debug entry")
    entries = (await _log(client, conn_id))["entries"]
    assert len(entries) == 10  # debug_log_entries: the oldest went
    assert entries[0]["request"]["url"].endswith("n=11")
    # The window (1.2 s) ends: nothing more is recorded.
    deadline = time.monotonic() + 10
    while (await _log(client, conn_id))["active"]:
        assert time.monotonic() < deadline, "the window never ended"
        await asyncio.sleep(0.1)
    assert (await client.call("GET", f"{proxy}/hello?n=late")).status == 200
    after = await _log(client, conn_id, "?limit=5")
    assert [e["id"] for e in after["entries"]] == [e["id"] for e in entries[:5]]
    assert after["next_before"] == entries[4]["id"]


async def test_debug_window_settings_are_checked(client: APIClient, api: InternalAPI) -> None:
    conn_id = await _create(client, {"name": "c", "mode": "cloud", "http": {"base_uri": api.base}})
    too_long = await client.call(
        "POST", f"/v1/connections/{conn_id}/debug", json_body={"minutes": 61}
    )
    assert too_long.status == 422
    assert too_long.body["errors"][0]["field"] == "minutes"
    missing = await client.call(
        "POST", "/v1/connections/con_nosuchthing0000/debug", json_body={"minutes": 5}
    )
    assert missing.status == 404


async def test_an_entry_says_how_often_a_rate_limited_request_was_sent(
    client: APIClient,
) -> None:
    async for fragile in serve_fragile():
        fragile.limit_next = 1
        conn_id = await _create(
            client,
            {
                "name": "limited",
                "mode": "cloud",
                "http": {"base_uri": fragile.base, "rate_limit": {"max_retries": 2}},
            },
        )
        await client.call("POST", f"/v1/connections/{conn_id}/debug", json_body={"minutes": 5})
        answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/limited")
        assert answer.status == 200
        await _stored(client, conn_id, 1)
        (entry,) = (await _log(client, conn_id))["entries"]
        assert entry["retries"] == 1
        assert entry["sends"] == 2
        assert entry["answer"]["status"] == 200
        assert ["Sluice-Retries", "1"] in entry["answer"]["headers"]
