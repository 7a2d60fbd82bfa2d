"""Cookie sessions (log in, send the cookies, one re-login on a 401) and the
token refresh extras (fail_status_codes, a rotated refresh token)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.session_api import PASSWORD, USER, SessionAPI, serve_session_api


@pytest.fixture
async def session_api() -> AsyncIterator[SessionAPI]:
    remember_secret(PASSWORD)
    async for running in serve_session_api():
        yield running
        remember_secret(*running.issued)


def cookie_doc(api: SessionAPI, agent_id: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "name": "Legacy ERP (session)",
        "mode": "on_premise",
        "agent_id": agent_id,
        "http": {
            "base_uri": api.base,
            "auth": {
                "type": "cookie",
                "uri": "/auth/login",
                "method": "POST",
                "body": '{"user": "{{connection.http.unencrypted.user}}", '
                '"password": "{{connection.http.encrypted.password}}"}',
                "success_status": 200,
            },
            "encrypted": {"password": password},
            "unencrypted": {"user": USER},
            "ping": {"relative_uri": "/whoami"},
        },
    }


async def test_cookie_login_and_one_relogin_after_expiry(
    client: APIClient, session_api: SessionAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{session_api.port}"])
    created = await client.call(
        "POST", "/v1/connections", json_body=cookie_doc(session_api, token.agent_id)
    )
    assert created.status == 201, created.text
    conn_id = created.body["id"]
    answers = await asyncio.gather(
        *[client.call("GET", f"/v1/connections/{conn_id}/proxy/items/{i}") for i in range(10)]
    )
    assert [a.status for a in answers] == [200] * 10
    assert answers[0].body == {"ok": True, "path": "/items/0", "lang": "en"}
    assert session_api.logins == 1  # ten callers, one login
    assert all("sid=" in c and "lang=en" in c for c in session_api.cookies_seen)

    session_api.expire_all()
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/after")
    assert answer.status == 200, answer.text
    assert session_api.logins == 2
    assert session_api.unauthorized == 1
    tested = await client.call("POST", f"/v1/connections/{conn_id}/test")
    assert tested.body["ok"] is True, tested.text


async def test_cookie_login_refused_is_a_clear_problem(
    client: APIClient, session_api: SessionAPI, start_agent: AgentFactory
) -> None:
    remember_secret("wrong-" + PASSWORD)
    _, token = await start_agent([f"127.0.0.1:{session_api.port}"])
    document = cookie_doc(session_api, token.agent_id, password="wrong-" + PASSWORD)
    created = await client.call("POST", "/v1/connections", json_body=document)
    answer = await client.call("GET", f"/v1/connections/{created.body['id']}/proxy/x")
    assert answer.status == 502
    assert answer.body["type"] == "login_failed"
    assert "403" in answer.body["detail"]
    assert session_api.failed_logins == 1


def refreshing(api: InternalAPI, agent_id: str, **refresh: Any) -> dict[str, Any]:
    return {
        "name": "Inventory",
        "mode": "on_premise",
        "agent_id": agent_id,
        "http": {
            "base_uri": api.base,
            "auth": {
                "type": "token",
                "token": "stale-token-" + "q" * 10,
                "scheme": "Bearer",
                "refresh": {
                    "method": "POST",
                    "relative_uri": "/oauth/token",
                    "body": '{"refresh_token": "{{connection.http.encrypted.refresh_token}}"}',
                    "token_path": "data.access_token",
                    **refresh,
                },
            },
            "encrypted": {"refresh_token": api.tokens.refresh_secret},
        },
    }


async def test_token_refresh_on_listed_status_with_rotated_refresh_token(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, agent = await start_agent([f"127.0.0.1:{api.port}"])
    api.tokens.rotate = True
    api.tokens.reject_status = 403  # this API says 403 for an expired token
    first_refresh = api.tokens.refresh_secret
    remember_secret("stale-token-" + "q" * 10, first_refresh)
    document = refreshing(
        api,
        agent.agent_id,
        fail_status_codes=[401, 403],
        refresh_token_path="data.refresh_token",
    )
    created = await client.call("POST", "/v1/connections", json_body=document)
    assert created.status == 201, created.text
    conn_id = created.body["id"]
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/secure/a")
    assert answer.status == 200, answer.text
    rotated = api.tokens.refresh_secret
    remember_secret(rotated, api.tokens.current)
    assert rotated != first_refresh
    handle = await relay.connections.handle(conn_id)
    assert handle.connection.http.encrypted["refresh_token"] == rotated
    stored = await relay.store.get_connection(conn_id)
    assert stored is not None
    assert rotated not in stored.document

    api.tokens.current = "revoked-" + "z" * 10  # the API forgets the token
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/secure/b")
    assert answer.status == 200, answer.text
    assert api.tokens.refresh_bodies[-1] == b'{"refresh_token": "' + rotated.encode() + b'"}'
    remember_secret(api.tokens.refresh_secret, api.tokens.current)
    assert api.tokens.issued == 2


async def test_status_not_listed_is_passed_on(
    client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, agent = await start_agent([f"127.0.0.1:{api.port}"])
    api.tokens.reject_status = 403
    remember_secret("stale-token-" + "q" * 10, api.tokens.refresh_secret)
    created = await client.call(
        "POST", "/v1/connections", json_body=refreshing(api, agent.agent_id)
    )
    answer = await client.call("GET", f"/v1/connections/{created.body['id']}/proxy/secure/a")
    assert answer.status == 403  # default fail_status_codes is [401]
    assert api.tokens.issued == 0
