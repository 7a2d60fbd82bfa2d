from __future__ import annotations

import gc
import json
import sys
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.proxy.templating import (
    TemplateError,
    body_target,
    check_template,
    render,
    render_body,
    render_header_value,
    render_uri,
)

TRICKY = "p\"w\\<&>/ ?=+%'x"
CONNECTION: dict[str, Any] = {
    "name": "Inventory",
    "mode": "cloud",
    "http": {
        "base_uri": "https://api.example.com",
        "headers": [{"name": "X-Tenant", "value": "acme"}, {"name": "X-Other", "value": "o"}],
        "encrypted": {"password": TRICKY, "refresh_token": "rt-123", "api-key": "k"},
        "unencrypted": {"client_id": "cid", "count": "5"},
        "tls": {"verify": True, "ca_bundle_pem": None},
        "timeouts": {"connect": 10.0, "total": 60},
    },
}


def test_guide_placeholder() -> None:
    assert render("{{connection.http.encrypted.refresh_token}}", CONNECTION) == "rt-123"
    assert render("{{{connection.http.encrypted.refresh_token}}}", CONNECTION) == "rt-123"


def test_no_html_escaping_by_default() -> None:
    assert render("{{connection.http.encrypted.password}}", CONNECTION) == TRICKY


def test_triple_stash_is_raw_for_every_target() -> None:
    for target in ("text", "header", "uri", "json", "xml", "form"):
        rendered = render("{{{connection.http.encrypted.password}}}", CONNECTION, target=target)
        assert rendered == TRICKY
        assert (
            render("{{& connection.http.encrypted.password}}", CONNECTION, target=target) == TRICKY
        )


def test_json_body_stays_valid_json() -> None:
    body = (
        '{"password": "{{connection.http.encrypted.password}}", '
        '"n": {{connection.http.unencrypted.count}}}'
    )
    rendered = render_body(body, CONNECTION, "json")
    assert json.loads(rendered) == {"password": TRICKY, "n": 5}


def test_json_body_escapes_control_characters() -> None:
    connection = {"http": {"encrypted": {"v": "line1\nline2\t\x00"}}}
    rendered = render_body('{"v": "{{connection.http.encrypted.v}}"}', connection, "json")
    assert json.loads(rendered) == {"v": "line1\nline2\t\x00"}


def test_uri_values_are_percent_encoded() -> None:
    rendered = render_uri("/token?password={{connection.http.encrypted.password}}&id=1", CONNECTION)
    assert parse_qs(rendered.split("?", 1)[1]) == {"password": [TRICKY], "id": ["1"]}
    assert render_uri("/v1/{{connection.http.unencrypted.client_id}}", CONNECTION) == "/v1/cid"
    assert unquote(render_uri("/{{connection.http.encrypted.password}}", CONNECTION))[1:] == TRICKY


def test_uri_refuses_control_characters() -> None:
    connection = {"http": {"unencrypted": {"path": "a\r\nHost: evil"}}}
    with pytest.raises(TemplateError, match="control character") as info:
        render_uri("/{{{connection.http.unencrypted.path}}}", connection)
    assert "evil" not in str(info.value)
    assert (
        render_uri("/{{connection.http.unencrypted.path}}", connection) == "/a%0D%0AHost%3A%20evil"
    )


def test_form_body() -> None:
    rendered = render_body(
        "grant_type=refresh_token&secret={{connection.http.encrypted.password}}",
        CONNECTION,
        "urlencoded",
    )
    assert parse_qs(rendered)["secret"] == [TRICKY]


def test_xml_body() -> None:
    rendered = render_body("<p>{{connection.http.encrypted.password}}</p>", CONNECTION, "xml")
    assert rendered == "<p>p&quot;w\\&lt;&amp;&gt;/ ?=+%&#x27;x</p>"


@pytest.mark.parametrize(
    ("media_type", "target"),
    [
        ("json", "json"),
        ("xml", "xml"),
        ("urlencoded", "form"),
        ("plaintext", "text"),
        ("csv", "text"),
    ],
)
def test_body_target(media_type: str, target: str) -> None:
    assert body_target(media_type) == target


def test_header_value() -> None:
    template = "Bearer {{connection.http.encrypted.refresh_token}}"
    assert render_header_value(template, CONNECTION) == "Bearer rt-123"
    assert render_header_value("{{connection.http.encrypted.password}}", CONNECTION) == TRICKY


@pytest.mark.parametrize("bad", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"])
def test_header_value_refuses_line_breaks(bad: str) -> None:
    connection = {"http": {"encrypted": {"v": bad}}}
    for template in ("{{connection.http.encrypted.v}}", "{{{connection.http.encrypted.v}}}"):
        with pytest.raises(TemplateError, match="X-Custom") as info:
            render_header_value(template, connection, name="X-Custom")
        assert bad not in str(info.value)
        assert "Injected" not in str(info.value)


def test_missing_values_render_empty() -> None:
    assert render("[{{connection.http.encrypted.nope}}]", CONNECTION) == "[]"
    assert render("[{{connection.nothing.deeper.still}}]", CONNECTION) == "[]"
    assert render("[{{connection.http.headers.[9].name}}]", CONNECTION) == "[]"
    assert render("[{{connection.http.headers.x}}]", CONNECTION) == "[]"


def test_scalars_and_structures() -> None:
    assert render("{{connection.http.tls.verify}}", CONNECTION) == "true"
    assert render("{{connection.http.tls.ca_bundle_pem}}", CONNECTION) == ""
    assert render("{{connection.http.timeouts.total}}", CONNECTION) == "60"
    assert render("{{connection.http}}", CONNECTION) == "[object Object]"
    assert render("{{connection.http.encrypted.api-key}}", CONNECTION) == "k"
    assert render("{{connection.http.encrypted.[api-key]}}", CONNECTION) == "k"


def test_arrays() -> None:
    assert render("{{connection.http.headers.length}}", CONNECTION) == "2"
    assert render("{{connection.http.headers.[1].name}}", CONNECTION) == "X-Other"
    assert render("{{connection.http.headers.0.value}}", CONNECTION) == "acme"
    template = "{{#each connection.http.headers}}{{@index}}:{{name}}={{value}};{{/each}}"
    assert render(template, CONNECTION) == "0:X-Tenant=acme;1:X-Other=o;"


def test_block_helpers() -> None:
    template = "{{#each connection.http.unencrypted}}{{@key}}={{this}},{{/each}}"
    assert render(template, CONNECTION) == "client_id=cid,count=5,"
    assert render("{{#if connection.http.encrypted}}y{{else}}n{{/if}}", CONNECTION) == "y"
    assert render("{{#if connection.nope}}y{{else}}n{{/if}}", CONNECTION) == "n"
    assert render("{{#unless connection.nope}}u{{/unless}}", CONNECTION) == "u"
    assert (
        render("{{#with connection.http}}{{unencrypted.client_id}}{{/with}}", CONNECTION) == "cid"
    )
    assert render('{{lookup connection.http.unencrypted "client_id"}}', CONNECTION) == "cid"
    assert render("{{! a comment }}x", CONNECTION) == "x"
    assert render("a {{~connection.name~}} b", CONNECTION) == "aInventoryb"


def test_only_the_connection_is_in_scope() -> None:
    assert render("[{{name}}][{{http.base_uri}}]", CONNECTION) == "[][]"
    assert (
        render("[{{connection.keys}}][{{connection.items}}][{{connection.get}}]", CONNECTION)
        == "[][][]"
    )


def test_rendering_does_not_change_the_connection() -> None:
    snapshot = json.dumps(CONNECTION)
    render(
        "{{connection.setdefault}}{{connection.clear}}{{connection.http.headers.pop}}", CONNECTION
    )
    assert json.dumps(CONNECTION) == snapshot


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{connection.[x') + str(6*7) + ('y]}}", "expected a path"),
        ("{{#each connection.[x') or print(1) or ('y]}}{{/each}}", "one argument"),
        ('{{lookup connection "x\\" + str(1)"}}', "expected a path"),
        ("{{connection.__class__}}", "'__'"),
        ("{{connection.[__class__].x}}", "'__'"),
        ("{{> partial}}", "partials"),
        ("{{log connection}}", "cannot be used"),
        ("{{foo connection}}", "unknown helper"),
        ("{{lookup connection}}", "two arguments"),
        ("{{#each (lookup connection 'x')}}{{/each}}", "one argument"),
        ("{{#custom connection}}{{/custom}}", "one argument"),
        ("{{#if connection}}x", "never closed"),
        ("{{#if connection}}x{{/each}}", "expected '{{/if}}'"),
        ("{{/if}}", "without an open block"),
        ("x{{else}}y", "outside a block"),
        ("{{#if a}}1{{else}}2{{else}}3{{/if}}", "second 'else'"),
        ("abc {{connection.name", "unclosed"),
        ("{{{{raw}}}}x{{{{/raw}}}}", "malformed"),
        ("{{connection.name}", "malformed"),
        ("{{@_parent}}", "data variable"),
        ("{{connection.else}}", "[else]"),
        ("{{lookup connection trueish}}", "expected a path"),
        ("{{lookup connection 12abc}}", "expected a path"),
        ("{{lookup connection key=1}}", "expected a path"),
        ("{{ #if connection}}{{/if}}", "expected a path"),
    ],
)
def test_rejected_templates(template: str, reason: str) -> None:
    with pytest.raises(TemplateError, match="template error at line 1") as info:
        render(template, CONNECTION)
    assert reason in str(info.value)
    with pytest.raises(TemplateError):
        check_template(template)


def test_error_position_and_no_secret() -> None:
    template = "line one\n  {{connection.http.encrypted.password"
    with pytest.raises(TemplateError, match="line 2, column 3") as info:
        render(template, CONNECTION)
    assert TRICKY not in str(info.value)


def test_string_methods_are_not_data() -> None:
    # A string's methods are not data: they render as nothing, and show nothing.
    template = "{{#with connection.http.encrypted.password}}[{{upper}}]{{/with}}"
    assert render(template, CONNECTION) == "[]"
    assert render("{{connection.name.format}}", CONNECTION) == ""


def test_too_long_template() -> None:
    with pytest.raises(TemplateError, match="longer than"):
        check_template("x" * 70_000)


def test_too_deep_nesting() -> None:
    template = "{{#if connection}}" * 20 + "{{/if}}" * 20
    with pytest.raises(TemplateError, match="nest deeper"):
        check_template(template)


def test_compiled_templates_are_not_left_in_sys_modules() -> None:
    before = {name for name in sys.modules if name.startswith("pybars._templates.")}
    template = "{{connection.name}} unique-" + str(id(object()))
    assert render(template, CONNECTION).startswith("Inventory")
    gc.collect()
    after = {name for name in sys.modules if name.startswith("pybars._templates.")}
    assert after <= before
    assert render(template, CONNECTION).startswith("Inventory")


def test_plain_text_is_untouched() -> None:
    text = "no tags here } { }} just text \\ ' \""
    assert render(text, CONNECTION) == text


@given(secret=st.text())
def test_json_target_round_trips_any_value(secret: str) -> None:
    connection = {"http": {"encrypted": {"s": secret}}}
    rendered = render_body('{"s": "{{connection.http.encrypted.s}}"}', connection, "json")
    assert json.loads(rendered) == {"s": secret}


FRAGMENTS = [
    "{{",
    "}}",
    "{{{",
    "}}}",
    "{",
    "}",
    "~",
    "#",
    "^",
    "/",
    "&",
    "!",
    ">",
    " ",
    "\n",
    "connection",
    ".",
    "..",
    "../",
    "[",
    "]",
    "http",
    "encrypted",
    "password",
    "this",
    "@index",
    "@root",
    "if",
    "each",
    "with",
    "unless",
    "lookup",
    "else",
    "log",
    "__class__",
    "'",
    '"',
    "\\",
    "x",
    "0",
    "-1",
    "true",
    "=",
    "(",
    ")",
    "/if",
    "/each",
]


@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=25))
def test_validator_and_pybars_agree(parts: list[str]) -> None:
    """Whatever the validator accepts, pybars compiles; everything else is a TemplateError."""
    template = "".join(parts)
    try:
        check_template(template)
    except TemplateError:
        return
    try:
        render(template, CONNECTION)
    except TemplateError as exc:
        message = str(exc)
    else:
        return
    assert "could not be rendered" in message, message
