"""REST API connections end to end: what the API receives for each setting,
token refresh, connection tests, SSRF refusal, and restarts that lose nothing."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.connections.model import TokenAuth
from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.waiting import wait_until

# Also run against PostgreSQL by `make test` when SLUICE_TEST_POSTGRES_URL is set.
pytestmark = pytest.mark.postgres

TOKEN = "api-token-" + "s" * 20


def doc(api: InternalAPI, agent_id: str | None, **http: Any) -> dict[str, Any]:
    auth = {
        "type": "token",
        "token": TOKEN,
        "location": "header",
        "header_name": "Authorization",
        "scheme": "Bearer",
    }
    auth.update(http.pop("auth", {}))
    body: dict[str, Any] = {
        "name": "Inventory",
        "mode": "on_premise" if agent_id else "cloud",
        "agent_id": agent_id,
        "http": {"base_uri": f"{api.base}/", "media_type": "json", "auth": auth, **http},
    }
    return body


@pytest.fixture
async def online_agent(relay: Relay, api: InternalAPI, start_agent: AgentFactory) -> str:
    remember_secret(TOKEN)
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    return token.agent_id


async def _create(client: APIClient, document: dict[str, Any]) -> str:
    answer = await client.call("POST", "/v1/connections", json_body=document)
    assert answer.status == 201, answer.text
    return str(answer.body["id"])


async def test_each_setting_changes_what_the_api_receives(
    client: APIClient, api: InternalAPI, online_agent: str
) -> None:
    cases: list[tuple[dict[str, Any], Any]] = [
        ({}, lambda s: s.headers["Authorization"] == f"Bearer {TOKEN}"),
        (
            {"auth": {"header_name": "X-Api-Key", "scheme": None}},
            lambda s: s.headers["X-Api-Key"] == TOKEN and "Authorization" not in s.headers,
        ),
        (
            {
                "auth": {
                    "location": "url",
                    "param_name": "api_key",
                    "header_name": None,
                    "scheme": None,
                }
            },
            lambda s: f"api_key={TOKEN}" in s.query and "Authorization" not in s.headers,
        ),
        (
            {"headers": [{"name": "X-Tenant", "value": "acme"}]},
            lambda s: s.headers["X-Tenant"] == "acme",
        ),
        ({"media_type": "xml"}, lambda s: s.headers["Content-Type"] == "application/xml"),
        (
            {"media_type": "urlencoded"},
            lambda s: s.headers["Content-Type"] == "application/x-www-form-urlencoded",
        ),
        ({"media_type": "plaintext"}, lambda s: s.headers["Content-Type"] == "text/plain"),
        ({"media_type": "csv"}, lambda s: s.headers["Content-Type"] == "text/csv"),
        ({"media_type": "json"}, lambda s: s.headers["Content-Type"] == "application/json"),
    ]
    for settings, check in cases:
        conn_id = await _create(client, doc(api, online_agent, **copy.deepcopy(settings)))
        # GET: no body, so no Content-Type of the caller's own competes.
        answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello?x=1")
        assert answer.status == 200, (settings, answer.text)
        assert answer.headers["Sluice-Connection"] == conn_id
        seen = api.seen[-1]
        assert seen.path == "/hello"
        assert check(seen), (settings, seen)


async def test_caller_headers_pass_but_never_the_admin_token(
    client: APIClient, api: InternalAPI, online_agent: str
) -> None:
    conn_id = await _create(client, doc(api, online_agent))
    answer = await client.call(
        "GET",
        f"/v1/connections/{conn_id}/proxy/hello",
        headers={"X-Request-Id": "r-1", "Content-Type": "text/csv"},
    )
    assert answer.status == 200
    seen = api.seen[-1]
    assert seen.headers["X-Request-Id"] == "r-1"
    assert seen.headers["Content-Type"] == "text/csv"  # the caller's wins over media type
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"  # auth is applied last
    assert client.token not in str(seen.headers)


def refreshing(api: InternalAPI, agent_id: str | None, **extra: Any) -> dict[str, Any]:
    remember_secret(api.tokens.refresh_secret)
    return doc(
        api,
        agent_id,
        encrypted={"refresh_token": api.tokens.refresh_secret},
        auth={
            "token": "stale-token-" + "q" * 10,
            "refresh": {
                "method": "POST",
                "relative_uri": "/oauth/token",
                "headers": [],
                "body": '{"refresh_token": "{{connection.http.encrypted.refresh_token}}"}',
                "media_type": None,
                "token_path": "data.access_token",
                **extra,
            },
        },
    )


async def test_expired_token_is_refreshed_once_for_twenty_callers(
    relay: Relay, client: APIClient, api: InternalAPI, online_agent: str
) -> None:
    remember_secret("stale-token-" + "q" * 10)
    conn_id = await _create(client, refreshing(api, online_agent))
    answers = await asyncio.gather(
        *[client.call("GET", f"/v1/connections/{conn_id}/proxy/secure/items") for _ in range(20)]
    )
    assert [a.status for a in answers] == [200] * 20
    assert all(a.body == {"secure": True, "path": "/secure/items"} for a in answers)
    assert api.tokens.issued == 1
    assert api.tokens.refresh_bodies[0] == (
        b'{"refresh_token": "' + api.tokens.refresh_secret.encode() + b'"}'
    )
    remember_secret(api.tokens.current)
    # The new token was stored (encrypted): a fresh handle uses it directly.
    handle = await relay.connections.handle(conn_id)
    assert isinstance(handle.connection.http.auth, TokenAuth)
    assert handle.connection.http.auth.token == api.tokens.current
    stored = await relay.store.get_connection(conn_id)
    assert stored is not None
    assert api.tokens.current not in stored.document


async def test_refresh_answer_without_the_token_fails_clearly(
    client: APIClient, api: InternalAPI, online_agent: str
) -> None:
    api.tokens.omit_token = True
    remember_secret("stale-token-" + "q" * 10)
    conn_id = await _create(client, refreshing(api, online_agent))
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/secure/x")
    assert answer.status == 502
    assert answer.body["type"] == "token_refresh_failed"
    assert "data.access_token" in answer.body["detail"]
    assert "note" in answer.body["detail"]  # says what the answer held


async def test_ping_results(client: APIClient, api: InternalAPI, online_agent: str) -> None:
    async def ping(**p: Any) -> dict[str, Any]:
        document = doc(api, online_agent, ping={"method": "GET", **p})
        answer = await client.call("POST", "/v1/connections/test", json_body=document)
        assert answer.status == 200, answer.text
        return dict(answer.body)

    ok = await ping(
        relative_uri="/slack/auth.test?ok=true", success_path="ok", success_values=["true"]
    )
    assert ok["ok"] is True
    assert ok["status"] == 200
    assert ok["elapsed_ms"] >= 0

    slack = await ping(relative_uri="/slack/auth.test", success_path="ok", success_values=["true"])
    assert slack["ok"] is False
    assert "false" in slack["message"]

    case = await ping(
        relative_uri="/flag?value=True", success_path="status.ok", success_values=["true"]
    )
    assert case["ok"] is False
    assert "True" in case["message"]

    missing = await ping(relative_uri="/nowhere")
    assert missing["ok"] is False
    assert missing["status"] == 404
    assert "404" in missing["message"]

    no_ping = await client.call("POST", "/v1/connections/test", json_body=doc(api, online_agent))
    assert no_ping.status == 200
    assert no_ping.body["ok"] is False
    assert "relative" in no_ping.body["message"].lower()


async def test_saved_test_is_recorded(
    client: APIClient, api: InternalAPI, online_agent: str
) -> None:
    conn_id = await _create(
        client,
        doc(
            api,
            online_agent,
            ping={
                "method": "GET",
                "relative_uri": "/hello",
                "success_path": "hello",
                "success_values": ["world"],
            },
        ),
    )
    result = await client.call("POST", f"/v1/connections/{conn_id}/test")
    assert result.body["ok"] is True
    got = await client.call("GET", f"/v1/connections/{conn_id}")
    assert got.body["last_test"]["ok"] is True


async def test_validation_names_every_failing_field(
    client: APIClient, online_agent: str, api: InternalAPI
) -> None:
    bad = doc(api, None, auth={"location": "url", "param_name": None})
    bad["name"] = ""
    bad["http"]["base_uri"] = "ftp://x"
    answer = await client.call("POST", "/v1/connections", json_body=bad)
    assert answer.status == 422
    assert answer.body["type"] == "validation_error"
    fields = {e["field"] for e in answer.body["errors"]}
    assert {"name", "http.base_uri"} <= fields
    assert any("param_name" in f for f in fields), fields

    no_agent = doc(api, "agt_doesnotexist00000")
    answer = await client.call("POST", "/v1/connections", json_body=no_agent)
    assert answer.status == 422
    assert answer.body["errors"][0]["field"] == "agent_id"


async def test_patch_keeps_omitted_secrets_and_never_returns_them(
    relay: Relay, client: APIClient, api: InternalAPI, online_agent: str
) -> None:
    conn_id = await _create(client, refreshing(api, online_agent))
    got = await client.call("GET", f"/v1/connections/{conn_id}")
    assert TOKEN not in got.text
    assert api.tokens.refresh_secret not in got.text
    patched = await client.call(
        "PATCH",
        f"/v1/connections/{conn_id}",
        json_body={"name": "Renamed", "http": {"media_type": "xml"}},
    )
    assert patched.status == 200, patched.text
    assert patched.body["name"] == "Renamed"
    handle = await relay.connections.handle(conn_id)
    assert handle.connection.http.encrypted["refresh_token"] == api.tokens.refresh_secret
    assert handle.connection.http.media_type == "xml"


async def test_cloud_mode_refuses_private_destinations(client: APIClient) -> None:
    for base in [
        "http://127.0.0.1:9/",
        "http://169.254.169.254/latest/",
        "http://[::1]:9/",
        "http://localhost:9/",
        "http://10.1.2.3/",
    ]:
        remember_secret(TOKEN)
        document = {
            "name": "ssrf",
            "mode": "cloud",
            "http": {
                "base_uri": base,
                "media_type": "json",
                "auth": {"type": "token", "token": TOKEN, "location": "header"},
                "ping": {"method": "GET", "relative_uri": "/"},
            },
        }
        result = await client.call("POST", "/v1/connections/test", json_body=document)
        assert result.body["ok"] is False, base
        assert "destination_forbidden" in result.body["message"], result.body
        conn_id = await _create(client, document)
        proxied = await client.call("GET", f"/v1/connections/{conn_id}/proxy/x")
        assert proxied.status == 403
        assert proxied.body["type"] == "destination_forbidden"


@pytest.fixture
async def open_relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(
        relay_settings(tmp_path, allow_private_destinations=True, data_dir=tmp_path / "open")
    )
    try:
        yield relay
    finally:
        await relay.close()


async def test_cloud_mode_goes_direct_when_private_is_allowed(
    open_relay: Relay, api: InternalAPI
) -> None:
    remember_secret(TOKEN, open_relay.admin_token)
    async with aiohttp.ClientSession() as session:
        client = APIClient(session, open_relay.http_base, open_relay.admin_token)
        conn_id = await _create(
            client, doc(api, None, ping={"method": "GET", "relative_uri": "/hello"})
        )
        answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello?q=1")
        assert answer.status == 200
        assert answer.body == {"hello": "world", "path": "/hello?q=1"}
        assert api.seen[-1].headers["Authorization"] == f"Bearer {TOKEN}"
        tested = await client.call("POST", f"/v1/connections/{conn_id}/test")
        assert tested.body["ok"] is True


async def test_agent_offline_is_a_prompt_error(client: APIClient, api: InternalAPI) -> None:
    agent = (
        await client.call("POST", "/v1/agents", json_body={"name": "off"}, shows_token=True)
    ).body
    remember_secret(agent["token"], TOKEN)
    conn_id = await _create(client, doc(api, agent["id"]))
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello")
    assert answer.status == 503
    assert answer.body["type"] == "agent_offline"


async def test_restart_loses_nothing(
    tmp_path: Path, api: InternalAPI, start_agent: AgentFactory, relay: Relay
) -> None:
    """A second relay process on the same data dir and ports sees everything."""
    remember_secret(TOKEN)
    async with aiohttp.ClientSession() as session:
        client = APIClient(session, relay.http_base, relay.admin_token)
        agent_proc, token = await start_agent([f"127.0.0.1:{api.port}"])
        conn_id = await _create(client, refreshing(api, token.agent_id))
        assert (await client.call("GET", f"/v1/connections/{conn_id}/proxy/secure/a")).status == 200
        refreshed = api.tokens.current
        remember_secret(refreshed)
        ssh_port, http_port = relay.ssh_address[1], relay.http_address[1]
        await relay.close()

        again = await Relay.start(
            relay_settings(
                tmp_path, ssh_listen=f"127.0.0.1:{ssh_port}", http_listen=f"127.0.0.1:{http_port}"
            )
        )
        try:
            assert again.admin_token == relay.admin_token
            await wait_until(
                lambda: again.registry.is_online(token.agent_id), timeout=20, what="agent online"
            )
            answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/secure/b")
            assert answer.status == 200
            assert api.tokens.issued == 1  # the refreshed token survived the restart
            agents = await client.call("GET", "/v1/agents")
            assert [a["id"] for a in agents.body["agents"]] == [token.agent_id]
            listed = await client.call("GET", "/v1/connections")
            assert [c["id"] for c in listed.body["connections"]] == [conn_id]
        finally:
            await again.close()
    assert agent_proc.proc is not None


async def test_metrics_count_requests_errors_tunnels_and_refreshes(
    client: APIClient, api: InternalAPI, online_agent: str
) -> None:
    conn_id = await _create(client, refreshing(api, online_agent))
    remember_secret("stale-token-" + "q" * 10)
    assert (await client.call("GET", f"/v1/connections/{conn_id}/proxy/secure/a")).status == 200
    remember_secret(api.tokens.current)
    offline = (
        await client.call("POST", "/v1/agents", json_body={"name": "off"}, shows_token=True)
    ).body
    remember_secret(offline["token"])
    off_id = await _create(client, doc(api, offline["id"]))
    assert (await client.call("GET", f"/v1/connections/{off_id}/proxy/x")).status == 503
    text = (await client.call("GET", "/metrics")).text
    assert 'sluice_requests_total{mode="on_premise",status_class="2xx"} 1.0' in text
    assert 'sluice_errors_total{type="agent_offline"} 1.0' in text
    assert 'sluice_token_refreshes_total{outcome="ok"} 1.0' in text
    assert "sluice_tunnels 1.0" in text
    assert "sluice_agents_online 1.0" in text
    assert 'sluice_request_seconds_count{mode="on_premise"} 1.0' in text
