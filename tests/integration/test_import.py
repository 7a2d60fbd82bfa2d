"""POST /v1/connections/import: real-shaped integrator.io exports (token with
refresh, basic, OAuth 2.0 client credentials) become connections whose test
passes against real servers; unsupported auth types are a 422 naming them."""

from __future__ import annotations

from typing import Any

from tests.conftest import AgentFactory
from tests.integration.test_auth_basic import PASSWORD as BASIC_PASSWORD
from tests.integration.test_auth_basic import USER as BASIC_USER
from tests.integration.test_auth_basic import nginx_basic  # noqa: F401 - a fixture
from tests.integration.test_auth_oauth2 import provider  # noqa: F401 - a fixture
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.daemons import Daemon
from tests.support.oauth_server import CLIENT_ID, CLIENT_SECRET, OAuthProvider


def _unmapped(answer_body: dict[str, Any]) -> dict[str, str]:
    return {u["field"]: u["reason"] for u in answer_body["unmapped"]}


async def test_token_export_with_refresh(
    client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, agent = await start_agent([f"127.0.0.1:{api.port}"])
    remember_secret("stale-" + "t" * 16, api.tokens.refresh_secret)
    export = {
        "_id": "64a1f0c2e4b0a1b2c3d4e5f6",
        "_userId": "5f0c1e2d3c4b5a6978877665",
        "_agentId": "6501a2b3c4d5e6f708192a3b",
        "type": "http",
        "name": "Inventory API (token)",
        "offline": False,
        "sandbox": False,
        "lastModified": "2026-11-02T10:15:00.000Z",
        "http": {
            "formType": "http",
            "mediaType": "json",
            "successMediaType": "json",
            "baseURI": api.base,
            "concurrencyLevel": 5,
            "headers": [{"name": "X-Tenant", "value": "{{connection.http.unencrypted.tenant}}"}],
            "unencrypted": {"tenant": "acme"},
            "encryptedFields": [],
            "ping": {"relativeURI": "/secure/ping", "method": "GET", "errorPath": "error"},
            "auth": {
                "type": "token",
                "failStatusCode": 401,
                "token": {
                    "token": "stale-" + "t" * 16,
                    "location": "header",
                    "headerName": "Authorization",
                    "scheme": "Bearer",
                    "refreshMethod": "POST",
                    "refreshRelativeURI": "/oauth/token",
                    "refreshMediaType": "json",
                    "refreshBody": '{"refresh_token": '
                    '"{{{connection.http.auth.token.refreshToken}}}"}',
                    "refreshTokenPath": "data.access_token",
                    "refreshToken": api.tokens.refresh_secret,
                    "refreshTokenLocation": "body",
                },
            },
        },
    }
    answer = await client.call(
        "POST", f"/v1/connections/import?agent_id={agent.agent_id}", json_body=export
    )
    assert answer.status == 201, answer.text
    connection = answer.body["connection"]
    assert connection["mode"] == "on_premise"
    assert connection["http"]["auth"]["token_set"] is True
    assert connection["http"]["encrypted"] == {"refresh_token": {"set": True}}
    unmapped = _unmapped(answer.body)
    for field in (
        "_id",
        "_userId",
        "_agentId",
        "offline",
        "lastModified",
        "http.successMediaType",
        "http.auth.token.refreshTokenLocation",
    ):
        assert field in unmapped, (field, unmapped)
    # What a fragile API needs carries over (docs/TRAFFIC.md).
    assert connection["http"]["concurrency_level"] == 5
    assert connection["http"]["ping"]["error_path"] == "error"
    tested = await client.call("POST", f"/v1/connections/{connection['id']}/test")
    assert tested.body["ok"] is True, tested.text
    assert api.tokens.issued == 1  # the stale token was refreshed with the imported template
    assert api.seen[-1].headers["X-Tenant"] == "acme"
    remember_secret(api.tokens.current)


async def test_basic_export(open_client: APIClient, nginx_basic: Daemon) -> None:  # noqa: F811
    remember_secret(BASIC_PASSWORD)
    export = {
        "_id": "64a1f0c2e4b0a1b2c3d4e5f7",
        "type": "http",
        "name": "Warehouse (basic)",
        "http": {
            "formType": "http",
            "mediaType": "json",
            "baseURI": f"{nginx_basic.base()}/api",
            "ping": {"relativeURI": "/items.json", "method": "GET"},
            "auth": {
                "type": "basic",
                "basic": {"username": BASIC_USER, "password": BASIC_PASSWORD},
            },
            "rateLimit": {"failStatusCode": 429},
        },
    }
    answer = await open_client.call("POST", "/v1/connections/import", json_body=export)
    assert answer.status == 201, answer.text
    connection = answer.body["connection"]
    assert connection["mode"] == "cloud"
    assert connection["http"]["auth"] == {
        "type": "basic",
        "username": BASIC_USER,
        "password_set": True,
    }
    assert set(_unmapped(answer.body)) == {"_id", "http.formType"}
    assert connection["http"]["rate_limit"]["fail_status"] == 429
    tested = await open_client.call("POST", f"/v1/connections/{connection['id']}/test")
    assert tested.body["ok"] is True, tested.text


async def test_oauth_client_credentials_export(
    open_client: APIClient,
    provider: OAuthProvider,  # noqa: F811
) -> None:
    export = {
        "_id": "64a1f0c2e4b0a1b2c3d4e5f8",
        "type": "http",
        "name": "Orders (OAuth 2.0)",
        "http": {
            "formType": "http",
            "mediaType": "json",
            "baseURI": provider.api_base,
            "_iClientId": "6203a7e4f321d800129a1b8e",
            "ping": {"relativeURI": "/me"},
            "auth": {
                "type": "oauth",
                "oauth": {
                    "type": "custom",
                    "grantType": "clientcredentials",
                    "tokenURI": provider.token_uri,
                    "clientId": CLIENT_ID,
                    "clientSecret": CLIENT_SECRET,
                    "scope": ["orders:read", "orders:write"],
                    "clientCredentialsLocation": "basicauthheader",
                    "accessTokenBody": "audience=https://orders.example.com&resource=orders",
                },
            },
        },
    }
    answer = await open_client.call("POST", "/v1/connections/import", json_body=export)
    assert answer.status == 201, answer.text
    auth = answer.body["connection"]["http"]["auth"]
    assert auth["grant_type"] == "client_credentials"
    assert auth["scope"] == "orders:read orders:write"
    assert auth["audience"] == "https://orders.example.com"
    assert auth["extra_params"] == {"resource": "orders"}
    assert auth["client_secret_set"] is True
    assert set(_unmapped(answer.body)) == {
        "_id",
        "http.formType",
        "http._iClientId",
        "http.auth.oauth.type",
    }
    tested = await open_client.call(
        "POST", f"/v1/connections/{answer.body['connection']['id']}/test"
    )
    assert tested.body["ok"] is True, tested.text
    assert "audience=https" in provider.token_bodies[0]
    assert provider.token_auth_headers[0] is not None


async def test_unsupported_auth_and_missing_agent_are_422(client: APIClient) -> None:
    remember_secret("wsse-" + "p" * 16)
    export: dict[str, Any] = {
        "type": "http",
        "name": "SOAP (wsse)",
        "_agentId": "6501a2b3c4d5e6f708192a3b",
        "http": {
            "mediaType": "xml",
            "baseURI": "https://soap.example.com/ws",
            "auth": {
                "type": "wsse",
                "basic": {"username": "u", "password": "wsse-" + "p" * 16},
            },
        },
    }
    answer = await client.call("POST", "/v1/connections/import", json_body=export)
    assert answer.status == 422, answer.text
    errors = {e["field"]: e["message"] for e in answer.body["errors"]}
    assert "wsse" in errors["http.auth.type"]
    assert "agent_id" in errors
    listed = await client.call("GET", "/v1/connections")
    assert listed.body["connections"] == []  # nothing half-created

    export["http"]["auth"] = {"type": "oauth", "oauth": {"grantType": "authorizecode"}}
    answer = await client.call(
        "POST", "/v1/connections/import?agent_id=agt_0123456789abcdef", json_body=export
    )
    assert answer.status == 422
    assert "http.auth.oauth.grantType" in {e["field"] for e in answer.body["errors"]}
