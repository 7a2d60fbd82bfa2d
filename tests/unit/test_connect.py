"""Tests for sluice.connect: the CONNECT exchange on every tunnelled stream."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.connect import (
    MAX_ERROR_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    MAX_MESSAGE_CHARS,
    ConnectProtocolError,
    ConnectResponse,
    Target,
    find_head_end,
    format_connect_request,
    format_connect_response,
    normalise_host,
    parse_connect_request,
    parse_connect_response,
    parse_error_body,
)

# --- strategies --------------------------------------------------------------

_LDH = "abcdefghijklmnopqrstuvwxyz0123456789-"
_labels = st.text(_LDH, min_size=1, max_size=63).filter(lambda s: s[0] != "-" != s[-1])
_tlds = st.text(_LDH[:26], min_size=1, max_size=10)


@st.composite
def dns_names(draw: st.DrawFn) -> str:
    labels = draw(st.lists(_labels, min_size=0, max_size=4))
    name = ".".join([*labels, draw(_tlds)])
    return name[-253:].lstrip(".-") or "a"


def _valid_name(name: str) -> bool:
    try:
        return normalise_host(name) == name
    except ConnectProtocolError:
        return False


names = dns_names().filter(_valid_name)
ipv4_hosts = st.ip_addresses(v=4).map(str)
ipv6_hosts = st.ip_addresses(v=6).map(lambda a: a.compressed)
hosts = st.one_of(names, ipv4_hosts, ipv6_hosts)
ports = st.integers(min_value=1, max_value=65535)
targets = st.builds(Target, hosts, ports)


def request(authority: str, *headers: str) -> bytes:
    lines = [f"CONNECT {authority} HTTP/1.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass")


# --- Target ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "host", "port"),
    [
        ("example.com:443", "example.com", 443),
        ("Example.COM.:443", "example.com", 443),
        ("db-api:80", "db-api", 80),
        ("xn--bcher-kva.example:1", "xn--bcher-kva.example", 1),
        ("10.20.0.1:65535", "10.20.0.1", 65535),
        ("[::1]:443", "::1", 443),
        ("[FD00:0:0::0001]:8443", "fd00::1", 8443),
        ("[::ffff:10.0.0.1]:80", "::ffff:a00:1", 80),
    ],
)
def test_target_parse_valid(authority: str, host: str, port: int) -> None:
    assert Target.parse(authority) == Target(host, port)


@pytest.mark.parametrize(
    ("authority", "reason"),
    [
        ("example.com", "must be host:port"),
        ("example.com:", "port must be a number"),
        ("example.com:0", "port must be a number"),
        ("example.com:65536", "port must be a number"),
        ("example.com:0443", "leading zeros"),
        ("example.com:+443", "port must be a number"),
        ("example.com:44a", "port must be a number"),
        ("example.com:\u0664\u0664\u0663", "port must be a number"),  # Arabic-Indic digits
        ("example.com: 443", "port must be a number"),
        ("::1:443", "must be in brackets"),
        ("fd00::1:443", "must be in brackets"),
        ("[::1]", "needs ':port'"),
        ("[::1]443", "needs ':port'"),
        ("[::1:443", "unclosed"),
        ("[10.0.0.1]:443", "invalid IPv6"),
        ("[fe80::1%eth0]:443", "zone IDs"),
        (":443", "empty host"),
        (".:443", "empty host"),
        ("user@example.com:443", "invalid label"),
        ("-bad.example:443", "invalid label"),
        ("bad-.example:443", "invalid label"),
        ("a..b:443", "invalid label"),
        ("under_score.example:443", "invalid label"),
        (f"{'a' * 64}.example:443", "invalid label"),
        ("b\u00fccher.example:443", "xn--"),
        ("exa mple.com:443", "whitespace"),
        ("example.com\r\n:443", "control"),
        ("127.1:443", "dotted-quad"),
        ("0x7f000001:443", "dotted-quad"),
        ("010.0.0.1:443", "dotted-quad"),
        ("example.123:443", "dotted-quad"),
        ("a" * 400 + ":443", "characters long"),
    ],
)
def test_target_parse_invalid(authority: str, reason: str) -> None:
    with pytest.raises(ConnectProtocolError) as info:
        Target.parse(authority)
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason


def test_target_name_length_limit() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
    assert Target(name, 1).host == name
    with pytest.raises(ConnectProtocolError, match="over 253"):
        Target(name + "b", 1)


def test_target_constructor_normalises_and_accepts_bracketed_ipv6() -> None:
    assert Target("[FD00::1]", 443) == Target("fd00::1", 443)
    assert Target("Inventory.Internal.", 1).host == "inventory.internal"


@pytest.mark.parametrize("port", [0, 65536, -1, True, "443", 443.0])
def test_target_rejects_bad_ports(port: object) -> None:
    with pytest.raises(ConnectProtocolError):
        Target("example.com", port)  # type: ignore[arg-type]


def test_target_authority() -> None:
    assert Target("example.com", 443).authority() == "example.com:443"
    assert Target("10.0.0.1", 80).authority() == "10.0.0.1:80"
    assert Target("fd00::1", 8443).authority() == "[fd00::1]:8443"


def test_target_is_frozen() -> None:
    target = Target("example.com", 443)
    with pytest.raises(AttributeError):
        target.port = 80  # type: ignore[misc]


def test_error_reason_quotes_at_most_64_bytes() -> None:
    with pytest.raises(ConnectProtocolError) as info:
        Target.parse("\x00" * 200 + ":443")
    assert info.value.reason.count("\\x00") == 64
    assert "..." in info.value.reason


# --- request -----------------------------------------------------------------


def test_format_connect_request() -> None:
    assert format_connect_request(Target("example.com", 443)) == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    )
    assert format_connect_request(Target("fd00::1", 443)) == (
        b"CONNECT [fd00::1]:443 HTTP/1.1\r\nHost: [fd00::1]:443\r\n\r\n"
    )


def test_parse_connect_request_accepts_http_1_0_and_ignores_headers() -> None:
    head = b"CONNECT example.com:443 HTTP/1.0\r\nHost: other:1\r\nX-Thing:v\r\nEmpty:\r\n\r\n"
    assert parse_connect_request(head) == Target("example.com", 443)
    assert parse_connect_request(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n").port == 443


def test_parse_connect_request_allows_32_header_lines_not_33() -> None:
    headers = [f"X-{i}: {i}" for i in range(MAX_HEADER_LINES)]
    assert parse_connect_request(request("a.example:1", *headers)).host == "a.example"
    with pytest.raises(ConnectProtocolError, match="header lines"):
        parse_connect_request(request("a.example:1", *headers, "X-Last: 1"))


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"", "CRLF CRLF"),
        (b"\r\n\r\n", "empty"),
        (b"CONNECT a.example:443 HTTP/1.1\r\n", "CRLF CRLF"),
        (b"CONNECT a.example:443 HTTP/1.1\n\n", "CRLF CRLF"),
        (b"CONNECT a.example:443 HTTP/1.1\n\r\n\r\n", "bare CR or LF"),
        (b"CONNECT a.example:443 HTTP/1.1\r\r\n\r\n", "bare CR or LF"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nHost: x\ny\r\n\r\n", "bare CR or LF"),
        (b"CONNECT a.example:443 HTTP/1.1\r\n\r\nHost: x\r\n\r\n", "empty"),
        (b"CONNECT a.example:443\x00 HTTP/1.1\r\n\r\n", "NUL"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nX: a\x00b\r\n\r\n", "NUL"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nX: a\tb\r\n\r\n", "control"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nX: \x7f\r\n\r\n", "control"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nX: \xc3\xa9\r\n\r\n", "non-ASCII"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nNo colon\r\n\r\n", "name: value"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nX : v\r\n\r\n", "name: value"),
        (b"CONNECT a.example:443 HTTP/1.1\r\n: v\r\n\r\n", "name: value"),
        (b"CONNECT a.example:443 HTTP/1.1\r\nX: v\r\n folded\r\n\r\n", "name: value"),
        (b"GET a.example:443 HTTP/1.1\r\n\r\n", "method must be CONNECT"),
        (b"connect a.example:443 HTTP/1.1\r\n\r\n", "method must be CONNECT"),
        (b"CONNECT a.example:443 HTTP/2.0\r\n\r\n", "version"),
        (b"CONNECT a.example:443 http/1.1\r\n\r\n", "version"),
        (b"CONNECT a.example:443\r\n\r\n", "request line"),
        (b"CONNECT  a.example:443 HTTP/1.1\r\n\r\n", "request line"),
        (b"CONNECT a.example:443 HTTP/1.1 \r\n\r\n", "request line"),
        (b" CONNECT a.example:443 HTTP/1.1\r\n\r\n", "request line"),
        (b"CONNECT a.example HTTP/1.1\r\n\r\n", "host:port"),
        (b"CONNECT [::1 HTTP/1.1\r\n\r\n", "unclosed"),
        (b"CONNECT a.example:0 HTTP/1.1\r\n\r\n", "port"),
        (b"CONNECT http://a.example:443/ HTTP/1.1\r\n\r\n", "not a URL"),
    ],
)
def test_parse_connect_request_rejects(head: bytes, reason: str) -> None:
    with pytest.raises(ConnectProtocolError) as info:
        parse_connect_request(head)
    assert reason in info.value.reason


def test_parse_connect_request_rejects_huge_head() -> None:
    head = request("a.example:1", "X: " + "a" * MAX_HEAD_BYTES)
    with pytest.raises(ConnectProtocolError, match="byte limit"):
        parse_connect_request(head)


def test_parse_connect_request_accepts_head_of_exactly_max_bytes() -> None:
    base = request("a.example:1", "X: ")
    head = request("a.example:1", "X: " + "a" * (MAX_HEAD_BYTES - len(base)))
    assert len(head) == MAX_HEAD_BYTES
    assert parse_connect_request(head) == Target("a.example", 1)
    assert find_head_end(head) == MAX_HEAD_BYTES


@pytest.mark.parametrize("head_type", [str, list])
def test_parse_connect_request_rejects_non_bytes(head_type: type) -> None:
    with pytest.raises(ConnectProtocolError, match="must be bytes"):
        parse_connect_request(head_type("CONNECT a:1 HTTP/1.1\r\n\r\n"))


# --- find_head_end -----------------------------------------------------------


def test_find_head_end() -> None:
    assert find_head_end(b"") == -1
    assert find_head_end(b"CONNECT a:1 HTTP/1.1\r\n\r") == -1
    assert find_head_end(b"HTTP/1.1 200 OK\r\n\r\n") == 19
    assert find_head_end(bytearray(b"HTTP/1.1 200 OK\r\n\r\ntunnel bytes\r\n\r\n")) == 19


def test_find_head_end_gives_up_at_the_limit() -> None:
    assert find_head_end(b"a" * (MAX_HEAD_BYTES - 1)) == -1
    with pytest.raises(ConnectProtocolError, match=str(MAX_HEAD_BYTES)):
        find_head_end(b"a" * MAX_HEAD_BYTES)
    # An end that straddles the limit is past it.
    with pytest.raises(ConnectProtocolError):
        find_head_end(b"a" * (MAX_HEAD_BYTES - 2) + b"\r\n\r\n")
    assert find_head_end(b"a" * (MAX_HEAD_BYTES - 4) + b"\r\n\r\nmore") == MAX_HEAD_BYTES


# --- response ----------------------------------------------------------------


def test_format_200() -> None:
    assert format_connect_response(200) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    with pytest.raises(ValueError, match="no error"):
        format_connect_response(200, error="bad_request")


@pytest.mark.parametrize(
    ("status", "phrase", "error"),
    [
        (400, "Bad Request", "bad_request"),
        (403, "Forbidden", "destination_denied"),
        (502, "Bad Gateway", "upstream_connect_failed"),
        (504, "Gateway Timeout", "upstream_timeout"),
    ],
)
def test_format_error_response(status: int, phrase: str, error: str) -> None:
    raw = format_connect_response(status, message="no rule allows db:5432")
    end = find_head_end(raw)
    head, body = raw[:end], raw[end:]
    assert (
        head
        == (
            f"HTTP/1.1 {status} {phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
    )
    assert (
        body
        == json.dumps(
            {"error": error, "message": "no rule allows db:5432"}, separators=(",", ":")
        ).encode()
    )
    assert parse_connect_response(head) == ConnectResponse(status, len(body))
    assert parse_error_body(body) == (error, "no rule allows db:5432")


def test_format_error_response_defaults_and_overrides() -> None:
    raw = format_connect_response(403)
    assert raw.endswith(b'{"error":"destination_denied","message":"Forbidden"}')
    raw = format_connect_response(502, error="upstream_refused", message="é ☃")
    assert raw.endswith('{"error":"upstream_refused","message":"é ☃"}'.encode())


@pytest.mark.parametrize(
    ("status", "kwargs"),
    [
        (299, {}),
        (302, {}),
        (100, {}),
        (700, {}),
        (403, {"error": "Not Snake"}),
        (403, {"error": ""}),
        (403, {"error": "x\r\ny"}),
    ],
)
def test_format_connect_response_rejects(status: int, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
        format_connect_response(status, **kwargs)


def test_format_connect_response_keeps_body_within_limit() -> None:
    for char in ("a", "\U0001f600", '"', "\x00"):
        raw = format_connect_response(502, message=char * 10_000)
        end = find_head_end(raw)
        response = parse_connect_response(raw[:end])
        assert response.content_length == len(raw) - end <= MAX_ERROR_BODY_BYTES
        error, message = parse_error_body(raw[end:])
        assert error == "upstream_connect_failed"
        assert len(message) == MAX_MESSAGE_CHARS


def test_format_connect_response_replaces_control_characters() -> None:
    raw = format_connect_response(502, message="a\r\nb\x00c\u202ed")
    end = find_head_end(raw)
    assert parse_error_body(raw[end:]) == (
        "upstream_connect_failed",
        "a\ufffd\ufffdb\ufffdc\ufffdd",
    )


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"HTTP/1.1 200 Connection established\r\n\r\n", ConnectResponse(200, 0)),
        (b"HTTP/1.0 200 OK\r\n\r\n", ConnectResponse(200, 0)),
        (b"HTTP/1.1 200\r\n\r\n", ConnectResponse(200, 0)),
        (b"HTTP/1.1 200 \r\n\r\n", ConnectResponse(200, 0)),
        # RFC 9110: a 2xx answer to CONNECT has no body, whatever it says.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n", ConnectResponse(200, 0)),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", ConnectResponse(403, 0)),
        (b"HTTP/1.1 403 Forbidden\r\ncontent-length:  12 \r\n\r\n", ConnectResponse(403, 12)),
        (b"HTTP/1.1 504 x\r\nContent-Length: 4096\r\n\r\n", ConnectResponse(504, 4096)),
    ],
)
def test_parse_connect_response(head: bytes, expected: ConnectResponse) -> None:
    assert parse_connect_response(head) == expected
    assert parse_connect_response(head).established == (expected.status == 200)


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"HTTP/1.1 200 OK\n\n", "CRLF CRLF"),
        (b"HTTP/1.1 200 OK\n\r\n\r\n", "bare CR or LF"),
        (b"HTTP/1.1 200 OK\x00\r\n\r\n", "NUL"),
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "status line"),
        (b"HTTP/1.1 600 Nope\r\n\r\n", "status line"),
        (b"HTTP/1.1  200 OK\r\n\r\n", "status line"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "status line"),
        (b"HTTP/1.1 403 F\r\nContent-Length: 4097\r\n\r\n", "byte limit"),
        (b"HTTP/1.1 403 F\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 403 F\r\nContent-Length: 1e3\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 403 F\r\nContent-Length: 99999999999\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 403 F\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "more than one"),
        (b"HTTP/1.1 403 F\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 403 F\r\nbad header\r\n\r\n", "name: value"),
    ],
)
def test_parse_connect_response_rejects(head: bytes, reason: str) -> None:
    with pytest.raises(ConnectProtocolError) as info:
        parse_connect_response(head)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'"destination_denied"',
        b'{"message": "no error code"}',
        b'{"error": 403, "message": "x"}',
        b'{"error": "Not A Code", "message": "x"}',
        b"[" * 4000 + b"]" * 4000,
        b'{"error": "x", "message": "' + b"a" * MAX_ERROR_BODY_BYTES + b'"}',
    ],
)
def test_parse_error_body_tolerates_garbage(body: bytes) -> None:
    error, message = parse_error_body(body)
    assert error == "upstream_error"
    assert message.startswith("the agent sent an unreadable error body")
    assert len(message) < 400


def test_parse_error_body_without_message() -> None:
    assert parse_error_body(b'{"error": "upstream_timeout"}') == (
        "upstream_timeout",
        "the agent gave no message",
    )


# --- properties --------------------------------------------------------------


@settings(max_examples=300)
@given(targets)
def test_request_round_trip(target: Target) -> None:
    raw = format_connect_request(target)
    assert find_head_end(raw) == len(raw)
    assert parse_connect_request(raw) == target
    assert Target.parse(target.authority()) == target


@settings(max_examples=100)
@given(ipv6_hosts, ports)
def test_ipv6_with_and_without_brackets(host: str, port: int) -> None:
    assert Target(f"[{host}]", port) == Target(host, port)
    assert Target.parse(f"[{host}]:{port}").host == host
    assert ipaddress.IPv6Address(Target(host, port).host) == ipaddress.IPv6Address(host)
    with pytest.raises(ConnectProtocolError):
        Target.parse(f"{host}:{port}")


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    for parse in (parse_connect_request, parse_connect_response):
        for candidate in (data, data + b"\r\n\r\n", b"CONNECT " + data + b"\r\n\r\n"):
            with contextlib.suppress(ConnectProtocolError):
                parse(candidate)
    with contextlib.suppress(ConnectProtocolError):
        find_head_end(data)
    error, message = parse_error_body(data)
    assert isinstance(error, str)
    assert isinstance(message, str)


@settings(max_examples=200)
@given(st.text(max_size=300), st.integers())
def test_arbitrary_text_makes_a_safe_target_or_a_protocol_error(text: str, port: int) -> None:
    makers: list[Callable[[], Target]] = [lambda: Target.parse(text), lambda: Target(text, port)]
    for make in makers:
        try:
            target = make()
        except ConnectProtocolError:
            continue
        raw = format_connect_request(target)
        assert raw.count(b"\r\n") == 3
        assert parse_connect_request(raw) == target


@settings(max_examples=200)
@given(targets, st.sampled_from(["\r\n", "\n", "\r", "\x00"]), st.data())
def test_injection_into_the_authority_is_rejected(
    target: Target, injection: str, data: st.DataObject
) -> None:
    authority = target.authority()
    at = data.draw(st.integers(min_value=0, max_value=len(authority)))
    tainted = authority[:at] + injection + authority[at:]
    with pytest.raises(ConnectProtocolError):
        Target.parse(tainted)
    with pytest.raises(ConnectProtocolError):
        parse_connect_request(request(tainted, f"Host: {authority}"))


@settings(max_examples=200)
@given(
    targets,
    st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.sampled_from(["\n", "\r", "\x00", "\r\n ", "\r\n\t", "\r\n:", "\r\nGET / HTTP/1.1"]),
    st.data(),
)
def test_injection_into_a_header_is_rejected(
    target: Target, name: str, value: str, injection: str, data: st.DataObject
) -> None:
    line = f"{name}: {value}"
    assert parse_connect_request(request(target.authority(), line)) == target
    at = data.draw(st.integers(min_value=0, max_value=len(line)))
    tainted = line[:at] + injection + line[at:]
    with pytest.raises(ConnectProtocolError):
        parse_connect_request(request(target.authority(), tainted))


@settings(max_examples=30)
@given(st.integers(min_value=MAX_HEAD_BYTES + 1, max_value=4 * MAX_HEAD_BYTES))
def test_huge_heads_are_rejected(size: int) -> None:
    base = request("a.example:1", "X: ")
    head = request("a.example:1", "X: " + "a" * (size - len(base)))
    assert len(head) == size
    with pytest.raises(ConnectProtocolError):
        parse_connect_request(head)
    with pytest.raises(ConnectProtocolError):
        parse_connect_response(head)
    with pytest.raises(ConnectProtocolError):
        find_head_end(head)


@settings(max_examples=100)
@given(
    st.one_of(st.integers(max_value=0), st.integers(min_value=65536)),
    st.text(min_size=1, max_size=8).filter(lambda s: not (s.isascii() and s.isdigit())),
)
def test_bad_ports_are_rejected(number: int, junk: str) -> None:
    for port_text in (str(number), junk):
        with pytest.raises(ConnectProtocolError):
            Target.parse(f"example.com:{port_text}")
        with pytest.raises(ConnectProtocolError):
            parse_connect_request(request(f"example.com:{port_text}"))


@settings(max_examples=150)
@given(
    st.sampled_from([400, 403, 502, 504]),
    st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True),
    st.text(
        st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
        max_size=MAX_MESSAGE_CHARS,
    ).filter(str.isprintable),
)
def test_error_response_round_trip(status: int, error: str, message: str) -> None:
    raw = format_connect_response(status, error=error, message=message)
    end = find_head_end(raw)
    response = parse_connect_response(raw[:end])
    assert response == ConnectResponse(status, len(raw) - end)
    assert not response.established
    assert parse_error_body(raw[end:]) == (error, message)
