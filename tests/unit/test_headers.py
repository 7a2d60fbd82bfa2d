"""server.proxy.headers and join_target: what the proxy changes, as plain functions."""

from __future__ import annotations

import pytest

from server.proxy.headers import LocationRewrite, answer_fields, connection_options, request_fields
from server.proxy.urls import URLError, join_target, with_target_param
from server.tunnel.http1 import request_head

DEFAULTS = [(b"Accept", b"application/json"), (b"User-Agent", b"Sluice/1")]


def test_repeated_fields_stay_separate_and_in_order() -> None:
    caller = [(b"Cookie", b"a=1"), (b"X-A", b"1"), (b"cookie", b"b=2"), (b"x-a", b"2")]
    assert request_fields(caller, [], []) == caller


def test_values_are_bytes_as_sent() -> None:
    caller = [(b"X-Latin", b"caf\xe9"), (b"X-Utf8", "café".encode())]
    assert request_fields(caller, [], []) == caller
    assert answer_fields(caller, None) == caller


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    caller = [
        (b"Connection", b"X-Hop, x-two"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"5"),
        (b"X-Two", b"2"),
        (b"TE", b"trailers"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"X-Kept", b"3"),
    ]
    assert request_fields(caller, [], []) == [(b"X-Kept", b"3")]
    assert answer_fields(caller, None) == [(b"X-Kept", b"3")]
    assert connection_options(caller) == {b"x-hop", b"x-two"}


def test_the_relay_writes_host_framing_and_keeps_its_credential() -> None:
    caller = [
        (b"Host", b"relay"),
        (b"Authorization", b"Bearer relay-token"),
        (b"Content-Length", b"3"),
        (b"X-A", b"1"),
    ]
    assert request_fields(caller, [], []) == [(b"X-A", b"1")]


def test_owned_fields_replace_and_defaults_only_fill_in() -> None:
    caller = [(b"x-api-key", b"caller"), (b"accept", b"text/html"), (b"X-A", b"1")]
    owned = [(b"X-Api-Key", b"connection")]
    assert request_fields(caller, owned, DEFAULTS) == [
        (b"accept", b"text/html"),
        (b"X-A", b"1"),
        (b"X-Api-Key", b"connection"),
        (b"User-Agent", b"Sluice/1"),
    ]


def test_answer_framing_is_left_to_the_writer() -> None:
    api = [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked"), (b"ETag", b'"x"')]
    assert answer_fields(api, None) == [(b"ETag", b'"x"')]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"http://api:8080/base/x?y=1", b"/v1/c/proxy/x?y=1"),
        (b"HTTP://API:8080/base", b"/v1/c/proxy"),
        (b"/base/x", b"/v1/c/proxy/x"),
        (b"/base?q", b"/v1/c/proxy?q"),
        (b"/basement", b"/basement"),
        (b"/other/x", b"/other/x"),
        (b"http://api:80801/base/x", b"http://api:80801/base/x"),
        (b"https://api:8080/base/x", b"https://api:8080/base/x"),
        (b"http://elsewhere/base/x", b"http://elsewhere/base/x"),
        (b"//api:8080/base/x", b"//api:8080/base/x"),
        (b"relative/x", b"relative/x"),
    ],
)
def test_locations_under_the_base_uri_point_at_the_proxy_route(
    value: bytes, expected: bytes
) -> None:
    rewrite = LocationRewrite(b"http://api:8080", b"/base/", b"/v1/c/proxy")
    fields = answer_fields([(b"Location", value), (b"Content-Location", value)], rewrite)
    assert fields == [(b"Location", expected), (b"Content-Location", expected)]


@pytest.mark.parametrize(
    ("base", "relative", "target"),
    [
        ("http://h", "", "/"),
        ("http://h", "/anything?", "/anything?"),
        ("http://h", "/a%2Fb/%25/", "/a%2Fb/%25/"),
        ("http://h", "/a//b/./c/../d;e", "/a//b/./c/../d;e"),
        ("http://h/base", "", "/base"),
        ("http://h/base", "/", "/base/"),
        ("http://h/base/", "/x", "/base/x"),
        ("http://h/base?v=1", "/?x=2", "/base/?v=1&x=2"),
        ("http://h/base?v=1", "?", "/base?v=1"),
        ("http://h/base?v=1", "?a&&b=", "/base?v=1&a&&b="),
        ("http://h", "/caf\u00e9 x", "/caf%C3%A9%20x"),
    ],
)
def test_the_request_target_is_joined_without_normalising(
    base: str, relative: str, target: str
) -> None:
    assert join_target(base, relative)[1] == target


@pytest.mark.parametrize("relative", ["//evil.example/x", "http://evil/x", "/a\r\nX: 1"])
def test_a_target_that_could_leave_the_base_uri_is_refused(relative: str) -> None:
    with pytest.raises(URLError):
        join_target("http://h/base", relative)


def test_the_url_token_replaces_the_callers_parameter_only() -> None:
    assert with_target_param("/a?key=mine&x=1&&y", "key", "t k") == "/a?x=1&&y&key=t%20k"
    assert with_target_param("/a", "key", "t") == "/a?key=t"


def test_the_request_head_writes_fields_as_bytes_then_framing() -> None:
    fields = [(b"X-Latin", b"caf\xe9"), (b"Cookie", b"a"), (b"Cookie", b"b")]
    head = request_head("POST", "/x?", "h:1", fields, 3, chunked=False)
    assert head == (
        b"POST /x? HTTP/1.1\r\nHost: h:1\r\nX-Latin: caf\xe9\r\nCookie: a\r\nCookie: b\r\n"
        b"Content-Length: 3\r\n\r\n"
    )
    assert request_head("GET", "/", "h", [], None, chunked=False).endswith(b"Host: h\r\n\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in request_head(
        "PUT", "/", "h", [], None, chunked=True
    )


@pytest.mark.parametrize("bad", [(b"X-A", b"1\r\nX-B: 2"), (b"X\nB", b"1"), (b"X-A", b"a\x00")])
def test_the_request_head_refuses_line_breaks_and_nul(bad: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="header"):
        request_head("GET", "/", "h", [bad], None, chunked=False)
