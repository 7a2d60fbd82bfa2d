"""OAuth 2.0 against a token endpoint built on Authlib's AuthorizationServer,
on another port than the API, in cloud and on-premise mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.capture import APIClient, remember_secret
from tests.support.oauth_server import (
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    USERNAME,
    OAuthProvider,
    serve_oauth,
)
from tests.support.waiting import wait_until


@pytest.fixture
async def provider() -> AsyncIterator[OAuthProvider]:
    remember_secret(CLIENT_SECRET, PASSWORD)
    async for running in serve_oauth():
        yield running
        # Every token the provider handed out is a secret too.
        remember_secret(*running.access, *running.issued_refresh)


def oauth_doc(provider: OAuthProvider, agent_id: str | None = None, **auth: Any) -> dict[str, Any]:
    return {
        "name": "Orders (OAuth 2.0)",
        "mode": "on_premise" if agent_id else "cloud",
        "agent_id": agent_id,
        "http": {
            "base_uri": provider.api_base,
            "auth": {
                "type": "oauth2",
                "grant_type": "client_credentials",
                "token_uri": provider.token_uri,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                **auth,
            },
            "ping": {"relative_uri": "/ping"},
        },
    }


async def _create(client: APIClient, document: dict[str, Any]) -> str:
    answer = await client.call("POST", "/v1/connections", json_body=document)
    assert answer.status == 201, answer.text
    for name in ("client_secret", "password", "refresh_token"):
        assert name not in answer.body["http"]["auth"]
    return str(answer.body["id"])


@pytest.mark.parametrize("location", ["basic_header", "body"])
async def test_client_credentials_cloud(
    open_client: APIClient, provider: OAuthProvider, location: str
) -> None:
    conn_id = await _create(
        open_client, oauth_doc(provider, client_credentials_location=location, scope="orders")
    )
    answer = await open_client.call("GET", f"/v1/connections/{conn_id}/proxy/orders")
    assert answer.status == 200, answer.text
    assert answer.body == {"ok": True, "grant": "client_credentials", "path": "/orders"}
    again = await open_client.call("GET", f"/v1/connections/{conn_id}/proxy/orders")
    assert again.status == 200
    assert provider.token_calls == 1  # the token is reused
    body, header = provider.token_bodies[0], provider.token_auth_headers[0]
    assert "scope=orders" in body
    if location == "basic_header":
        assert header is not None
        assert header.startswith("Basic ")
        assert "client_secret" not in body
    else:
        assert header is None
        assert f"client_secret={CLIENT_SECRET}" in body
    tested = await open_client.call("POST", f"/v1/connections/{conn_id}/test")
    assert tested.body["ok"] is True, tested.text


async def test_on_premise_token_endpoint_is_reached_through_the_agent(
    client: APIClient, provider: OAuthProvider, start_agent: AgentFactory
) -> None:
    # The agent may reach the API but not the identity provider: the token
    # call is refused by its allowlist, so it did go through the agent.
    _, only_api = await start_agent([f"127.0.0.1:{provider.api_port}"])
    conn_id = await _create(client, oauth_doc(provider, only_api.agent_id))
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/orders")
    assert answer.status == 502
    assert answer.body["type"] == "token_refresh_failed"
    assert provider.token_calls == 0

    _, both = await start_agent(
        [f"127.0.0.1:{provider.api_port}", f"127.0.0.1:{provider.token_port}"]
    )
    conn_id = await _create(client, oauth_doc(provider, both.agent_id))
    answers = await asyncio.gather(
        *[client.call("GET", f"/v1/connections/{conn_id}/proxy/o/{i}") for i in range(20)]
    )
    assert [a.status for a in answers] == [200] * 20
    assert provider.token_calls == 1  # twenty callers, one token call
    assert provider.api_unauthorized == 0
    assert provider.token_auth_headers[0] is not None  # the secret in the Basic header

    in_body = await _create(
        client, oauth_doc(provider, both.agent_id, client_credentials_location="body")
    )
    answer = await client.call("GET", f"/v1/connections/{in_body}/proxy/orders")
    assert answer.status == 200, answer.text
    assert provider.token_calls == 2
    assert provider.token_auth_headers[1] is None
    assert f"client_secret={CLIENT_SECRET}" in provider.token_bodies[1]


async def test_password_grant(open_client: APIClient, provider: OAuthProvider) -> None:
    conn_id = await _create(
        open_client,
        oauth_doc(provider, grant_type="password", username=USERNAME, password=PASSWORD),
    )
    answer = await open_client.call("GET", f"/v1/connections/{conn_id}/proxy/me")
    assert answer.status == 200, answer.text
    assert answer.body["grant"] == "password"
    assert f"username={USERNAME}" in provider.token_bodies[0]


async def test_refresh_token_grant_stores_the_rotated_token(
    tmp_path: Path, provider: OAuthProvider
) -> None:
    relay = await Relay.start(relay_settings(tmp_path, allow_private_destinations=True))
    remember_secret(relay.admin_token)
    first = provider.new_refresh_token()
    try:
        async with aiohttp.ClientSession() as session:
            client = APIClient(session, relay.http_base, relay.admin_token)
            conn_id = await _create(
                client,
                oauth_doc(
                    provider,
                    grant_type="refresh_token",
                    refresh_token=first,
                    client_credentials_location="body",
                ),
            )
            answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/a")
            assert answer.status == 200, answer.text
            rotated = provider.issued_refresh[-1]
            assert rotated != first
            assert first not in provider.refresh_tokens  # the provider revoked it
            stored = await relay.store.get_connection(conn_id)
            assert stored is not None
            assert rotated not in stored.document  # sealed
            handle = await relay.connections.handle(conn_id)
            assert getattr(handle.connection.http.auth, "refresh_token", None) == rotated

            # The access token is revoked: one 401, one token call with the
            # rotated refresh token, and the caller gets its 200.
            provider.revoke_all_access()
            answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/b")
            assert answer.status == 200, answer.text
            assert provider.token_calls == 2
            assert f"refresh_token={rotated}" in provider.token_bodies[1]
            assert provider.api_unauthorized == 1
            got = await client.call("GET", f"/v1/connections/{conn_id}")
            assert got.body["http"]["auth"]["refresh_token_set"] is True
            audit = await client.call("GET", "/v1/audit?limit=50")
            assert audit.status == 200
    finally:
        await relay.close()


async def test_expiry_is_honoured_without_a_401(
    open_client: APIClient, provider: OAuthProvider
) -> None:
    provider.expires_in = 2
    conn_id = await _create(open_client, oauth_doc(provider))

    first = await open_client.call("GET", f"/v1/connections/{conn_id}/proxy/tick")
    assert first.status == 200, first.text
    (issued,) = provider.access.values()
    # Once the provider no longer accepts the first token, a relay that did
    # not honour expires_in would send it, meet a 401 and retry.
    await wait_until(lambda: time.monotonic() >= issued.expires_at, timeout=5, what="expiry")
    answer = await open_client.call("GET", f"/v1/connections/{conn_id}/proxy/tick")
    assert answer.status == 200, answer.text
    assert provider.token_calls == 2
    assert provider.api_unauthorized == 0


async def test_invalid_client_is_the_problem_detail(
    open_client: APIClient, provider: OAuthProvider
) -> None:
    remember_secret("wrong-" + CLIENT_SECRET)
    conn_id = await _create(
        open_client, oauth_doc(provider, client_secret="wrong-" + CLIENT_SECRET)
    )
    answer = await open_client.call("GET", f"/v1/connections/{conn_id}/proxy/orders")
    assert answer.status == 502
    assert answer.body["type"] == "token_refresh_failed"
    assert "invalid_client" in answer.body["detail"]
    assert provider.api_calls == 0


async def test_unsaved_settings_test_with_oauth2(
    open_client: APIClient, provider: OAuthProvider
) -> None:
    for _ in range(2):  # each test fetches its own token: nothing is kept for unsaved settings
        answer = await open_client.call(
            "POST", "/v1/connections/test", json_body=oauth_doc(provider)
        )
        assert answer.status == 200, answer.text
        assert answer.body["ok"] is True, answer.text
    assert provider.token_calls == 2
