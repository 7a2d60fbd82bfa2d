"""The auth types and client certificates of a connection: rules, secrets, views."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import ValidationError

from server.connections.documents import (
    iter_secrets,
    map_secrets,
    merge_patch,
    public_view,
    validation_problems,
)
from server.connections.model import Connection

PASSWORD = "pw-" + "p" * 20
CLIENT_SECRET = "cs-" + "c" * 20
REFRESH = "rt-" + "r" * 20
PASSPHRASE = "pp-" + "x" * 20


def doc(auth: dict[str, Any] | None, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    http: dict[str, Any] = {"base_uri": "https://api.example.com/v1", "auth": auth}
    if tls is not None:
        http["tls"] = tls
    return {"name": "n", "mode": "cloud", "http": http}


def problems(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        Connection.model_validate(document)
    return {p["field"]: p["message"] for p in validation_problems(info.value)}


OAUTH = {
    "type": "oauth2",
    "grant_type": "client_credentials",
    "token_uri": "https://idp.example.com/oauth/token",
    "client_id": "cid",
    "client_secret": CLIENT_SECRET,
}


# -- rules ---------------------------------------------------------------------
def test_basic_needs_password_and_no_colon_in_user() -> None:
    assert "password" in " ".join(problems(doc({"type": "basic", "username": "u"})))
    found = problems(doc({"type": "basic", "username": "a:b", "password": PASSWORD}))
    assert "':'" in found["http.auth.username"]
    ok = Connection.model_validate(doc({"type": "basic", "username": "ü", "password": PASSWORD}))
    assert ok.http.auth is not None
    assert ok.http.auth.type == "basic"


def test_unknown_auth_type_names_the_field() -> None:
    found = problems(doc({"type": "wsse", "username": "u"}))
    assert "basic" in found["http.auth.type"]
    assert "oauth2" in found["http.auth.type"]


def test_fields_of_another_type_are_refused_at_the_field() -> None:
    found = problems(doc({"type": "basic", "username": "u", "password": PASSWORD, "scope": "x"}))
    assert "unknown field" in found["http.auth.scope"]


@pytest.mark.parametrize(
    ("grant", "missing"),
    [
        ("client_credentials", {"client_secret"}),
        ("password", {"username", "password"}),
        ("refresh_token", {"refresh_token"}),
    ],
)
def test_oauth2_grant_needs_its_fields(grant: str, missing: set[str]) -> None:
    auth = {**OAUTH, "grant_type": grant, "client_secret": None}
    found = problems(doc(auth))
    assert {f"http.auth.{name}" for name in missing} <= set(found)
    assert all(grant in found[f"http.auth.{name}"] for name in missing)


def test_oauth2_token_uri_is_absolute_and_extra_params_do_not_shadow() -> None:
    found = problems(doc({**OAUTH, "token_uri": "/oauth/token"}))
    assert "absolute URL" in found["http.auth.token_uri"]
    found = problems(doc({**OAUTH, "extra_params": {"client_secret": "x"}}))
    assert "own field" in found["http.auth.extra_params"]


def test_cookie_and_none() -> None:
    found = problems(doc({"type": "cookie", "uri": " "}))
    assert "required" in found["http.auth.uri"]
    found = problems(doc({"type": "cookie", "uri": "/login", "method": "GET", "body": "x"}))
    assert "GET" in found["http.auth.body"]
    assert Connection.model_validate(doc({"type": "none"})).http.auth is not None


def test_token_without_type_is_still_token_and_refresh_extras_default() -> None:
    auth = {"token": "t" * 10, "refresh": {"method": "POST", "token_path": "access_token"}}
    connection = Connection.model_validate(doc(auth))
    assert connection.http.auth is not None
    assert connection.http.auth.type == "token"
    refresh = connection.http.auth.refresh
    assert refresh is not None
    assert refresh.fail_status_codes == [401]
    assert refresh.refresh_token_path is None
    auth["refresh"]["fail_status_codes"] = [200]  # type: ignore[index]
    assert "http.auth.refresh.fail_status_codes[0]" in problems(doc(auth))


# -- secrets ---------------------------------------------------------------------
def _cert_pems(ca: trustme.CA, passphrase: str | None = None) -> tuple[str, str]:
    leaf = ca.issue_cert("client.example")
    cert = leaf.cert_chain_pems[0].bytes().decode()
    key = leaf.private_key_pem.bytes()
    if passphrase:
        loaded = serialization.load_pem_private_key(key, None)
        key = loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase.encode()),
        )
    return cert, key.decode()


def test_every_new_secret_is_walked_sealed_and_hidden() -> None:
    ca = trustme.CA()
    cert, key = _cert_pems(ca, PASSPHRASE)
    auth = {**OAUTH, "grant_type": "refresh_token", "refresh_token": REFRESH}
    tls = {"client_certificate": {"cert_pem": cert, "key_pem": key, "passphrase": PASSPHRASE}}
    connection = Connection.model_validate(doc(auth, tls))
    dumped = connection.model_dump(mode="json")
    paths = dict(iter_secrets(dumped))
    assert paths == {
        "http.auth.client_secret": CLIENT_SECRET,
        "http.auth.refresh_token": REFRESH,
        "http.tls.client_certificate.key_pem": key,
        "http.tls.client_certificate.passphrase": PASSPHRASE,
    }
    sealed = map_secrets(dumped, lambda path, value: f"<{path}>")
    text = repr(sealed)
    for secret in (CLIENT_SECRET, REFRESH, key, PASSPHRASE):
        assert secret not in text
    view = public_view(connection)
    shown = repr(view)
    for secret in (CLIENT_SECRET, REFRESH, PASSPHRASE, "PRIVATE KEY"):
        assert secret not in shown
    assert view["http"]["auth"]["client_secret_set"] is True
    assert view["http"]["auth"]["password_set"] is False
    client_cert = view["http"]["tls"]["client_certificate"]
    assert client_cert["key_pem_set"] is True
    assert client_cert["pfx_base64_set"] is False
    assert client_cert["cert_pem"] == cert  # the certificate itself is public


def test_basic_password_is_a_secret_and_view_round_trips() -> None:
    connection = Connection.model_validate(
        doc({"type": "basic", "username": "u", "password": PASSWORD})
    )
    assert dict(iter_secrets(connection.model_dump(mode="json"))) == {
        "http.auth.password": PASSWORD
    }
    view = public_view(connection)
    assert view["http"]["auth"] == {"type": "basic", "username": "u", "password_set": True}
    merged = merge_patch(connection.model_dump(mode="json"), view)
    assert merged["http"]["auth"]["password"] == PASSWORD  # sending back what was read


def test_patch_to_another_auth_type_replaces_auth() -> None:
    stored = Connection.model_validate(
        doc({"type": "token", "token": "t" * 10, "location": "url", "param_name": "k"})
    ).model_dump(mode="json")
    merged = merge_patch(
        stored, {"http": {"auth": {"type": "basic", "username": "u", "password": PASSWORD}}}
    )
    assert merged["http"]["auth"] == {"type": "basic", "username": "u", "password": PASSWORD}
    assert Connection.model_validate(merged).http.auth is not None


# -- client certificates -------------------------------------------------------------
def test_client_certificate_pem_and_pfx_are_accepted() -> None:
    ca = trustme.CA()
    cert, key = _cert_pems(ca)
    Connection.model_validate(doc(None, {"client_certificate": {"cert_pem": cert, "key_pem": key}}))
    leaf = ca.issue_cert("client.example")
    pfx = pkcs12.serialize_key_and_certificates(
        b"c",
        serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None),  # type: ignore[arg-type]
        __import__("cryptography.x509", fromlist=["x"]).load_pem_x509_certificate(
            leaf.cert_chain_pems[0].bytes()
        ),
        None,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )
    pfx_b64 = base64.b64encode(pfx).decode()
    Connection.model_validate(
        doc(None, {"client_certificate": {"pfx_base64": pfx_b64, "passphrase": PASSPHRASE}})
    )
    found = problems(doc(None, {"client_certificate": {"pfx_base64": pfx_b64}}))
    assert "passphrase" in found["http.tls.client_certificate.pfx_base64"]


def test_bad_certificate_and_mismatched_key_name_the_field() -> None:
    ca = trustme.CA()
    cert, _ = _cert_pems(ca)
    _, other_key = _cert_pems(ca)
    found = problems(doc(None, {"client_certificate": {"cert_pem": cert, "key_pem": other_key}}))
    assert "does not match" in found["http.tls.client_certificate.key_pem"]
    found = problems(doc(None, {"client_certificate": {"cert_pem": "nope", "key_pem": other_key}}))
    assert "PEM certificate" in found["http.tls.client_certificate.cert_pem"]
    _, locked = _cert_pems(ca, PASSPHRASE)
    found = problems(doc(None, {"client_certificate": {"cert_pem": cert, "key_pem": locked}}))
    assert "passphrase" in found["http.tls.client_certificate.key_pem"]
    bad = {"cert_pem": cert, "key_pem": locked, "passphrase": "wrong-" + PASSPHRASE}
    found = problems(doc(None, {"client_certificate": bad}))
    assert "does not decrypt" in found["http.tls.client_certificate.passphrase"]
    for text in map(repr, found.values()):
        assert PASSPHRASE not in text


def test_problem_never_echoes_a_secret() -> None:
    found = problems(doc({**OAUTH, "client_secret": "bad\n" + CLIENT_SECRET}))
    assert CLIENT_SECRET not in repr(found)
    assert copy.deepcopy(found)  # a plain dict of strings
