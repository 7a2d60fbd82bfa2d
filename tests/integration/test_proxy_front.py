"""The relay's HTTP front (``server.proxy.front``) byte by byte: proxy requests
served off the socket, everything else handed to aiohttp mid-connection,
pipelining, bodies in pieces, refusals, idle and draining connections."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI, noise
from tests.support.capture import APIClient, remember_secret
from tests.support.raw_api import raw_api
from tests.support.waiting import wait_until

TOKEN = "front-token-" + "r" * 16
MAX_BODY = 400_000
IDLE = 1.5


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(
        relay_settings(tmp_path, max_body_bytes=MAX_BODY, http_idle_timeout=IDLE, drain_timeout=10)
    )
    remember_secret(relay.admin_token)
    try:
        yield relay
    finally:
        await relay.close()


class Raw:
    """One keep-alive connection to the relay, written and read as bytes."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.token = token
        self.head = b""

    def request(
        self, method: str, target: str, body: bytes = b"", *, auth: bool = True, extra: str = ""
    ) -> bytes:
        head = f"{method} {target} HTTP/1.1\r\nHost: relay\r\n"
        if auth:
            head += f"Authorization: Bearer {self.token}\r\n"
        if body or method in ("POST", "PUT"):
            head += f"Content-Length: {len(body)}\r\n"
        return (head + extra + "\r\n").encode() + body

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        head = self.head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 20)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {
            k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            await self.reader.readexactly(2)
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def closed(self) -> bool:
        """True when the relay closed the connection (EOF within 10 s)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 10) == b""
        except ConnectionError:
            return True


@pytest.fixture
async def raw(relay: Relay) -> AsyncIterator[Raw]:
    host, port = relay.http_address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield Raw(reader, writer, relay.admin_token)
    finally:
        writer.close()


async def _connection(client: APIClient, api: InternalAPI | int, start_agent: AgentFactory) -> str:
    """An agent allowed to reach *api* (or a port on 127.0.0.1), and a connection."""
    port = api if isinstance(api, int) else api.port
    _, token = await start_agent([f"127.0.0.1:{port}"])
    remember_secret(TOKEN)
    answer = await client.call(
        "POST",
        "/v1/connections",
        json_body={
            "name": "front",
            "mode": "on_premise",
            "agent_id": token.agent_id,
            "http": {
                "base_uri": f"http://127.0.0.1:{port}",
                "media_type": "json",
                "auth": {"type": "token", "token": TOKEN, "location": "header"},
            },
        },
    )
    assert answer.status == 201, answer.text
    return str(answer.body["id"])


def _only_tunnel(relay: Relay) -> Any:
    """The one agent tunnel a test started."""
    (tunnel,) = list(relay.registry)
    return tunnel


def _json(body: bytes) -> Any:
    return json.loads(body)


async def test_proxy_and_api_requests_share_one_connection(
    relay: Relay, raw: Raw, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    conn_id = await _connection(client, api, start_agent)
    proxy = f"/v1/connections/{conn_id}/proxy"
    raw.writer.write(raw.request("GET", f"{proxy}/hello?n=1"))
    status, headers, body = await raw.answer()
    assert status == 200
    assert _json(body) == {"hello": "world", "path": "/hello?n=1"}
    assert headers["sluice-connection"] == conn_id
    assert "date" in headers
    assert relay.front is not None
    assert len(relay.front.callers) == 1  # served by the front

    raw.writer.write(raw.request("GET", "/v1/agents"))
    status, _, body = await raw.answer()
    assert status == 200
    assert len(_json(body)["agents"]) == 1
    assert len(relay.front.callers) == 0  # handed to aiohttp for good

    raw.writer.write(raw.request("GET", f"{proxy}/hello?n=2"))
    status, headers, body = await raw.answer()
    assert (status, _json(body)["path"]) == (200, "/hello?n=2")
    assert headers["sluice-connection"] == conn_id


async def test_pipelined_requests_and_bodies_in_pieces(
    raw: Raw, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    conn_id = await _connection(client, api, start_agent)
    proxy = f"/v1/connections/{conn_id}/proxy"
    raw.writer.write(b"".join(raw.request("GET", f"{proxy}/hello?i={i}") for i in range(3)))
    for i in range(3):
        status, _, body = await raw.answer()
        assert (status, _json(body)["path"]) == (200, f"/hello?i={i}")

    payload = bytes(range(256)) * 1200  # 300 kB, more than arrives in one read
    request = raw.request("POST", f"{proxy}/echo", payload)
    after = raw.request("GET", f"{proxy}/hello?after=1")
    cut = len(request) - len(payload)
    pieces = [request[:cut], request[cut : cut + 1000], request[cut + 1000 :] + after]
    for piece in pieces:
        raw.writer.write(piece)
        await raw.writer.drain()
    status, _, body = await raw.answer()
    assert status == 200
    assert _json(body) == {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "method": "POST",
    }
    status, _, body = await raw.answer()
    assert (status, _json(body)["path"]) == (200, "/hello?after=1")
    assert api.seen[-2].headers["Content-Length"] == str(len(payload))


async def test_refusals_are_problem_documents(
    raw: Raw, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    conn_id = await _connection(client, api, start_agent)
    proxy = f"/v1/connections/{conn_id}/proxy"
    raw.writer.write(raw.request("GET", f"{proxy}/hello", auth=False))
    status, headers, body = await raw.answer()
    assert status == 401
    assert headers["content-type"] == "application/problem+json"
    assert headers["www-authenticate"] == 'Bearer realm="sluice"'
    assert _json(body)["type"] == "unauthorized"

    raw.writer.write(raw.request("GET", "/v1/connections/con_nosuchthing0000/proxy/x"))
    status, _, body = await raw.answer()
    assert (status, _json(body)["type"]) == (404, "not_found")

    # The connection is still good after both refusals.
    raw.writer.write(raw.request("GET", f"{proxy}/hello"))
    status, _, _ = await raw.answer()
    assert status == 200

    seen = len(api.seen)
    raw.writer.write(raw.request("POST", f"{proxy}/echo", b"x" * (MAX_BODY + 1)))
    status, headers, body = await raw.answer()
    assert (status, _json(body)["type"]) == (413, "body_too_large")
    assert headers["connection"] == "close"
    assert await raw.closed()
    assert len(api.seen) == seen  # nothing reached the API


async def test_connection_close_and_malformed_heads(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    conn_id = await _connection(client, api, start_agent)
    host, port = relay.http_address
    reader, writer = await asyncio.open_connection(host, port)
    conn = Raw(reader, writer, relay.admin_token)
    writer.write(
        conn.request("GET", f"/v1/connections/{conn_id}/proxy/hello", extra="Connection: close\r\n")
    )
    status, headers, _ = await conn.answer()
    assert (status, headers["connection"]) == (200, "close")
    assert await conn.closed()
    writer.close()

    # A head llhttp refuses (space before the colon) goes to aiohttp, which
    # refuses it too: a 400, never a request sent on.
    reader, writer = await asyncio.open_connection(host, port)
    seen = len(api.seen)
    writer.write(
        f"GET /v1/connections/{conn_id}/proxy/hello HTTP/1.1\r\n"
        f"Authorization: Bearer {relay.admin_token}\r\nBad Header : x\r\n\r\n".encode()
    )
    status, _, _ = await Raw(reader, writer, "").answer()
    assert status == 400
    assert len(api.seen) == seen
    writer.close()


async def test_idle_and_half_sent_heads_are_closed(relay: Relay) -> None:
    host, port = relay.http_address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /v1/connections/con_x/proxy/slow HTTP/1.1\r\nHost: r")  # never ends
    assert await Raw(reader, writer, "").closed()
    writer.close()
    reader, writer = await asyncio.open_connection(host, port)  # says nothing at all
    assert await Raw(reader, writer, "").closed()
    writer.close()


async def test_shutdown_lets_running_requests_finish_and_closes_idle_ones(
    relay: Relay, raw: Raw, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    conn_id = await _connection(client, api, start_agent)
    proxy = f"/v1/connections/{conn_id}/proxy"
    host, port = relay.http_address
    reader, writer = await asyncio.open_connection(host, port)
    idle = Raw(reader, writer, relay.admin_token)
    writer.write(idle.request("GET", f"{proxy}/hello"))
    assert (await idle.answer())[0] == 200

    raw.writer.write(raw.request("GET", f"{proxy}/slow?s=1"))
    await wait_until(lambda: any(s.path == "/slow" for s in api.seen), what="slow request")
    closing = asyncio.ensure_future(relay.close())
    assert await idle.closed()  # the idle connection goes at once
    status, headers, body = await raw.answer()
    assert (status, _json(body)) == (200, {"slow": True})
    assert headers["connection"] == "close"
    await closing
    writer.close()


async def test_a_caller_leaving_mid_answer_frees_the_stream(
    relay: Relay, raw: Raw, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    conn_id = await _connection(client, api, start_agent)
    proxy = f"/v1/connections/{conn_id}/proxy"
    raw.writer.write(raw.request("GET", f"{proxy}/blob/{64 * 1024 * 1024}"))
    await raw.reader.readuntil(b"\r\n\r\n")
    await raw.reader.readexactly(1024 * 1024)
    raw.writer.transport.abort()
    tunnel = _only_tunnel(relay)
    await wait_until(lambda: tunnel.in_flight == 0, timeout=10, what="stream released")
    answer = await client.call("GET", f"{proxy}/hello")
    assert answer.status == 200


async def test_a_caller_leaving_mid_upload_cuts_the_body_and_frees_its_connection(
    relay: Relay, raw: Raw, client: APIClient, start_agent: AgentFactory
) -> None:
    """The caller goes away halfway through its body: the API sees the body
    cut short, and the relay keeps nothing of the request (its body's sender
    ends, the connection is forgotten). The relay answers the failed request
    and closes the connection by a lingering close, whose half-close of a
    socket the caller has already reset raised ENOTCONN (asyncio's loop) and
    left the request's task dead with its connection registered and busy."""
    received = 0
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while received < length:
            piece = await reader.read(64 * 1024)
            if not piece:
                outcome.set_result("cut short")
                break
            received += len(piece)
        else:
            outcome.set_result("whole")
        writer.close()

    server = await asyncio.start_server(read_upload, "127.0.0.1", 0)
    try:
        conn_id = await _connection(client, server.sockets[0].getsockname()[1], start_agent)
        body = noise(MAX_BODY, seed=34)
        raw.writer.write(
            raw.request("PUT", f"/v1/connections/{conn_id}/proxy/up", body)[: -MAX_BODY // 2]
        )
        await raw.writer.drain()
        await wait_until(lambda: received >= MAX_BODY // 4, timeout=20, what="the upload under way")
        raw.writer.transport.abort()
        assert await asyncio.wait_for(outcome, 20) == "cut short"
        assert received <= MAX_BODY // 2

        def body_senders() -> list[asyncio.Task[object]]:
            return [
                t
                for t in asyncio.all_tasks()
                if "_send_body" in getattr(t.get_coro(), "__qualname__", "")
            ]

        await wait_until(lambda: not body_senders(), timeout=10, what="the body's sender ended")
        front = relay.front
        assert front is not None
        await wait_until(lambda: not front.callers, timeout=10, what="the caller forgotten")
    finally:
        server.close()


async def test_answer_heads_follow_the_status(
    raw: Raw, client: APIClient, start_agent: AgentFactory
) -> None:
    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        path = head.split(b" ", 2)[1]
        date = b"Date: Mon, 02 Jan 2006 15:04:05 GMT\r\n"
        if path == b"/none":
            writer.write(b"HTTP/1.1 204 No Content\r\n" + date + b"Content-Length: 0\r\n\r\n")
        elif path == b"/same":
            writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\n" + date + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async for api in raw_api(answer):
        conn_id = await _connection(client, api.port, start_agent)
        proxy = f"/v1/connections/{conn_id}/proxy"
        for path, status in (("/none", 204), ("/same", 304), ("/ok", 200)):
            raw.writer.write(raw.request("GET", proxy + path))
            got, headers, body = await raw.answer()
            assert got == status
            lines = raw.head.lower().split(b"\r\n")
            # The API's own Date, once (the relay's when the API sent none);
            # no length on answers that have no body.
            dates = [line for line in lines if line.startswith(b"date:")]
            assert len(dates) == 1, dates
            api_date = b"date: mon, 02 jan 2006 15:04:05 gmt"
            assert (dates[0] == api_date) == (path != "/same"), dates
            assert ("content-length" in headers) == (status == 200)
            assert body == (b"ok" if status == 200 else b"")


async def test_heads_aiohttp_would_refuse_are_refused(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    conn_id = await _connection(client, api, start_agent)
    target = f"/v1/connections/{conn_id}/proxy/hello"
    host, port = relay.http_address
    seen = len(api.seen)
    for extra in [
        "Content-Type: a/b\r\nContent-Type: c/d\r\n",
        "Host: other\r\n",  # a second Host
        "X-Big: " + "\u20ac" * 3000 + "\r\n",
    ]:  # 9000 bytes, 3000 characters
        reader, writer = await asyncio.open_connection(host, port)
        conn = Raw(reader, writer, relay.admin_token)
        writer.write(conn.request("GET", target, extra=extra).decode().encode("utf-8"))
        status, _, _ = await conn.answer()
        assert status in (400, 431), extra[:20]
        writer.close()
    assert len(api.seen) == seen  # none of them reached the API


async def test_an_api_answering_before_the_upload_ends_leaves_nothing_running(
    raw: Raw, client: APIClient, start_agent: AgentFactory
) -> None:
    answered = asyncio.Event()

    async def refuse_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await answered.wait()
        writer.write(b"0\r\n\r\n")  # the end of the answer, in a later packet
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse_early, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        conn_id = await _connection(client, port, start_agent)
        raw.writer.write(
            raw.request(
                "POST", f"/v1/connections/{conn_id}/proxy/up", b"x" * 100_000, extra=""
            ).replace(b"Content-Length: 100000", b"Content-Length: 300000")
        )
        assert (await raw.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 403")
        answered.set()
        rest = await asyncio.wait_for(raw.reader.read(), 10)  # until the relay closes
        assert rest == b"5\r\nhello\r\n0\r\n\r\n"

        def body_senders() -> list[asyncio.Task[object]]:
            return [
                t
                for t in asyncio.all_tasks()
                if "_send_body" in getattr(t.get_coro(), "__qualname__", "")
            ]

        await wait_until(lambda: not body_senders(), timeout=10, what="body sender ended")
    finally:
        server.close()


async def test_a_caller_that_stops_reading_is_cut(
    relay: Relay, raw: Raw, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    conn_id = await _connection(client, api, start_agent)
    raw.writer.write(raw.request("GET", f"/v1/connections/{conn_id}/proxy/blob/{256 * 2**20}"))
    await raw.reader.readuntil(b"\r\n\r\n")  # then reads nothing more
    tunnel = _only_tunnel(relay)
    await wait_until(lambda: tunnel.in_flight == 0, timeout=30, what="stream released")
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello")
    assert answer.status == 200


async def test_a_caller_that_stops_reading_is_cut_on_the_handed_on_route(
    relay: Relay, raw: Raw, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    """HTTP/1.0 goes to aiohttp's route; the same bound applies there."""
    conn_id = await _connection(client, api, start_agent)
    raw.writer.write(
        f"GET /v1/connections/{conn_id}/proxy/blob/{256 * 2**20} HTTP/1.0\r\n"
        f"Host: relay\r\nAuthorization: Bearer {raw.token}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 20)
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    tunnel = _only_tunnel(relay)
    await wait_until(lambda: tunnel.in_flight == 0, timeout=30, what="stream released")
    # What the socket still holds drains, then the relay's close shows: the
    # answer was cut, short of its 256 MiB.
    got = len(head)
    with contextlib.suppress(ConnectionError):
        while piece := await asyncio.wait_for(raw.reader.read(2**20), 10):
            got += len(piece)
    assert got < 256 * 2**20
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello")
    assert answer.status == 200
