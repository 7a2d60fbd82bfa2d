"""Cloud mode against the address forms a review found passing or crashing:
IPv6 forms that carry a private IPv4 address, and numeric IPv4 shorthands."""

from __future__ import annotations

import pytest

from tests.support.capture import APIClient


def _document(base: str) -> dict[str, object]:
    return {
        "name": "ssrf",
        "mode": "cloud",
        "http": {"base_uri": base, "ping": {"method": "GET", "relative_uri": "/"}},
    }


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
        "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
        "[::127.0.0.1]",  # IPv4-compatible
    ],
)
async def test_ipv6_forms_of_a_private_ipv4_are_refused(client: APIClient, host: str) -> None:
    created = await client.call("POST", "/v1/connections", json_body=_document(f"http://{host}:9/"))
    assert created.status == 201, created.text
    proxied = await client.call("GET", f"/v1/connections/{created.body['id']}/proxy/x")
    assert proxied.status == 403, proxied.text
    assert proxied.body["type"] == "destination_forbidden"


@pytest.mark.parametrize("host", ["127.1", "0", "2130706433", "017700000001", "0x7f000001"])
async def test_numeric_ipv4_shorthands_are_refused_when_saved(client: APIClient, host: str) -> None:
    for path in ("/v1/connections", "/v1/connections/test"):
        answer = await client.call("POST", path, json_body=_document(f"http://{host}:9/"))
        assert answer.status == 422, answer.text
        assert answer.body["type"] == "validation_error"
        fields = [problem["field"] for problem in answer.body["errors"]]
        assert fields == ["http.base_uri"], answer.body
        assert "dotted-quad" in answer.text
