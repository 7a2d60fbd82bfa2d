from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from server.connections.documents import (
    iter_secrets,
    map_secrets,
    merge_patch,
    public_view,
    secret_context,
    set_secret,
    validation_problems,
)
from server.connections.model import Connection, TokenAuth, media_type_header

TOKEN = "tok-" + "s" * 20
REFRESH_SECRET = "refresh-" + "r" * 20


def valid() -> dict[str, Any]:
    """The example from DESIGN.md."""
    return {
        "name": "Inventory (on-prem)",
        "mode": "on_premise",
        "agent_id": "agt_0123456789abcdef",
        "http": {
            "base_uri": "https://inventory.internal:8443/api",
            "headers": [{"name": "X-Tenant", "value": "acme"}],
            "media_type": "json",
            "auth": {
                "type": "token",
                "token": TOKEN,
                "location": "header",
                "header_name": "Authorization",
                "scheme": "Bearer",
                "param_name": None,
                "refresh": {
                    "method": "POST",
                    "relative_uri": "/oauth/token",
                    "headers": [],
                    "body": '{"refresh_token": "{{connection.http.encrypted.refresh_token}}"}',
                    "media_type": None,
                    "token_path": "access_token",
                },
            },
            "encrypted": {"refresh_token": REFRESH_SECRET},
            "unencrypted": {"client_id": "cid"},
            "ping": {
                "method": "GET",
                "relative_uri": "/health",
                "success_path": "ok",
                "success_values": ["true"],
            },
            "tls": {"verify": True, "ca_bundle_pem": None, "client_certificate": None},
        },
    }


def problems(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        Connection.model_validate(document)
    found = validation_problems(info.value)
    return {p["field"]: p["message"] for p in found}


def with_changes(path: str, value: Any, document: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of *document* (default: valid()) with the dotted *path* set to *value*,
    or removed when *value* is DELETE."""
    doc = copy.deepcopy(document or valid())
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return doc


DELETE: Any = object()


def test_design_example_is_valid() -> None:
    conn = Connection.model_validate(valid())
    assert isinstance(conn.http.auth, TokenAuth)
    assert conn.http.auth.refresh is not None
    assert conn.http.timeouts.connect == 10
    assert conn.http.timeouts.total == 60
    assert conn.http.tls.verify is True


def test_minimal_cloud_connection() -> None:
    conn = Connection.model_validate(
        {"name": "x", "mode": "cloud", "http": {"base_uri": "http://api.example.com"}}
    )
    assert conn.agent_id is None
    assert conn.http.media_type == "json"
    assert conn.http.auth is None
    assert conn.http.ping is None


def test_dump_round_trips() -> None:
    conn = Connection.model_validate(valid())
    assert Connection.model_validate(conn.model_dump(mode="json")) == conn


# -- name -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_name_rules(name: str) -> None:
    assert "name" in problems(with_changes("name", name))


def test_name_required_and_stripped() -> None:
    assert problems(with_changes("name", DELETE))["name"] == "Field required"
    assert Connection.model_validate(with_changes("name", "  x  ")).name == "x"
    assert Connection.model_validate(with_changes("name", "x" * 200)).name == "x" * 200


# -- mode and agent -----------------------------------------------------------------
def test_agent_required_on_premise() -> None:
    for value in (None, "", DELETE):
        assert (
            "required when mode is on_premise"
            in problems(with_changes("agent_id", value))["agent_id"]
        )


def test_agent_forbidden_in_cloud() -> None:
    doc = with_changes("mode", "cloud")
    assert "must be empty" in problems(doc)["agent_id"]
    assert Connection.model_validate(with_changes("agent_id", None, doc)).agent_id is None


def test_agent_id_shape_and_mode_values() -> None:
    assert "agent_id" in problems(with_changes("agent_id", "not an id"))
    assert "mode" in problems(with_changes("mode", "hybrid"))


# -- base_uri ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("ftp://x", "http:// or https://"),
        ("/relative/path", "http:// or https://"),
        ("api.example.com", "http:// or https://"),
        ("https://", "must name a host"),
        ("https://user:pass@api.example.com", "user name or password"),
        ("https://api.example.com/#frag", "fragment"),
        ("https://api.example.com:99999/", "port"),
        ("https://api.example.com:0/", "port"),
        ("https://api.example.com/a b", "spaces"),
        ("https://api.example.com/\r\nX: y", "control"),
    ],
)
def test_base_uri_rules(uri: str, reason: str) -> None:
    message = problems(with_changes("http.base_uri", uri))["http.base_uri"]
    assert reason in message
    assert uri == "https://" or uri not in message


@pytest.mark.parametrize(
    "uri",
    ["http://10.0.0.1:8080", "https://[::1]:8443/api", "HTTPS://Api.Example.com/v1?version=2"],
)
def test_base_uri_accepted(uri: str) -> None:
    assert Connection.model_validate(with_changes("http.base_uri", uri)).http.base_uri == uri


# -- auth ---------------------------------------------------------------------------
def test_header_name_required_for_header_location() -> None:
    for value in (None, ""):
        assert (
            "required when location is 'header'"
            in problems(with_changes("http.auth.header_name", value))["http.auth.header_name"]
        )


def test_header_name_defaults_to_authorization() -> None:
    conn = Connection.model_validate(with_changes("http.auth.header_name", DELETE))
    assert isinstance(conn.http.auth, TokenAuth)
    assert conn.http.auth.header_name == "Authorization"


def test_param_name_required_for_url_location() -> None:
    doc = with_changes("http.auth.location", "url")
    assert "required when location is 'url'" in problems(doc)["http.auth.param_name"]
    doc = with_changes("http.auth.param_name", "api_key", doc)
    doc = with_changes("http.auth.header_name", None, doc)
    conn = Connection.model_validate(doc)
    assert isinstance(conn.http.auth, TokenAuth)
    assert conn.http.auth.param_name == "api_key"


@pytest.mark.parametrize("scheme", ["Bearer", "MAC", "Token", "X-Custom_1", None, ""])
def test_scheme_accepted(scheme: str | None) -> None:
    conn = Connection.model_validate(with_changes("http.auth.scheme", scheme))
    assert isinstance(conn.http.auth, TokenAuth)
    assert conn.http.auth.scheme == (scheme or None)


@pytest.mark.parametrize("scheme", ["Bearer token", "Bear:er", "B\r\nX"])
def test_scheme_rejected(scheme: str) -> None:
    assert "http.auth.scheme" in problems(with_changes("http.auth.scheme", scheme))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("http.auth.token", "abc\r\nX-Injected: 1"),
        ("http.auth.token", "abc\x00"),
        ("http.auth.header_name", "X-Key\n"),
        ("http.auth.param_name", "key\r"),
        ("http.headers.0.value", "acme\r\nX: 1"),
        ("http.headers.0.value", "acme\n"),
        ("http.headers.0.name", "X-Tenant\r\n"),
        ("http.ping.relative_uri", "/health\r\nHost: x"),
        ("http.auth.refresh.relative_uri", "/oauth\n"),
    ],
)
def test_line_breaks_rejected(field: str, value: str) -> None:
    doc = with_changes(field, value)
    if field == "http.auth.param_name":
        doc = with_changes("http.auth.location", "url", doc)
    found = problems(doc)
    dotted = field.replace(".0.", "[0].")
    assert dotted in found, found
    assert value not in json.dumps(found)


@pytest.mark.parametrize("name", ["X Tenant", "X:Tenant", "", "Ünicode", "X(1)"])
def test_header_names_are_tokens(name: str) -> None:
    assert "http.headers[0].name" in problems(with_changes("http.headers.0.name", name))
    assert "http.auth.refresh.headers[0].name" in problems(
        with_changes("http.auth.refresh.headers", [{"name": name, "value": "v"}])
    )


def test_token_required_unless_refresh() -> None:
    doc = with_changes("http.auth.token", None)
    assert Connection.model_validate(doc).http.auth is not None  # refresh will get one
    doc = with_changes("http.auth.refresh", None, doc)
    assert "required unless a token refresh" in problems(doc)["http.auth.token"]


def test_auth_type_is_token() -> None:
    assert "http.auth.type" in problems(with_changes("http.auth.type", "wsse"))


# -- refresh ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH"])
def test_refresh_body_only_with_post(method: str) -> None:
    doc = with_changes("http.auth.refresh.method", method)
    assert f"not {method}" in problems(doc)["http.auth.refresh.body"]
    doc = with_changes("http.auth.refresh.body", None, doc)
    assert Connection.model_validate(doc)


def test_refresh_fields() -> None:
    assert "http.auth.refresh.method" in problems(
        with_changes("http.auth.refresh.method", "DELETE")
    )
    assert "http.auth.refresh.method" in problems(with_changes("http.auth.refresh.method", DELETE))
    assert "http.auth.refresh.token_path" in problems(
        with_changes("http.auth.refresh.token_path", "a..b")
    )
    assert "http.auth.refresh.media_type" in problems(
        with_changes("http.auth.refresh.media_type", "yaml")
    )
    conn = Connection.model_validate(with_changes("http.auth.refresh.token_path", ""))
    assert isinstance(conn.http.auth, TokenAuth)
    assert conn.http.auth.refresh is not None
    assert conn.http.auth.refresh.token_path is None


def test_templates_are_checked() -> None:
    assert (
        "template error"
        in problems(with_changes("http.auth.refresh.body", "{{#if x}}"))["http.auth.refresh.body"]
    )
    assert "http.headers[0].value" in problems(
        with_changes("http.headers.0.value", "{{connection.__class__}}")
    )
    assert "http.ping.relative_uri" in problems(with_changes("http.ping.relative_uri", "/{{x"))
    body = '{\n  "refresh_token": "{{connection.http.encrypted.refresh_token}}"\n}'
    assert Connection.model_validate(with_changes("http.auth.refresh.body", body))


# -- ping ---------------------------------------------------------------------------
def test_ping_relative_uri_required() -> None:
    assert problems(with_changes("http.ping.relative_uri", DELETE))["http.ping.relative_uri"]
    assert (
        "required"
        in problems(with_changes("http.ping.relative_uri", " "))["http.ping.relative_uri"]
    )


def test_success_values_need_success_path() -> None:
    for value in (None, "", DELETE):
        found = problems(with_changes("http.ping.success_path", value))
        assert "only used with success_path" in found["http.ping.success_values"]


def test_ping_defaults_and_paths() -> None:
    conn = Connection.model_validate(with_changes("http.ping", {"relative_uri": "/health"}))
    assert conn.http.ping is not None
    assert conn.http.ping.method == "GET"
    assert conn.http.ping.success_values == []
    assert "http.ping.success_path" in problems(with_changes("http.ping.success_path", "a[x]"))
    doc = with_changes("http.ping.method", "HEAD")
    assert "HEAD" in problems(doc)["http.ping.success_path"]


# -- encrypted / unencrypted / tls / timeouts -----------------------------------------
@pytest.mark.parametrize("key", ["a.b", "has space", "", "x" * 101])
def test_value_keys_usable_in_templates(key: str) -> None:
    assert "http.encrypted" in problems(with_changes("http.encrypted", {key: "v"}))
    assert "http.unencrypted" in problems(with_changes("http.unencrypted", {key: "v"}))


def test_ca_bundle() -> None:
    ca = trustme.CA()
    pem = ca.cert_pem.bytes().decode()
    conn = Connection.model_validate(with_changes("http.tls.ca_bundle_pem", pem))
    assert conn.http.tls.ca_bundle_pem == pem
    assert (
        "PEM" in problems(with_changes("http.tls.ca_bundle_pem", "junk"))["http.tls.ca_bundle_pem"]
    )
    key_pem = ca.private_key_pem.bytes().decode()
    message = problems(with_changes("http.tls.ca_bundle_pem", pem + key_pem))[
        "http.tls.ca_bundle_pem"
    ]
    assert "private key" in message
    assert key_pem not in message


def test_timeouts() -> None:
    doc = with_changes("http.timeouts", {"connect": 2.5, "total": 30})
    conn = Connection.model_validate(doc)
    assert (conn.http.timeouts.connect, conn.http.timeouts.total) == (2.5, 30)
    assert "http.timeouts.connect" in problems(with_changes("http.timeouts", {"connect": 0}))
    assert "http.timeouts.total" in problems(with_changes("http.timeouts", {"total": -1}))
    found = problems(with_changes("http.timeouts", {"connect": 20, "total": 10}))
    assert "at least the connect timeout" in found["http.timeouts.total"]


# -- error reporting ------------------------------------------------------------------
def test_unknown_fields_are_named() -> None:
    found = problems(with_changes("http.auth.heder_name", "X"))
    assert "unknown field" in found["http.auth.heder_name"]
    assert "unknown field" in problems(with_changes("extra", 1))["extra"]


def test_every_failing_field_is_reported_at_once() -> None:
    doc = with_changes("name", "")
    doc = with_changes("http.base_uri", "ftp://x", doc)
    doc = with_changes("http.auth.location", "url", doc)
    doc = with_changes("agent_id", None, doc)
    doc = with_changes("http.ping.relative_uri", "", doc)
    assert set(problems(doc)) == {
        "name",
        "agent_id",
        "http.base_uri",
        "http.auth.param_name",
        "http.ping.relative_uri",
    }


def test_errors_never_echo_input() -> None:
    secret = "hunter2-" + "z" * 10
    doc = with_changes("http.auth.token", secret + "\n")
    doc = with_changes("http.auth.refresh.method", 123, doc)
    with pytest.raises(ValidationError) as info:
        Connection.model_validate(doc)
    assert secret not in str(info.value)
    assert secret not in json.dumps(validation_problems(info.value))


def test_problem_fields_are_dotted_with_indexes() -> None:
    found = problems(with_changes("http.headers", [{"name": "ok", "value": "v"}, {"name": "b d"}]))
    assert set(found) == {"http.headers[1].name", "http.headers[1].value"}


@pytest.mark.parametrize(
    ("media_type", "header"),
    [
        ("json", "application/json"),
        ("xml", "application/xml"),
        ("urlencoded", "application/x-www-form-urlencoded"),
        ("plaintext", "text/plain"),
        ("csv", "text/csv"),
    ],
)
def test_media_type_header(media_type: str, header: str) -> None:
    assert media_type_header(media_type) == header
    conn = Connection.model_validate(with_changes("http.media_type", media_type))
    assert media_type_header(conn.http.media_type) == header


def test_media_type_rejected() -> None:
    assert "http.media_type" in problems(with_changes("http.media_type", "yaml"))


# -- secrets ---------------------------------------------------------------------------
def test_iter_and_set_secrets() -> None:
    doc = Connection.model_validate(valid()).model_dump(mode="json")
    assert dict(iter_secrets(doc)) == {
        "http.auth.token": TOKEN,
        "http.encrypted.refresh_token": REFRESH_SECRET,
    }
    set_secret(doc, "http.auth.token", "sealed-1")
    set_secret(doc, "http.encrypted.refresh_token", "sealed-2")
    assert dict(iter_secrets(doc)) == {
        "http.auth.token": "sealed-1",
        "http.encrypted.refresh_token": "sealed-2",
    }
    with pytest.raises(KeyError):
        set_secret(doc, "http.base_uri", "x")


def test_iter_secrets_tolerates_partial_documents() -> None:
    assert list(iter_secrets({})) == []
    assert list(iter_secrets({"http": {"auth": None}})) == []
    assert list(iter_secrets({"http": {"auth": {"token": None}, "encrypted": {}}})) == []


def test_map_secrets_copies() -> None:
    doc = Connection.model_validate(valid()).model_dump(mode="json")
    sealed = map_secrets(doc, lambda path, value: f"<{path}>")
    assert sealed["http"]["auth"]["token"] == "<http.auth.token>"
    assert sealed["http"]["encrypted"]["refresh_token"] == "<http.encrypted.refresh_token>"
    assert doc["http"]["auth"]["token"] == TOKEN
    assert secret_context("con_1", "http.auth.token") == "connection:con_1:http.auth.token"


# -- public view -------------------------------------------------------------------------
def test_public_view_shape() -> None:
    view = public_view(Connection.model_validate(valid()))
    auth = view["http"]["auth"]
    assert "token" not in auth
    assert auth["token_set"] is True
    assert view["http"]["encrypted"] == {"refresh_token": {"set": True}}
    assert view["http"]["unencrypted"] == {"client_id": "cid"}
    assert view["http"]["tls"] == {
        "verify": True,
        "ca_bundle_pem": None,
        "client_certificate": None,
    }
    dumped = json.dumps(view)
    assert TOKEN not in dumped
    assert REFRESH_SECRET not in dumped


def test_public_view_without_token_or_auth() -> None:
    view = public_view(Connection.model_validate(with_changes("http.auth.token", None)))
    assert view["http"]["auth"]["token_set"] is False
    view = public_view(Connection.model_validate(with_changes("http.auth", None)))
    assert view["http"]["auth"] is None


# The marker keeps a generated secret from matching ordinary view text by chance.
secret_text = st.text(min_size=8).map(lambda s: "\u00a7" + s.strip() + "\u00a7")


@settings(max_examples=200)
@given(
    token=secret_text.filter(lambda s: not any(c in s for c in "\r\n\x00")),
    values=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), secret_text, max_size=4),
)
def test_public_view_never_contains_secrets(token: str, values: dict[str, str]) -> None:
    doc = with_changes("http.auth.token", token)
    doc = with_changes("http.encrypted", values, doc)
    view = public_view(Connection.model_validate(doc))
    for dumped in (json.dumps(view), json.dumps(view, ensure_ascii=False)):
        for secret in [token, *values.values()]:
            assert secret not in dumped
            assert json.dumps(secret)[1:-1] not in dumped
            assert json.dumps(secret, ensure_ascii=False)[1:-1] not in dumped


# -- PATCH -------------------------------------------------------------------------------
def stored() -> dict[str, Any]:
    return Connection.model_validate(valid()).model_dump(mode="json")


def test_merge_patch_keeps_omitted_secrets() -> None:
    before = stored()
    merged = merge_patch(before, {"name": "Renamed", "http": {"media_type": "xml"}})
    assert before == stored()  # not modified
    conn = Connection.model_validate(merged)
    assert conn.name == "Renamed"
    assert conn.http.media_type == "xml"
    assert isinstance(conn.http.auth, TokenAuth)
    assert conn.http.auth.token == TOKEN
    assert conn.http.encrypted == {"refresh_token": REFRESH_SECRET}


def test_merge_patch_partial_auth_keeps_token() -> None:
    merged = merge_patch(stored(), {"http": {"auth": {"scheme": "MAC"}}})
    assert merged["http"]["auth"]["token"] == TOKEN
    assert merged["http"]["auth"]["scheme"] == "MAC"


def test_merge_patch_replaces_named_secrets_and_adds_keys() -> None:
    merged = merge_patch(
        stored(), {"http": {"auth": {"token": "new"}, "encrypted": {"password": "pw"}}}
    )
    assert merged["http"]["auth"]["token"] == "new"
    assert merged["http"]["encrypted"] == {"refresh_token": REFRESH_SECRET, "password": "pw"}


def test_merge_patch_null_deletes() -> None:
    merged = merge_patch(stored(), {"http": {"encrypted": {"refresh_token": None}, "ping": None}})
    assert merged["http"]["encrypted"] == {}
    assert "ping" not in merged["http"]
    merged = merge_patch(stored(), {"http": {"auth": {"token": None}}})
    assert "token" not in merged["http"]["auth"]


def test_merge_patch_replaces_arrays() -> None:
    merged = merge_patch(stored(), {"http": {"headers": [{"name": "X-New", "value": "1"}]}})
    assert merged["http"]["headers"] == [{"name": "X-New", "value": "1"}]


def test_public_view_round_trips_through_patch() -> None:
    view = public_view(Connection.model_validate(valid()))
    view["http"]["unencrypted"]["client_id"] = "changed"
    conn = Connection.model_validate(merge_patch(stored(), view))
    assert conn.http.unencrypted == {"client_id": "changed"}
    assert isinstance(conn.http.auth, TokenAuth)
    assert conn.http.auth.token == TOKEN
    assert conn.http.encrypted == {"refresh_token": REFRESH_SECRET}
