"""integrator.io export mapping: template paths, masked secrets, refusals."""

from __future__ import annotations

import pytest

from server.connections.importer import UnsupportedExport, from_integrator, rewrite_template
from server.connections.model import Connection


def test_template_paths_move_with_the_fields() -> None:
    text = "{{{connection.http.auth.token.refreshToken}}}&u={{connection.http.auth.basic.username}}"
    assert rewrite_template(text) == (
        "{{{connection.http.encrypted.refresh_token}}}&u={{connection.http.auth.username}}"
    )
    # A longer name that merely starts like a moved path is left alone.
    assert rewrite_template("{{connection.http.baseURIx}}") == "{{connection.http.baseURIx}}"


def test_masked_secrets_are_listed_not_imported() -> None:
    export = {
        "type": "http",
        "name": "masked",
        "http": {
            "baseURI": "https://api.example.com",
            "mediaType": "form-data",
            "encrypted": "******",
            "auth": {"type": "basic", "basic": {"username": "u", "password": "******"}},
        },
    }
    imported = from_integrator(export, None)
    reasons = {u["field"]: u["reason"] for u in imported.unmapped}
    assert "masked" in reasons["http.auth.basic.password"]
    assert "masked" in reasons["http.encrypted"]
    assert "json is used" in reasons["http.mediaType"]
    assert "password" not in imported.document["http"]["auth"]
    # The connection then names what is missing, like any other document.
    with pytest.raises(ValueError, match="password"):
        Connection.model_validate(imported.document)


def test_token_in_body_and_other_types_are_refused() -> None:
    export = {
        "type": "http",
        "http": {
            "baseURI": "https://api.example.com",
            "auth": {"type": "token", "token": {"token": "t", "location": "body"}},
        },
    }
    with pytest.raises(UnsupportedExport) as info:
        from_integrator(export, None)
    assert info.value.problems[0]["field"] == "http.auth.token.location"
    with pytest.raises(UnsupportedExport) as info:
        from_integrator({"type": "ftp", "http": {}}, None)
    assert info.value.problems[0]["field"] == "type"


def test_custom_auth_is_none_and_fail_statuses_carry_over() -> None:
    export = {
        "type": "http",
        "http": {
            "baseURI": "https://api.example.com",
            "disableStrictSSL": True,
            "auth": {
                "type": "token",
                "failStatusCode": 401,
                "failures": [{"statusCode": 403}],
                "token": {
                    "token": "t" * 8,
                    "location": "url",
                    "paramName": "key",
                    "refreshRelativeURI": "/refresh",
                    "refreshTokenPath": "token",
                },
            },
        },
    }
    imported = from_integrator(export, None)
    connection = Connection.model_validate(imported.document)
    assert connection.http.tls.verify is False
    auth = imported.document["http"]["auth"]
    assert auth["refresh"]["fail_status_codes"] == [401, 403]
    assert auth["param_name"] == "key"
    custom = from_integrator(
        {"type": "http", "http": {"baseURI": "https://a.example", "auth": {"type": "custom"}}}, None
    )
    assert custom.document["http"]["auth"] == {"type": "none"}


def test_client_certificates_and_ca_carry_over() -> None:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("client.example")
    export = {
        "type": "http",
        "name": "mtls",
        "http": {
            "baseURI": "https://api.example.com",
            "auth": {"type": "custom"},
            "clientCertificates": {
                "cert": leaf.cert_chain_pems[0].bytes().decode(),
                "key": leaf.private_key_pem.bytes().decode(),
                "ca": ca.cert_pem.bytes().decode(),
                "passphrase": "******",
            },
        },
    }
    imported = from_integrator(export, None)
    connection = Connection.model_validate(imported.document)
    cert = connection.http.tls.client_certificate
    assert cert is not None
    assert cert.key_pem == leaf.private_key_pem.bytes().decode()
    assert connection.http.tls.ca_bundle_pem == ca.cert_pem.bytes().decode()
    assert {u["field"] for u in imported.unmapped} == {"http.clientCertificates.passphrase"}


def test_traffic_settings_carry_over() -> None:
    """concurrencyLevel, rateLimit, retryHeader and the ping's fail and error
    paths become the connection's (docs/TRAFFIC.md)."""
    imported = from_integrator(
        {
            "type": "http",
            "name": "fragile",
            "http": {
                "baseURI": "https://api.example.com",
                "mediaType": "json",
                "concurrencyLevel": 7,
                "retryHeader": "X-Retry-In",
                "rateLimit": {
                    "failStatusCode": 503,
                    "failPath": "error",
                    "failValues": ["slow"],
                    "limit": 1000,
                },
                "ping": {
                    "relativeURI": "/graphql",
                    "method": "POST",
                    "body": '{"q": 1}',
                    "failPath": "status",
                    "failValues": ["down"],
                    "errorPath": "message",
                },
            },
        },
        None,
    )
    http = imported.document["http"]
    assert http["concurrency_level"] == 7
    assert http["rate_limit"] == {
        "fail_status": 503,
        "fail_path": "error",
        "fail_values": ["slow"],
        "retry_header": "X-Retry-In",
    }
    assert http["ping"]["body"] == '{"q": 1}'
    assert (http["ping"]["fail_path"], http["ping"]["fail_values"]) == ("status", ["down"])
    assert http["ping"]["error_path"] == "message"
    assert "http.rateLimit.limit" in {s["field"] for s in imported.unmapped}
    Connection.model_validate(imported.document)  # and it is a valid connection
