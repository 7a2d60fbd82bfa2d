"""The proxy is transparent: a differential test against httpbin (issue 19).

httpbin (an API we did not write) runs under gunicorn behind a TCP pipe that
records every byte. Each case is sent directly to the pipe and through the
relay (a cloud connection, and an on-premise connection through a real
agent). For each mode the test compares

* what the API received through the relay with what it received directly,
  and
* what the caller got through the relay with what it gets when the API is
  sent, directly, exactly the bytes it received through the relay (so an
  echo of a request field that the relay was documented to change does not
  count twice),

and allows only the changes in ``REQUEST_CHANGES`` and ``ANSWER_CHANGES``:
the list docs/PROXY.md gives, one entry per documented change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support import httpbin_server
from tests.support.byte_pipe import BytePipe, Recording, byte_pipe
from tests.support.capture import APIClient, remember_secret
from tests.support.http_bytes import Message, exchange, parse_answer, parse_request
from tests.support.relay_process import RelayProcess

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(httpbin_server.missing() is not None, reason=str(httpbin_server.missing())),
]

Fields = list[tuple[bytes, bytes]]

# -- the documented changes (docs/PROXY.md) -----------------------------------------
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
FRAMING = {b"content-length", b"transfer-encoding"}
USER_AGENT_PREFIX = b"Sluice/"
MEDIA_TYPE = b"application/json"


def _named_in_connection(fields: Fields) -> set[bytes]:
    return {
        token.strip().lower()
        for name, value in fields
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }


def _hop_by_hop_removed(fields: Fields) -> Fields:
    """R1/A1: hop-by-hop fields and the fields named in Connection are removed."""
    named = _named_in_connection(fields)
    return [(n, v) for n, v in fields if n.lower() not in HOP_BY_HOP | named]


def _framing_last(fields: Fields, message: Message) -> Fields:
    """R2/A2: the framing is written again after the other fields: the same
    Content-Length, or ``Transfer-Encoding: chunked`` for a chunked body."""
    rest = [(n, v) for n, v in fields if n.lower() not in FRAMING]
    if message.framing == "chunked":
        return [*rest, (b"Transfer-Encoding", b"chunked")]
    length = message.get(b"content-length")
    return [*rest, (b"Content-Length", length)] if length is not None else rest


def _defaults_added(fields: Fields) -> Fields:
    """R3: Content-Type and Accept (the connection's media type) and
    User-Agent are added, after the caller's fields, when the caller sent none."""
    present = {n.lower() for n, _ in fields}
    added = [
        (n, v)
        for n, v in (
            (b"Content-Type", MEDIA_TYPE),
            (b"Accept", MEDIA_TYPE),
            (b"User-Agent", b"<sluice>"),
        )
        if n.lower() not in present
    ]
    return fields + added


def expected_request(sent: Message) -> Message:
    """What the API should get through the relay, from what it got directly."""
    fields = _hop_by_hop_removed(sent.fields)
    fields = [(n, v) for n, v in fields if n.lower() not in FRAMING]
    fields = _defaults_added(fields)
    fields = _framing_last(fields, sent)
    method, target, _version = sent.start.split(b" ")
    # R4: the relay speaks HTTP/1.1 to the API, whatever the caller spoke.
    return Message(b"%s %s HTTP/1.1" % (method, target), fields, sent.body)


def normalised_request(got: Message) -> Message:
    fields = [(n, b"<sluice>" if v.startswith(USER_AGENT_PREFIX) else v) for n, v in got.fields]
    return Message(got.start, fields, got.body)


def expected_answer(direct: Message, conn_id: str, base: Rewrite, version: bytes) -> Message:
    """What the caller should get through the relay, from what the API answers
    directly to the same bytes."""
    fields = _hop_by_hop_removed(direct.fields)
    # A3: Location and Content-Location under the base URI point at the proxy route.
    fields = [
        (n, base.apply(v) if n.lower() in (b"location", b"content-location") else v)
        for n, v in fields
    ]
    fields = [(n, v) for n, v in fields if n.lower() not in FRAMING]
    # A4: the answer names its connection.
    fields.append((b"Sluice-Connection", conn_id.encode()))
    # A6: an answer without Date gets one (RFC 9110 §6.6.1), first.
    if direct.get(b"date") is None:
        fields.insert(0, (b"Date", b"<date>"))
    return Message(direct.start.replace(b"HTTP/1.1", version, 1), fields, direct.body)


def normalised_answer(got: Message, *, head: bool) -> Message:
    """The relay's own connection management (A5: Connection, and framing it
    chose: A2) taken out, to compare the rest; Date is the clock's, not a change."""
    fields = [
        (n, v) for n, v in got.fields if n.lower() not in FRAMING and n.lower() != b"connection"
    ]
    fields = [(n, b"<date>" if n.lower() == b"date" else v) for n, v in fields]
    return Message(got.start, fields, _unclocked(got.body, got))


def _unclocked(body: bytes, message: Message) -> bytes:
    """A gzip body carries its compression time (MTIME, bytes 4-8): not a change."""
    if message.get(b"content-encoding") == b"gzip" and body[:2] == b"\x1f\x8b":
        return body[:4] + b"\0\0\0\0" + body[8:]
    return body


@dataclass
class Rewrite:
    origin: bytes
    path: bytes
    route: bytes

    def apply(self, value: bytes) -> bytes:
        rest = value
        if not value.startswith(b"/") or value.startswith(b"//"):
            if not value.lower().startswith(self.origin):
                return value
            rest = value[len(self.origin) :]
        if not rest.startswith(self.path) or rest[len(self.path) : len(self.path) + 1] not in (
            b"/",
            b"?",
            b"#",
            b"",
        ):
            return value
        return self.route + rest[len(self.path) :]


# -- the cases ----------------------------------------------------------------------
@dataclass
class Case:
    name: str
    target: str  # the API's target; through the relay, the part after .../proxy
    method: str = "GET"
    fields: Fields = field(default_factory=list)
    body: bytes = b""
    framing: str = "length"  # "length", "chunked" (in 3 pieces) or "none"
    version: bytes = b"HTTP/1.1"
    based: bool = False  # through the connection whose base URI has a path and query
    expect_status: int | None = None  # through the relay, when it differs (documented)

    def raw(self, target: str, host: bytes, extra: Fields) -> bytes:
        head = [b"%s %s %s" % (self.method.encode(), target.encode(), self.version)]
        head.append(b"Host: " + host)
        head += [b"%s: %s" % f for f in extra + self.fields]
        body = self.body
        if self.framing == "length" and (body or self.method in ("POST", "PUT", "PATCH")):
            head.append(b"Content-Length: %d" % len(body))
        elif self.framing == "chunked":
            head.append(b"Transfer-Encoding: chunked")
            third = max(1, len(body) // 3)
            pieces = [body[i : i + third] for i in range(0, len(body), third)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
        return b"\r\n".join(head) + b"\r\n\r\n" + body


BASE_PATH = "/anything/base"
BASE_QUERY = "v=1"


def cases() -> list[Case]:
    big = bytes(range(256)) * 400  # 100 KiB
    huge = b"0123456789abcdef" * (256 * 1024)  # 4 MiB
    c: list[Case] = []
    # repeated fields
    for path in ("/anything", "/headers", "/cookies"):
        c += [
            Case(f"cookie twice {path}", path, fields=[(b"Cookie", b"a=1"), (b"Cookie", b"b=2")]),
            Case(
                f"accept twice {path}",
                path,
                fields=[(b"Accept", b"text/html"), (b"Accept", b"*/*")],
            ),
            Case(
                f"forwarded-for twice {path}",
                path,
                fields=[(b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-For", b"10.0.0.2")],
            ),
            Case(
                f"three of one, mixed case {path}",
                path,
                fields=[(b"X-A", b"1"), (b"x-a", b"2"), (b"X-a", b"3")],
            ),
        ]
    c += [
        Case(
            "field order kept",
            "/anything",
            fields=[(b"Z-Last", b"z"), (b"A-First", b"a"), (b"M", b"m")],
        ),
        Case("empty value", "/anything", fields=[(b"X-Empty", b"")]),
        Case("value with spaces", "/anything", fields=[(b"X-Sp", b"a  b\tc")]),
        Case("8 KB field", "/anything", fields=[(b"X-Big", b"v" * 8000)]),
        Case("60 fields", "/anything", fields=[(b"X-F%d" % i, b"%d" % i) for i in range(60)]),
        Case("user agent of the caller", "/user-agent", fields=[(b"User-Agent", b"caller/1.0")]),
        Case("accept-encoding identity", "/anything", fields=[(b"Accept-Encoding", b"identity")]),
        Case(
            "content-type of the caller",
            "/anything",
            method="POST",
            body=b"a=1",
            fields=[(b"Content-Type", b"application/x-www-form-urlencoded")],
        ),
    ]
    # obs-text and bytes
    c += [
        Case("obs-text request value", "/anything", fields=[(b"X-Latin", b"caf\xe9")]),
        Case("utf-8 request value", "/headers", fields=[(b"X-Utf8", "café".encode())]),
        Case("high bytes", "/anything", fields=[(b"X-High", bytes(range(0x80, 0x100)))]),
        Case("obs-text answer value", "/response-headers?X-Latin=caf%C3%A9"),
        Case("obs-text answer, two", "/response-headers?X-L=%C3%BF&X-L=%C3%A0"),
    ]
    # framing
    c += [
        Case("post small", "/anything", method="POST", body=b'{"a": 1}'),
        Case("post 100 KiB", "/anything", method="POST", body=big),
        Case("post 4 MiB", "/anything", method="POST", body=huge),
        Case("post empty with length", "/anything", method="POST"),
        Case("post no framing", "/anything", method="POST", framing="none"),
        Case("get with length 0", "/anything", fields=[(b"Content-Length", b"0")], framing="none"),
        Case("get with a body", "/anything", body=b"x=1"),
        Case("put", "/anything", method="PUT", body=b"put-body"),
        Case("patch", "/anything", method="PATCH", body=b"patch-body"),
        Case("delete with a body", "/anything", method="DELETE", body=b"gone"),
        Case("options", "/anything", method="OPTIONS"),
        Case(
            "post chunked small",
            "/anything",
            method="POST",
            body=b"chunk-chunk-chunk",
            framing="chunked",
        ),
        Case("post chunked 100 KiB", "/anything", method="POST", body=big, framing="chunked"),
        Case("put chunked", "/anything", method="PUT", body=b"abcdefghi", framing="chunked"),
        Case(
            "post 70 KiB with expect",
            "/anything",
            method="POST",
            body=big[:70000],
            fields=[(b"Expect", b"100-continue")],
        ),
        Case(
            "post small with expect",
            "/anything",
            method="POST",
            body=b"e",
            fields=[(b"Expect", b"100-continue")],
        ),
        Case("http/1.0 get", "/get", version=b"HTTP/1.0"),
        Case("http/1.0 post", "/anything", method="POST", body=b"old", version=b"HTTP/1.0"),
    ]
    # request-targets
    for target in (
        "/anything?",
        "/anything/",
        "/anything/a%2Fb",
        "/anything/%25",
        "/anything/%2525",
        "/anything/?x=1",
        "/anything?a=1&a=2",
        "/anything?q=%20",
        "/anything?x=%E9",
        "/anything/a;b=c",
        "/anything/~user/a+b",
        "/anything/{x}|[y]",
        "/anything?a=&b",
        "/anything//double",
        "/anything/./dot/../seg",
        "/anything?&&",
    ):
        c.append(Case(f"target {target}", target))
    for tail, direct in (
        ("", f"{BASE_PATH}?{BASE_QUERY}"),
        ("/", f"{BASE_PATH}/?{BASE_QUERY}"),
        ("?", f"{BASE_PATH}?{BASE_QUERY}"),
        ("/x/", f"{BASE_PATH}/x/?{BASE_QUERY}"),
        ("/x?y=2", f"{BASE_PATH}/x?{BASE_QUERY}&y=2"),
        ("/a%2Fb?c=%25", f"{BASE_PATH}/a%2Fb?{BASE_QUERY}&c=%25"),
    ):
        c.append(
            Case(
                f"based target {tail!r}",
                direct,
                based=True,
                fields=[(b"X-Tail", tail.encode() or b"-")],
            )
        )
    # hop-by-hop
    c += [
        Case(
            "connection-named field",
            "/anything",
            fields=[(b"Connection", b"X-Hop"), (b"X-Hop", b"1")],
        ),
        Case(
            "connection names two",
            "/anything",
            fields=[
                (b"Connection", b"x-one, X-Two"),
                (b"X-One", b"1"),
                (b"X-Two", b"2"),
                (b"X-Three", b"3"),
            ],
        ),
        Case("keep-alive", "/anything", fields=[(b"Keep-Alive", b"timeout=5")]),
        Case("te trailers", "/anything", fields=[(b"TE", b"trailers")]),
        Case("proxy-connection", "/anything", fields=[(b"Proxy-Connection", b"keep-alive")]),
        Case("connection close", "/anything", fields=[(b"Connection", b"close")]),
    ]
    # upgrades: the relay answers 501 upgrade_not_supported
    c += [
        Case(
            "upgrade websocket",
            "/anything",
            expect_status=501,
            fields=[
                (b"Connection", b"Upgrade"),
                (b"Upgrade", b"websocket"),
                (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                (b"Sec-WebSocket-Version", b"13"),
            ],
        ),
        Case(
            "upgrade h2c",
            "/anything",
            expect_status=501,
            fields=[
                (b"Connection", b"Upgrade, HTTP2-Settings"),
                (b"Upgrade", b"h2c"),
                (b"HTTP2-Settings", b"AAMAAABkAAQCAAAAAAIAAAAA"),
            ],
        ),
        Case("upgrade field without connection", "/anything", fields=[(b"Upgrade", b"websocket")]),
    ]
    # redirects
    c += [
        Case("redirect relative", "/redirect/1"),
        Case("redirect absolute", "/absolute-redirect/1"),
        Case("redirect relative-redirect", "/relative-redirect/2"),
        Case("redirect to another host", "/redirect-to?url=http%3A%2F%2Fexample.invalid%2Fx"),
        Case("redirect to a path", "/redirect-to?url=%2Fanything%2Fthere"),
        Case(
            "redirect 307", "/redirect-to?url=%2Fanything&status_code=307", method="POST", body=b"k"
        ),
        Case("redirect 308", "/redirect-to?url=%2Fget&status_code=308"),
        Case("content-location", "/response-headers?Content-Location=%2Fanything%2Fcl"),
        Case("redirect to a sibling prefix", "/redirect-to?url=%2Fanythingelse"),
        Case("cookies set", "/cookies/set?a=1&b=2"),
    ]
    # compression
    c += [
        Case("gzip", "/gzip", fields=[(b"Accept-Encoding", b"gzip")]),
        Case("gzip unasked", "/gzip"),
        Case("deflate", "/deflate", fields=[(b"Accept-Encoding", b"deflate")]),
        Case("brotli", "/brotli", fields=[(b"Accept-Encoding", b"br")]),
        Case("no accept-encoding", "/headers"),
        Case("utf-8 page", "/encoding/utf8"),
    ]
    # HEAD
    c += [
        Case("head get", "/get", method="HEAD"),
        Case("head bytes", "/bytes/100?seed=1", method="HEAD"),
        Case("head 404", "/status/404", method="HEAD"),
        Case("head stream", "/stream-bytes/1000?seed=1", method="HEAD"),
        Case("head large", "/bytes/90000?seed=2", method="HEAD"),
        Case("head with a body", "/anything", method="HEAD", body=b"ignored?"),
        Case("head chunked body", "/anything", method="HEAD", body=b"abc", framing="chunked"),
    ]
    # statuses
    for status in (
        200,
        201,
        202,
        204,
        205,
        206,
        304,
        400,
        401,
        403,
        404,
        405,
        410,
        418,
        429,
        500,
        502,
        503,
        599,
    ):
        c.append(Case(f"status {status}", f"/status/{status}"))
    # bodies and the rest
    c += [
        Case("bytes 100 KiB", "/bytes/102400?seed=7"),
        Case("stream-bytes 500 KB chunked", "/stream-bytes/500000?seed=3&chunk_size=8192"),
        Case("stream json", "/stream/5"),
        Case("range", "/range/1000", fields=[(b"Range", b"bytes=10-99")]),
        Case("range beyond", "/range/100", fields=[(b"Range", b"bytes=500-600")]),
        Case("etag match", "/etag/abc", fields=[(b"If-None-Match", b'"abc"')]),
        Case("etag no match", "/etag/abc", fields=[(b"If-None-Match", b'"zzz"')]),
        Case(
            "many answer fields",
            "/response-headers?" + "&".join(f"X-R{i}=v{i}" for i in range(120)),
        ),
        Case("set-cookie repeated", "/response-headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2"),
        # gunicorn reads request lines up to 4094 bytes: the longest answer field it can echo.
        Case("4 KB answer field", "/response-headers?X-Long=" + "w" * 4000),
        Case("base64", "/base64/SFRUUEJJTiBpcyBhd2Vzb21l"),
        Case("json", "/json"),
        Case("xml", "/xml"),
        Case("html", "/html"),
        Case("robots", "/robots.txt"),
        Case("deny", "/deny"),
        Case("image", "/image/png"),
        Case("cache", "/cache", fields=[(b"If-Modified-Since", b"Mon, 02 Jan 2006 15:04:05 GMT")]),
        Case("ip", "/ip"),
        Case(
            "headers, form post",
            "/post",
            method="POST",
            body=b"x=1&y=2",
            fields=[(b"Content-Type", b"application/x-www-form-urlencoded")],
        ),
        Case("delete", "/delete", method="DELETE"),
        Case(
            "put json",
            "/put",
            method="PUT",
            body=b'{"k": "v"}',
            fields=[(b"Content-Type", b"application/json")],
        ),
        Case(
            "patch form",
            "/patch",
            method="PATCH",
            body=b"a=b",
            fields=[(b"Content-Type", b"application/x-www-form-urlencoded")],
        ),
    ]
    return c


CASES = cases()


# -- running them -------------------------------------------------------------------
@dataclass
class Route:
    mode: str
    conn_id: str
    based: bool


@dataclass
class Tally:
    sent: int = 0
    differences: list[str] = field(default_factory=list)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(relay_settings(tmp_path, allow_private_destinations=True))
    remember_secret(relay.admin_token)
    try:
        yield relay
    finally:
        await relay.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[BytePipe]:
    async for port in httpbin_server.httpbin(tmp_path / "httpbin.log"):
        async for pipe in byte_pipe("127.0.0.1", port):
            yield pipe


async def _connection(client: APIClient, mode: str, base_uri: str, agent_id: str | None) -> str:
    body: dict[str, object] = {
        "name": f"{mode}-{len(base_uri)}",
        "mode": mode,
        "http": {"base_uri": base_uri, "media_type": "json"},
    }
    if agent_id is not None:
        body["agent_id"] = agent_id
    answer = await client.call("POST", "/v1/connections", json_body=body)
    assert answer.status == 201, answer.text
    return str(answer.body["id"])


async def _routes(client: APIClient, api: BytePipe, start_agent: AgentFactory) -> list[Route]:
    _, token = await start_agent([f"127.0.0.1:{api.listen_port}"])
    plain = f"http://127.0.0.1:{api.listen_port}"
    based = f"{plain}{BASE_PATH}?{BASE_QUERY}"
    routes = []
    for mode, agent in (("cloud", None), ("on_premise", token.agent_id)):
        routes.append(Route(mode, await _connection(client, mode, plain, agent), False))
        routes.append(Route(mode, await _connection(client, mode, based, agent), True))
    return routes


def _diff(what: str, want: Message, got: Message) -> str | None:
    if want.start != got.start:
        return f"{what} start line: want {want.start!r}, got {got.start!r}"
    if want.fields != got.fields:
        return f"{what} fields:\n  want {want.fields!r}\n  got  {got.fields!r}"
    if want.body != got.body:
        return (
            f"{what} body: want {len(want.body)} bytes {want.body[:80]!r}, "
            f"got {len(got.body)} bytes {got.body[:80]!r}"
        )
    return None


def _framing_kept(direct: Message, relayed: Message, *, head: bool, version: bytes) -> str | None:
    """A2: the same Content-Length; chunked stays chunked; a body that ends
    with the connection goes chunked to an HTTP/1.1 caller; 204 and 304
    carry no length."""
    if direct.status in (204, 304) or direct.status < 200:
        return None if relayed.get(b"content-length") is None else "a length on a bodiless answer"
    if direct.framing == "length" and relayed.get(b"content-length") != direct.get(
        b"content-length"
    ):
        was, now = direct.get(b"content-length"), relayed.get(b"content-length")
        return f"Content-Length {was!r} became {now!r}"
    if (
        direct.framing != "length"
        and not head
        and version == b"HTTP/1.1"
        and relayed.framing != "chunked"
    ):
        return f"{direct.framing} framing became {relayed.framing}"
    return None


async def _send(
    api: BytePipe, port: int, raw: bytes, *, head: bool
) -> tuple[bytes, list[Recording]]:
    """The answer to *raw* sent to 127.0.0.1:*port*, and the connections the
    API saw meanwhile, whole (requests go one at a time; gunicorn closes
    every connection after its answer)."""
    before = len(api.connections)
    answer = await exchange(port, raw, head=head)
    new = api.connections[before:]
    for recording in new:
        await asyncio.wait_for(recording.closed.wait(), 20)
    return answer, new


async def _run_case(
    case: Case, route: Route, relay: Relay, api: BytePipe, conn_base: Rewrite, tally: Tally
) -> None:
    host = b"127.0.0.1:%d" % api.listen_port
    head = case.method == "HEAD"
    name = f"[{route.mode}] {case.name}"
    # Directly.
    _, seen = await _send(api, api.listen_port, case.raw(case.target, host, []), head=head)
    assert len(seen) == 1, name
    direct_sent = parse_request(bytes(seen[0].upstream))
    # Through the relay.
    tail = case.target
    if case.based:
        tail = next(t for n, t in case.fields if n == b"X-Tail").decode()
        tail = "" if tail == "-" else tail
    relay_raw = case.raw(
        f"/v1/connections/{route.conn_id}/proxy{tail}",
        b"relay.test",
        [(b"Authorization", f"Bearer {relay.admin_token}".encode())],
    )
    relayed_raw, seen = await _send(api, relay.http_address[1], relay_raw, head=head)
    tally.sent += 1
    if b"\r\n\r\n" not in relayed_raw:
        tally.differences.append(f"{name}: no answer ({relayed_raw[:100]!r})")
        return
    relayed = parse_answer(relayed_raw, head=head)
    if case.expect_status is not None:
        # Documented (R5): an Upgrade request is answered 501 by the relay.
        if relayed.status != case.expect_status or b"upgrade_not_supported" not in relayed.body:
            tally.differences.append(f"{name}: {relayed.start!r} {relayed.body[:200]!r}")
        if seen:
            tally.differences.append(f"{name}: an upgrade request reached the API")
        return
    if len(seen) != 1:
        tally.differences.append(
            f"{name}: the API saw {len(seen)} connections: {relayed_raw[:300]!r}"
        )
        return
    # A5: the only 1xx a caller gets is the relay's own 100 Continue, to an Expect.
    expects = any(n.lower() == b"expect" for n, _ in case.fields)
    allowed_interim = [b"HTTP/1.1 100 Continue\r\n\r\n"] if expects else []
    if relayed.interim not in (allowed_interim, []):
        tally.differences.append(f"{name}: interim answers {relayed.interim!r}")
        return
    api_bytes = bytes(seen[0].upstream)
    problem = _diff(
        "request", expected_request(direct_sent), normalised_request(parse_request(api_bytes))
    )
    if problem:
        tally.differences.append(f"{name}: {problem}")
        return
    # The API's answer to exactly those bytes, directly.
    again, _ = await _send(api, api.listen_port, api_bytes, head=head)
    direct_answer = parse_answer(again, head=head)
    version = b"HTTP/1.0" if case.version == b"HTTP/1.0" else b"HTTP/1.1"
    want_answer = normalised_answer(
        expected_answer(direct_answer, route.conn_id, conn_base, version), head=head
    )
    problem = _diff("answer", want_answer, normalised_answer(relayed, head=head))
    problem = problem or _framing_kept(direct_answer, relayed, head=head, version=version)
    if problem:
        tally.differences.append(f"{name}: {problem}")


async def test_the_proxy_changes_only_what_is_documented(
    relay: Relay, client: APIClient, api: BytePipe, start_agent: AgentFactory
) -> None:
    routes = await _routes(client, api, start_agent)
    tallies: dict[str, Tally] = {"cloud": Tally(), "on_premise": Tally()}
    origin = b"http://127.0.0.1:%d" % api.listen_port
    for route in routes:
        rewrite = Rewrite(
            origin,
            BASE_PATH.encode() if route.based else b"",
            f"/v1/connections/{route.conn_id}/proxy".encode(),
        )
        for case in CASES:
            if case.based != route.based:
                continue
            await _run_case(case, route, relay, api, rewrite, tallies[route.mode])
    report = {mode: (t.sent, len(t.differences)) for mode, t in tallies.items()}
    print(f"differential: {len(CASES)} cases; (requests sent, differences) per mode: {report}")
    assert len(CASES) >= 100
    for mode, tally in tallies.items():
        assert not tally.differences, (
            f"{mode}: {len(tally.differences)} undocumented differences:\n"
            + "\n".join(tally.differences)
        )


async def test_cloud_mode_in_the_relay_process(tmp_path: Path, api: BytePipe) -> None:
    """The sluice-server process (uvloop, whose TCP transports are no
    asyncio.Transport) sends a cloud request's head as it should."""
    process = RelayProcess(
        tmp_path / "relay-process",
        tmp_path / "relay-process.log",
        allow_private_destinations="true",
    )
    await process.start()
    remember_secret(process.admin_token)
    try:
        async with aiohttp.ClientSession() as session:
            client = APIClient(session, process.base, process.admin_token)
            conn_id = await _connection(
                client, "cloud", f"http://127.0.0.1:{api.listen_port}", None
            )
            case = Case("cookies", "/cookies?", fields=[(b"Cookie", b"a=1"), (b"Cookie", b"b=2")])
            raw = case.raw(
                f"/v1/connections/{conn_id}/proxy/cookies?",
                b"relay.test",
                [(b"Authorization", f"Bearer {process.admin_token}".encode())],
            )
            answer, seen = await _send(api, process.http_port, raw, head=False)
    finally:
        await process.stop()
    assert parse_answer(answer).status == 200, answer[:300]
    (recording,) = seen
    sent = parse_request(bytes(recording.upstream))
    assert sent.start == b"GET /cookies? HTTP/1.1"
    assert [v for n, v in sent.fields if n == b"Cookie"] == [b"a=1", b"b=2"]


@pytest.mark.parametrize("mode", ["cloud", "on_premise"])
async def test_the_connections_own_fields_replace_the_callers(
    relay: Relay, client: APIClient, api: BytePipe, start_agent: AgentFactory, mode: str
) -> None:
    """R3: configured headers and auth replace the caller's fields of those
    names (every one of them); the caller's other fields keep their order."""
    token = "conn-token-" + "k" * 16
    remember_secret(token)
    agent_id = None
    if mode == "on_premise":
        _, agent_token = await start_agent([f"127.0.0.1:{api.listen_port}"])
        agent_id = agent_token.agent_id
    body: dict[str, object] = {
        "name": "owned",
        "mode": mode,
        "http": {
            "base_uri": f"http://127.0.0.1:{api.listen_port}",
            "media_type": "json",
            "headers": [{"name": "X-Tenant", "value": "acme"}],
            "auth": {"type": "token", "token": token, "header_name": "X-Api-Key"},
        },
        **({"agent_id": agent_id} if agent_id else {}),
    }
    answer = await client.call("POST", "/v1/connections", json_body=body)
    assert answer.status == 201, answer.text
    case = Case(
        "owned",
        "/headers",
        fields=[
            (b"x-tenant", b"other"),
            (b"X-First", b"1"),
            (b"X-Api-Key", b"mine"),
            (b"X-Tenant", b"again"),
            (b"Accept", b"text/plain"),
        ],
    )
    raw = case.raw(
        f"/v1/connections/{answer.body['id']}/proxy/headers",
        b"relay.test",
        [(b"Authorization", f"Bearer {relay.admin_token}".encode())],
    )
    relayed, seen = await _send(api, relay.http_address[1], raw, head=False)
    assert parse_answer(relayed).status == 200
    (recording,) = seen
    got = normalised_request(parse_request(bytes(recording.upstream)))
    assert got.fields == [
        (b"Host", b"127.0.0.1:%d" % api.listen_port),
        (b"X-First", b"1"),
        (b"Accept", b"text/plain"),
        (b"X-Tenant", b"acme"),
        (b"X-Api-Key", token.encode()),
        (b"Content-Type", MEDIA_TYPE),
        (b"User-Agent", b"<sluice>"),
    ]
