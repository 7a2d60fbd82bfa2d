"""Hostile input against the relay's small parsers: properties, not examples.

- server.proxy.urls.join_uri: the relative part never moves the request to another
  scheme, host or port, never yields control characters, fails only with
  URLError, treats slashes idempotently and keeps both queries;
- server.proxy.success_path: paths built from a document always find their value,
  and nothing in a body or a path crashes the ping verdict;
- server.proxy.templating: arbitrary template text fails only with TemplateError,
  and no template reads anything but ``connection`` (no environment, no
  Python attributes, nothing of another connection rendered before);
- server.connections.model: CR, LF or NUL anywhere in a header name or value,
  a token, a scheme, a parameter name or a URI is refused, with the field
  named and the value not echoed.

sluice.connect and agent.allowlist have their own properties in
test_connect.py and test_allowlist.py. Each property states its
max_examples; the whole file runs in a few seconds.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from yarl import URL

from server.connections.documents import validation_problems
from server.connections.model import Connection, HTTPSettings
from server.proxy.success_path import lookup, parse_path, ping_verdict
from server.proxy.templating import (
    Target,
    TemplateError,
    check_template,
    render,
    render_body,
    render_header_value,
    render_uri,
)
from server.proxy.urls import URLError, join_uri

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# -- join_uri ---------------------------------------------------------------------

_LDH = string.ascii_lowercase + string.digits
_label = st.text(_LDH + "-", min_size=1, max_size=12).filter(lambda s: s[0] != "-" != s[-1])
_dns_host = (
    st.lists(_label, min_size=1, max_size=3)
    .map(".".join)
    .filter(lambda h: not h.replace(".", "").isdigit())
)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a.compressed}]")
_path_char = st.sampled_from(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%")
# yarl folds '.' and '..' in a base path, so they are left out of generated bases.
_segment = st.text(_path_char, min_size=1, max_size=8).filter(
    # Dot segments (also percent-encoded ones) are normalised away by design.
    lambda s: (
        not _bad_percent(s)
        and s not in (".", "..")
        and URL("http://a/" + s, encoded=True).raw_path == "/" + s
    )
)
_query_word = st.text(string.ascii_letters + string.digits + "-._~", min_size=1, max_size=6)
_query_pairs = st.lists(st.tuples(_query_word, _query_word), max_size=3)


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _upper_escapes(text: str) -> str:
    """The RFC 3986 §6.2.2 normal form yarl writes: percent-escapes in upper
    case, and escaped unreserved characters decoded ('%30' is '0')."""

    def normal(match: re.Match[str]) -> str:
        char = chr(int(match.group(0)[1:], 16))
        return char if char in _UNRESERVED else match.group(0).upper()

    return re.sub(r"%[0-9a-fA-F]{2}", normal, text)


def _bad_percent(text: str) -> bool:
    """A '%' not followed by two hex digits (yarl would re-encode it)."""
    return re.search(r"%(?![0-9A-Fa-f]{2})", text) is not None


@st.composite
def base_uris(draw: st.DrawFn) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(base_uri, origin part, path without trailing slash, query pairs)."""
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    host = draw(st.one_of(_dns_host, _ipv4, _ipv6))
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    origin = f"{scheme}://{host}" + (f":{port}" if port is not None else "")
    segments = draw(st.lists(_segment, max_size=3))
    path = "".join("/" + s for s in segments)
    pairs = draw(_query_pairs)
    return origin, path, draw(st.sampled_from(["", "/"])), pairs


def _base(origin: str, path: str, slash: str, pairs: list[tuple[str, str]]) -> str:
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return origin + path + slash + (f"?{query}" if query else "")


_EVIL_RELATIVES = [
    "//evil.example/x",
    "http://evil.example/",
    "HTTPS://evil.example",
    "\\\\evil.example\\x",
    "/\\evil.example",
    "@evil.example",
    "/@evil.example",
    ":8080/x",
    "x:y",
    "javascript:alert(1)",
    "/..//evil.example",
    "%2F%2Fevil.example",
    "/%2e%2e/%2e%2e/etc",
    "?a=b#@evil.example",
    "#//evil.example",
    " //evil.example",
    "/x\r\nHost: evil.example",
    "/x\x00y",
    "/\u2028x",
    "/x?y=\u00e9&z=%zz",
    "////",
    "?",
    "#",
    "/?#",
    "\t//evil.example",
    "/x y",
    "/\u200bx",
]
relatives = st.one_of(
    st.text(max_size=40),
    st.sampled_from(_EVIL_RELATIVES),
    st.lists(
        st.sampled_from([*_EVIL_RELATIVES, "/", "?", "#", "%", "..", "a", "=", "&"]), max_size=5
    ).map("".join),
)


def _port(url: URL) -> int | None:
    return url.explicit_port or {"http": 80, "https": 443}.get(url.scheme)


@settings(max_examples=600, deadline=None)
@given(base=base_uris(), relative=relatives)
def test_join_uri_keeps_the_origin_and_yields_no_control_characters(
    base: tuple[str, str, str, list[tuple[str, str]]], relative: str
) -> None:
    base_uri = _base(*base)
    try:
        joined = join_uri(base_uri, relative)
    except URLError:
        return
    text = str(joined)
    assert not _CONTROL.search(text), text
    assert " " not in text, text
    # What aiohttp will send is the text parsed again: the origin must survive that too.
    expected, sent = URL(base_uri), URL(text)
    for url in (joined, sent):
        assert url.scheme == expected.scheme.lower(), (base_uri, relative, text)
        assert url.host == expected.host, (base_uri, relative, text)
        assert _port(url) == _port(expected), (base_uri, relative, text)
    assert "#" not in text


@settings(max_examples=300, deadline=None)
@given(base=base_uris(), relative=relatives)
def test_join_uri_slashes_are_idempotent(
    base: tuple[str, str, str, list[tuple[str, str]]], relative: str
) -> None:
    origin, path, _slash, pairs = base
    rel = relative.lstrip("/")
    # Without its leading slash, 'x:y' would read as a scheme and is refused on purpose.
    leads = ("/",) if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", rel) else ("", "/")
    outcomes = set()
    for slash in ("", "/", "//"):
        for lead in leads:
            try:
                outcomes.add(str(join_uri(_base(origin, path, slash, pairs), lead + rel)))
            except URLError as exc:
                outcomes.add(f"URLError: {exc}")
    assert len(outcomes) == 1, outcomes


@settings(max_examples=300, deadline=None)
@given(base=base_uris(), segments=st.lists(_segment, max_size=3), pairs=_query_pairs)
def test_join_uri_keeps_both_queries_in_order(
    base: tuple[str, str, str, list[tuple[str, str]]],
    segments: list[str],
    pairs: list[tuple[str, str]],
) -> None:
    origin, path, slash, base_pairs = base
    query = "&".join(f"{k}={v}" for k, v in pairs)
    relative = "/" + "/".join(segments) + (f"?{query}" if query else "")
    joined = join_uri(_base(origin, path, slash, base_pairs), relative)
    assert list(joined.query.items()) == base_pairs + pairs
    # Exactly one slash where base and relative meet, none lost or doubled.
    expected = (path + "".join("/" + s for s in segments)) or "/"
    assert _upper_escapes(joined.raw_path) == _upper_escapes(expected)


@settings(max_examples=300, deadline=None)
@given(base=st.text(max_size=60), relative=st.text(max_size=20))
def test_join_uri_with_any_base_raises_only_url_error(base: str, relative: str) -> None:
    """Whatever base_uri the connection model lets through."""
    try:
        HTTPSettings(base_uri=base)
    except ValidationError:
        return
    with suppress(URLError):
        join_uri(base, relative)


@settings(max_examples=50, deadline=None)
@example(base="http://a\u2028b/", relative="/x")
@example(base="http://\u3002/", relative="")
@given(
    base=st.builds(
        lambda host: f"http://{host}/",
        st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=8).filter(
            lambda h: not set(h) & set(" /?#@[]:\\%")
        ),
    ),
    relative=st.just("/x"),
)
def test_join_uri_with_unicode_hosts_raises_only_url_error(base: str, relative: str) -> None:
    """Found by this file: yarl's IDNA encoding raised UnicodeError, which the engine
    did not catch (a 500 on the proxy and test routes)."""
    try:
        HTTPSettings(base_uri=base)
    except ValidationError:
        return
    with suppress(URLError):
        join_uri(base, relative)


# -- success_path --------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_keys = st.text(min_size=1, max_size=8).filter(lambda k: not set(k) & set(".[]"))
json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=25,
)


@st.composite
def document_and_path(draw: st.DrawFn) -> tuple[Any, str, Any]:
    """A document, a path into it written in either index style, and the value there."""
    document = draw(json_values)
    current, path = document, ""
    while isinstance(current, dict | list) and current and draw(st.booleans()):
        if isinstance(current, dict):
            key = draw(st.sampled_from(sorted(current)))
            path += ("." if path else "") + key
            current = current[key]
        else:
            index = draw(st.integers(0, len(current) - 1))
            path += draw(st.sampled_from([f"[{index}]", f".{index}"])) if path else f"[{index}]"
            current = current[index]
    return document, path, current


@settings(max_examples=500, deadline=None)
@given(case=document_and_path())
def test_lookup_finds_every_path_built_from_the_document(case: tuple[Any, str, Any]) -> None:
    document, path, value = case
    if path and re.fullmatch(r"\d+", path.split(".", 1)[0]) and isinstance(document, dict):
        pass  # a numeric first key is a key, looked up like any other
    found, got = lookup(document, path)
    assert found, (document, path)
    assert got == value or (got != got and value != value)


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(4000, 6000).map(lambda n: b"9" * n),
        st.sampled_from([b"1e999", b"-1e999", b'"\\ud800"', b"NaN", b"\xef\xbb\xbf{}"]),
    ),
    path=st.one_of(st.text(max_size=30), st.sampled_from(["ok", "[0]", "a" + ".a" * 500])),
    values=st.lists(st.text(max_size=10), max_size=3),
    status=st.integers(100, 599),
    content_type=st.one_of(st.none(), st.text(max_size=30)),
)
def test_ping_verdict_survives_any_body_and_path(
    body: bytes, path: str, values: list[str], status: int, content_type: str | None
) -> None:
    ok, message = ping_verdict(status, body, content_type, path, values)
    assert isinstance(ok, bool)
    assert isinstance(message, str)
    assert message
    # An echoed value is cut short: a huge body cannot make a huge message.
    assert len(message) < 500 + len(path) * 2 + len(content_type or "")


@settings(max_examples=300, deadline=None)
@given(path=st.text(max_size=40))
def test_parse_path_raises_only_value_error(path: str) -> None:
    try:
        segments = parse_path(path)
    except ValueError:
        return
    assert all(isinstance(s, str | int) for s in segments)


# -- templating ---------------------------------------------------------------------

# Names a template might use to climb out of its data: Python attributes,
# JavaScript-isms, pybars internals, environment and module names.
_ESCAPE_WORDS = [
    "connection",
    "http",
    "encrypted",
    "unencrypted",
    "password",
    "name",
    "headers",
    "this",
    "..",
    "@root",
    "@key",
    "@index",
    "length",
    "0",
    "[0]",
    "keys",
    "items",
    "get",
    "values",
    "pop",
    "setdefault",
    "upper",
    "strip",
    "join",
    "split",
    "encode",
    "replace",
    "__class__",
    "__init__",
    "__globals__",
    "__dict__",
    "mro",
    "_data",
    "_items",
    "environ",
    "os",
    "sys",
    "modules",
    "constructor",
    "prototype",
    "helpers",
    "partials",
    "scope",
    "context",
    "parent",
    "real",
    "imag",
    "numerator",
    "denominator",
    "open",
    "read",
    "f_globals",
    "gi_frame",
    "builtins",
    "__builtins__",
    "__import__",
    "lookup",
    "format",
    "format_map",
    "__format__",
    "zfill",
    "center",
]
_paths = st.lists(st.sampled_from(_ESCAPE_WORDS), min_size=1, max_size=4).map(
    lambda words: ".".join(words).replace("..", "../").replace("/.", "/")
)
_tags = st.one_of(
    _paths.map(lambda p: "{{" + p + "}}"),
    _paths.map(lambda p: "{{{" + p + "}}}"),
    st.tuples(_paths, st.sampled_from(_ESCAPE_WORDS)).map(
        lambda t: "{{lookup " + t[0] + " '" + t[1] + "'}}"
    ),
    st.tuples(st.sampled_from(["each", "with", "if", "unless"]), _paths, _paths).map(
        lambda t: "{{#" + t[0] + " " + t[1] + "}}{{@key}}={{" + t[2] + "}};{{/" + t[0] + "}}"
    ),
    st.text(max_size=5),
)
templates = st.lists(_tags, min_size=1, max_size=5).map("".join)

_secretish = st.text(min_size=0, max_size=12)
connections = st.fixed_dictionaries(
    {
        "name": st.one_of(
            _secretish,
            st.sampled_from(
                [
                    "{0.__class__}",
                    "{0!r}",
                    "%s",
                    "{{x}}",
                    "{__class__}",
                    "{0.__init__.__globals__[sys].modules[os].environ[SLUICE_TEST_CANARY]}",
                ]
            ),
        ),
        "http": st.fixed_dictionaries(
            {
                "base_uri": st.just("https://api.example/"),
                "headers": st.lists(
                    st.fixed_dictionaries({"name": _secretish, "value": _secretish}), max_size=2
                ),
                "encrypted": st.dictionaries(
                    st.sampled_from(["password", "token", "k"]), _secretish, max_size=3
                ),
                "unencrypted": st.dictionaries(
                    st.sampled_from(["client_id", "k"]), json_values, max_size=2
                ),
            }
        ),
    }
)

_CANARY = "cnry" + "7f3a9c1e" * 2
# What Python internals look like when printed.
_INTERNALS = re.compile(r"<(class|function|module|bound|built-in|method)|object at 0x|pybars|Scope")


@contextmanager
def _canary_in_environment() -> Iterator[None]:
    os.environ["SLUICE_TEST_CANARY"] = _CANARY
    try:
        yield
    finally:
        del os.environ["SLUICE_TEST_CANARY"]


def _leaked(output: str, connection: dict[str, Any]) -> str | None:
    """What in *output* did not come from the connection, if anything."""
    if _CANARY in output:
        return "the environment"
    match = _INTERNALS.search(output)
    if match and match.group(0) not in json.dumps(connection):
        return f"a Python object ({match.group(0)})"
    return None


# pybars compiles each (template, target) afresh: tens of ms, so no deadline.
@settings(max_examples=150, deadline=None)
@given(template=templates, connection=connections)
def test_templates_read_nothing_but_the_connection(
    template: str, connection: dict[str, Any]
) -> None:
    with _canary_in_environment():
        targets: list[Target] = ["text", "uri", "json"]
        for target in targets:
            try:
                output = render(template, connection, target=target)
            except TemplateError:
                return
            leaked = _leaked(output, connection)
            assert leaked is None, f"{template!r} rendered {leaked}: {output[:200]!r}"


@settings(max_examples=60, deadline=None)
@given(template=templates, first=connections, second=connections)
def test_a_template_shows_nothing_of_a_connection_rendered_before(
    template: str, first: dict[str, Any], second: dict[str, Any]
) -> None:
    marker = "mkr" + "41d9" * 4
    first["http"]["encrypted"]["password"] = marker
    try:
        render(template, first)
        output = render(template, second)
    except TemplateError:
        return
    assert marker not in output


def _renderers(template: str, connection: dict[str, Any]) -> list[Callable[[], object]]:
    return [
        lambda: check_template(template),
        lambda: render_header_value(template, connection),
        lambda: render_uri(template, connection),
        lambda: render_body(template, connection, "json"),
        lambda: render_body(template, connection, "urlencoded"),
    ]


def _error(run: Callable[[], object]) -> tuple[str, object]:
    try:
        return "", run()
    except TemplateError as exc:
        return str(exc), None


@settings(max_examples=200, deadline=None)
@given(
    template=st.one_of(
        st.text(max_size=60),
        st.text(st.sampled_from("{}#/^&!>~ .[]'\"\\@=()ab\n"), max_size=60),
        templates,
    ),
    connection=connections,
)
def test_any_template_text_fails_only_with_template_error(
    template: str, connection: dict[str, Any]
) -> None:
    secrets = [s for s in connection["http"]["encrypted"].values() if len(s) >= 6]
    blank = copy.deepcopy(connection)
    blank["http"]["encrypted"] = {k: "" for k in blank["http"]["encrypted"]}
    forbidden_in = [None, re.compile(r"[\r\n\x00]"), _CONTROL, None, None]
    for i, run in enumerate(_renderers(template, connection)):
        error, value = _error(run)
        # Errors never carry what the connection holds. A secret that is also
        # a word of the fixed message text is no leak: the same template over
        # the same connection without its secrets gives the same error then.
        if any(secret in error for secret in secrets):
            assert error == _error(_renderers(template, blank)[i])[0], error
        forbidden = forbidden_in[i]
        if forbidden is not None and isinstance(value, str):
            assert not forbidden.search(value), value


@settings(max_examples=10, deadline=None)
@example(
    template="{{connection.name.format}}",
    name="{0.__init__.__globals__[sys].modules[os].environ[SLUICE_TEST_CANARY]}",
)
@example(template="{{#with connection}}{{name.format_map}}{{/with}}", name="{__class__}")
@example(template="{{#with connection.name}}{{format}}{{/with}}", name="{0.__class__}")
@given(
    template=st.sampled_from(
        [
            "{{connection.name.format}}",
            "{{{connection.name.format}}}",
            "{{#with connection.name}}{{format}}{{/with}}",
        ]
    ),
    name=st.sampled_from(["{0.__class__}", "{0.__init__.__globals__[__name__]}"]),
)
def test_string_methods_cannot_reach_python_internals(template: str, name: str) -> None:
    """Found by this file: pybars' getattr fallback reached str.format, and through it
    the relay's environment (master key, admin token) and module globals."""
    connection = {"name": name, "http": {"encrypted": {}}}
    with _canary_in_environment():
        try:
            output = render(template, connection)
        except TemplateError:
            return
    assert _CANARY not in output
    assert not _INTERNALS.search(output), output


# -- connection model: line breaks in anything that becomes a header or a URI ------

_BASE: dict[str, Any] = {
    "name": "n",
    "mode": "cloud",
    "http": {
        "base_uri": "https://api.example/v1",
        "headers": [{"name": "X-Tenant", "value": "acme"}],
        "auth": {
            "type": "token",
            "token": "t0ken",
            "location": "header",
            "header_name": "Authorization",
            "scheme": "Bearer",
            "refresh": {
                "method": "POST",
                "relative_uri": "/oauth/token",
                "headers": [{"name": "X-R", "value": "r"}],
                "token_path": "t",
            },
        },
        "ping": {"method": "GET", "relative_uri": "/health"},
    },
}
_FIELDS = {
    "http.headers[0].name": ("http", "headers", 0, "name"),
    "http.headers[0].value": ("http", "headers", 0, "value"),
    "http.auth.token": ("http", "auth", "token"),
    "http.auth.header_name": ("http", "auth", "header_name"),
    "http.auth.scheme": ("http", "auth", "scheme"),
    "http.auth.param_name": ("http", "auth", "param_name"),
    "http.auth.refresh.relative_uri": ("http", "auth", "refresh", "relative_uri"),
    "http.auth.refresh.headers[0].name": ("http", "auth", "refresh", "headers", 0, "name"),
    "http.auth.refresh.headers[0].value": ("http", "auth", "refresh", "headers", 0, "value"),
    "http.ping.relative_uri": ("http", "ping", "relative_uri"),
    "http.base_uri": ("http", "base_uri"),
}


def _with(document: dict[str, Any], path: tuple[str | int, ...], value: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(document))
    target: Any = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    if path[-1] == "param_name":
        doc["http"]["auth"]["location"] = "url"
    return doc


_printable = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=600, deadline=None)
@given(
    field=st.sampled_from(sorted(_FIELDS)),
    before=_printable,
    bad=st.sampled_from(["\r", "\n", "\x00", "\r\n", "\n\r", "\r\n\r\n"]),
    after=_printable,
)
def test_line_breaks_anywhere_are_refused_with_the_field_named(
    field: str, before: str, bad: str, after: str
) -> None:
    value = before + bad + after
    with pytest.raises(ValidationError) as info:
        Connection.model_validate(_with(_BASE, _FIELDS[field], value))
    problems = validation_problems(info.value)
    assert field in [p["field"] for p in problems], problems
    assert bad not in json.dumps(problems, ensure_ascii=False).replace("\\r", "").replace(
        "\\n", ""
    ), problems
    if len(value.strip()) >= 4:
        assert value not in str(problems)


@settings(max_examples=200, deadline=None)
@given(before=_printable, bad=st.sampled_from(["\r", "\n", "\x00"]), after=_printable)
def test_secret_values_with_line_breaks_never_reach_a_header(
    before: str, bad: str, after: str
) -> None:
    """encrypted values may hold anything; a header that inserts one must refuse it."""
    connection = {"http": {"encrypted": {"k": before + bad + after}}}
    for template in (
        "{{connection.http.encrypted.k}}",
        "{{{connection.http.encrypted.k}}}",
        "Bearer {{& connection.http.encrypted.k}}",
    ):
        with pytest.raises(TemplateError, match="CR, LF or NUL"):
            render_header_value(template, connection)


# -- the atheris target for sluice.connect -----------------------------------------------


def test_connect_fuzz_target_holds_on_its_seeds() -> None:
    """tests/fuzz/fuzz_connect.py's property, without atheris, so it cannot rot."""
    from tests.fuzz.fuzz_connect import SEEDS, check

    for seed in SEEDS:
        check(seed)
        check(seed[: len(seed) // 2])
        check(seed.replace(b"\r\n", b"\n"))


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_connect_fuzz_target_runs_under_atheris(tmp_path: Path) -> None:
    """20,000 coverage-guided inputs (~1 s) through the real atheris harness."""
    script = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_connect.py"
    done = subprocess.run(
        [sys.executable, str(script), "-runs=20000", "-max_len=9000", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "FUZZ_CONNECT_WORKDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 20000 runs" in done.stderr, done.stderr[-3000:]
