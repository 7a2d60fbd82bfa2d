from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.proxy.success_path import as_comparable, is_truthy, lookup, parse_path, ping_verdict

DOC: Any = {
    "ok": True,
    "data": {"items": [{"status": "active"}, {"status": "gone"}]},
    "a": {"b": [[0], [1], [2, "two-one"]]},
    "x-request-id": "abc",
    "with space": {"k": None},
    "list": ["zero", "one"],
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("ok", True),
        ("data.items[0].status", "active"),
        ("data.items[1].status", "gone"),
        ("a.b[2][1]", "two-one"),
        ("x-request-id", "abc"),
        ("with space.k", None),
        ("list.1", "one"),
        ("data.items", DOC["data"]["items"]),
    ],
)
def test_lookup_finds(path: str, expected: Any) -> None:
    assert lookup(DOC, path) == (True, expected)


@pytest.mark.parametrize(
    "path",
    ["missing", "ok.deeper", "data.items[5].status", "a.b[2][9]", "list.x", "data.items.first"],
)
def test_lookup_missing(path: str) -> None:
    assert lookup(DOC, path) == (False, None)


def test_lookup_top_level_array() -> None:
    assert lookup([{"id": 7}], "[0].id") == (True, 7)
    assert lookup({"0": "key"}, "0") == (True, "key")


@pytest.mark.parametrize("path", ["a..b", ".a", "a.", "a[x]", "a[0", "a]", "a[-1]", "[0]b"])
def test_parse_path_rejects(path: str) -> None:
    with pytest.raises(ValueError, match=r"path"):
        parse_path(path)


def test_empty_path_is_the_whole_document() -> None:
    assert parse_path("") == ()
    assert lookup("just-a-token", "") == (True, "just-a-token")
    assert lookup(DOC, "") == (True, DOC)


def test_parse_path_segments() -> None:
    assert parse_path("a.b[2][1]") == ("a", "b", 2, 1)
    assert parse_path("[3].x") == (3, "x")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (None, "null"),
        (0, "0"),
        (12, "12"),
        (1.5, "1.5"),
        ("True", "True"),
        ("", ""),
        ({"a": [1, "x"]}, '{"a":[1,"x"]}'),
    ],
)
def test_as_comparable(value: Any, text: str) -> None:
    assert as_comparable(value) == text


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (True, True),
        (False, False),
        (None, False),
        (0, False),
        (0.0, False),
        ("", False),
        ("x", True),
        (1, True),
        ([], True),
        ({}, True),
    ],
)
def test_is_truthy(value: Any, truthy: bool) -> None:
    assert is_truthy(value) is truthy


def verdict(
    status: int, body: Any, path: str | None = "ok", values: list[str] | None = None
) -> tuple[bool, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ping_verdict(
        status, raw, "application/json", path, ["true"] if values is None else values
    )


def test_slack_style_false_fails() -> None:
    ok, message = verdict(200, {"ok": False, "error": "invalid_auth"})
    assert not ok
    assert message == "success path 'ok' is false, expected one of ['true']"


def test_true_passes() -> None:
    ok, message = verdict(200, {"ok": True})
    assert ok
    assert "true" in message


def test_matching_is_case_sensitive() -> None:
    ok, message = verdict(200, {"ok": "True"})
    assert not ok
    assert '"True"' in message
    assert verdict(200, {"ok": "True"}, values=["True"])[0]


def test_any_success_value_matches() -> None:
    assert verdict(200, {"state": "green"}, "state", ["yellow", "green"])[0]
    assert verdict(200, {"code": 0}, "code", ["0"])[0]
    assert not verdict(200, {"code": 1}, "code", ["0"])[0]


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503])
def test_error_status_fails(status: int) -> None:
    ok, message = verdict(status, {"ok": True})
    assert not ok
    assert str(status) in message
    ok, message = ping_verdict(status, b"", None, None, [])
    assert not ok
    assert str(status) in message


def test_no_success_path_passes_on_2xx() -> None:
    assert ping_verdict(200, b"<html>", "text/html", None, []) == (
        True,
        "the API answered HTTP 200",
    )
    assert ping_verdict(204, b"", None, "", [])[0]


def test_missing_path_fails() -> None:
    ok, message = verdict(200, {"status": "fine"})
    assert not ok
    assert "'ok' is not in the response" in message


def test_non_json_body_fails() -> None:
    ok, message = ping_verdict(200, b"<html>ok</html>", "text/html", "ok", ["true"])
    assert not ok
    assert "not JSON" in message
    assert "text/html" in message


def test_deeply_nested_body_does_not_crash() -> None:
    ok, message = ping_verdict(200, b"[" * 100_000, "application/json", "ok", ["true"])
    assert not ok
    assert "not JSON" in message


def test_invalid_path_reported() -> None:
    ok, message = verdict(200, {"ok": True}, "a..b")
    assert not ok
    assert "not a valid path" in message


def test_no_success_values_needs_truthy() -> None:
    assert verdict(200, {"ok": True}, values=[])[0]
    assert verdict(200, {"ok": "yes"}, values=[])[0]
    ok, message = verdict(200, {"ok": False}, values=[])
    assert not ok
    assert "expected a true value" in message
    assert not verdict(200, {"ok": None}, values=[])[0]


def test_echoed_value_is_truncated() -> None:
    ok, message = verdict(200, {"ok": "x" * 5000})
    assert not ok
    assert "x" * 99 not in message
    assert len(message) < 300


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(document=json_values, path=st.text())
def test_lookup_never_crashes(document: Any, path: str) -> None:
    try:
        found, value = lookup(document, path)
    except ValueError:
        return
    assert isinstance(found, bool)
    if not found:
        assert value is None


@given(
    document=json_values, path=st.text(), values=st.lists(st.text()), status=st.integers(100, 599)
)
def test_verdict_never_crashes(document: Any, path: str, values: list[str], status: int) -> None:
    ok, message = ping_verdict(status, json.dumps(document).encode(), None, path, values)
    assert isinstance(ok, bool)
    assert message
    if status >= 400:
        assert not ok


@given(body=st.binary())
def test_verdict_on_arbitrary_bytes(body: bytes) -> None:
    ok, _ = ping_verdict(200, body, None, "ok", ["true"])
    assert isinstance(ok, bool)
