"""The front's fast path (``server.proxy.fast_path``) at its boundaries, on
the real relay and agent: a warmed connection (settings cached, an idle
kept-alive stream) sends its next request from the caller's callback, and
every case it does not own still gets what the general path gives.

Proxy requests go on their own caller connections: one that carried an API
call belongs to aiohttp's route from then on, and never reaches the front's
paths (``server.proxy.front``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import AgentFactory
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.raw_api import raw_api
from tests.support.waiting import wait_until

TOKEN = "front-fast-token-" + "k" * 16


async def _connection(client: APIClient, base: str, agent_id: str, **http: Any) -> str:
    remember_secret(TOKEN)
    document = {
        "name": "front fast path",
        "mode": "on_premise",
        "agent_id": agent_id,
        "http": {
            "base_uri": base,
            "auth": {"type": "token", "token": TOKEN, "scheme": "Bearer"},
            **http,
        },
    }
    answer = await client.call("POST", "/v1/connections", json_body=document)
    assert answer.status == 201, answer.text
    return str(answer.body["id"])


@pytest.fixture
async def caller(client: APIClient) -> AsyncIterator[APIClient]:
    """The admin's client on connections of its own: proxy requests only."""
    async with aiohttp.ClientSession() as session:
        yield APIClient(session, client.base, client.token)


@pytest.mark.parametrize(("method", "sent_again"), [("GET", True), ("POST", False)])
async def test_a_kept_alive_stream_that_closes_unanswered(
    client: APIClient, caller: APIClient, start_agent: AgentFactory, method: str, sent_again: bool
) -> None:
    """The API reads the request on a kept-alive connection and closes it
    without a word. An idempotent request is sent again on a new stream (the
    caller never sees the stale one); any other gets the definite
    ``tunnel_lost`` error and reaches the API once, as on the general path."""
    # Keyed by the writer itself, not id(writer): a closed connection's
    # writer, once freed, may leave its id to the next one, which then looked
    # like a connection that had served already (1 run in 14 failed).
    served: dict[asyncio.StreamWriter, int] = {}

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        count = served[writer] = served.get(writer, 0) + 1
        if count > 1:
            return False  # read, never answered: closed
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b'{"ok":true}')
        await writer.drain()
        return True

    async for raw in raw_api(answer):
        _, token = await start_agent([f"127.0.0.1:{raw.port}"])
        conn_id = await _connection(client, f"http://127.0.0.1:{raw.port}", token.agent_id)
        proxy = f"/v1/connections/{conn_id}/proxy/x"
        warm = await caller.call(method, proxy, data=b"{}" if method == "POST" else None)
        assert warm.status == 200, warm.text  # the stream is idle, the settings cached
        got = await caller.call(method, proxy, data=b"{}" if method == "POST" else None)
        sent = [r for r in raw.requests if r.startswith(method.encode())]
        if sent_again:
            assert (got.status, got.body) == (200, {"ok": True})
            assert len(sent) == 3  # the warm one, the unanswered one, the one sent again
            assert raw.connections == 2
        else:
            assert got.status == 502, got.text
            assert got.body["type"].endswith("tunnel_lost"), got.body
            assert len(sent) == 2  # the warm one and the unanswered one: never twice
        after = await caller.call("GET", proxy)
        assert after.status == 200, after.text  # the caller's connection and the relay serve on


async def test_a_capped_connection_stays_capped_when_warm(
    client: APIClient, caller: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    """concurrency_level 1: with the settings cached and an idle stream there,
    a second request while the first runs still waits for the one slot."""
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(
        client, api.base, token.agent_id, concurrency_level=1, queue_timeout_seconds=0.3
    )
    proxy = f"/v1/connections/{conn_id}/proxy"
    warm = await caller.call("GET", f"{proxy}/hello")
    assert warm.status == 200
    slow = asyncio.ensure_future(caller.call("GET", f"{proxy}/slow?s=3"))
    try:
        await wait_until(lambda: any(s.path == "/slow" for s in api.seen), what="the slow one")
        queued = await caller.call("GET", f"{proxy}/hello")
        assert queued.status == 503, queued.text
        assert queued.body["type"].endswith("concurrency_limited"), queued.body
        assert (await slow).status == 200
    finally:
        slow.cancel()


async def test_a_warm_connection_still_checks_the_caller(
    client: APIClient, caller: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(client, api.base, token.agent_id)
    proxy = f"{client.base}/v1/connections/{conn_id}/proxy/hello"
    warm = await caller.call("GET", f"/v1/connections/{conn_id}/proxy/hello")
    assert warm.status == 200
    seen = len(api.seen)
    for authorization in (None, "Bearer not-the-admin-token", f"Basic {client.token}"):
        headers = {} if authorization is None else {"Authorization": authorization}
        async with caller.session.get(proxy, headers=headers) as resp:
            assert resp.status == 401, authorization
            assert (await resp.json())["type"].endswith("unauthorized")
    assert len(api.seen) == seen  # none of them reached the API


async def test_a_debug_window_opened_on_a_warm_connection_records_its_requests(
    client: APIClient, caller: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(client, api.base, token.agent_id)
    proxy = f"/v1/connections/{conn_id}/proxy"
    for i in range(3):
        warm = await caller.call("GET", f"{proxy}/hello?before={i}")
        assert warm.status == 200  # no window: not recorded
    started = await client.call(
        "POST", f"/v1/connections/{conn_id}/debug", json_body={"minutes": 5}
    )
    assert started.status == 200, started.text
    for i in range(3):
        got = await caller.call("GET", f"{proxy}/hello?during={i}")
        assert got.status == 200
    log = await client.call("GET", f"/v1/connections/{conn_id}/debug-log")
    assert log.status == 200, log.text
    urls = [entry["request"]["url"] for entry in log.body["entries"]]
    assert urls == [f"{api.base}/hello?during={i}" for i in (2, 1, 0)]  # newest first
    assert all(TOKEN not in json.dumps(entry) for entry in log.body["entries"])


async def test_an_edit_reaches_the_next_request_of_a_repeated_head(
    client: APIClient, caller: APIClient, start_agent: AgentFactory
) -> None:
    """The fast path makes a request's outbound head once and sends it again
    for the same caller head (``server.proxy.prepared``). An edit of the
    connection must show in the very next request's head on the wire: first
    one that leaves the request's target and credentials as they were (a
    configured header, the media type), then one that changes them."""
    new_token = "front-fast-edited-" + "m" * 16
    remember_secret(new_token)

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b'{"ok":true}')
        await writer.drain()
        return True

    async def edited(http: dict[str, Any]) -> bytes:
        """The head the API got, the same on the requests after the edit (the
        first reads the settings again, the next find them cached, the last
        is sent with the head made for the second)."""
        patched = await client.call("PATCH", f"/v1/connections/{conn_id}", json_body={"http": http})
        assert patched.status == 200, patched.text
        for _ in range(4):
            got = await caller.call("GET", proxy)
            assert got.status == 200, got.text
        assert raw.requests[-4:] == [raw.requests[-1]] * 4
        return raw.requests[-1]

    async for raw in raw_api(answer):
        _, token = await start_agent([f"127.0.0.1:{raw.port}"])
        conn_id = await _connection(
            client,
            f"http://127.0.0.1:{raw.port}/v1",
            token.agent_id,
            headers=[{"name": "X-Tenant", "value": "acme"}],
        )
        proxy = f"/v1/connections/{conn_id}/proxy/items?page=2"
        for _ in range(4):  # the same head each time, on one caller connection
            got = await caller.call("GET", proxy)
            assert got.status == 200, got.text
        before = raw.requests[-1]
        assert before.startswith(b"GET /v1/items?page=2 HTTP/1.1\r\n"), before
        assert b"\r\nX-Tenant: acme\r\n" in before
        assert b"\r\nContent-Type: application/json\r\n" in before
        assert f"\r\nAuthorization: Bearer {TOKEN}\r\n".encode() in before
        assert raw.requests[-4:] == [before] * 4

        after = await edited(
            {"headers": [{"name": "X-Tenant", "value": "beta"}], "media_type": "xml"}
        )
        assert after.startswith(b"GET /v1/items?page=2 HTTP/1.1\r\n"), after
        assert b"\r\nX-Tenant: beta\r\n" in after
        assert b"\r\nContent-Type: application/xml\r\n" in after
        assert b"acme" not in after
        assert b"application/json" not in after

        after = await edited(
            {
                "base_uri": f"http://127.0.0.1:{raw.port}/v2",
                "auth": {"type": "token", "token": new_token, "scheme": "Token"},
            }
        )
        assert after.startswith(b"GET /v2/items?page=2 HTTP/1.1\r\n"), after
        assert f"\r\nAuthorization: Token {new_token}\r\n".encode() in after
        assert b"\r\nX-Tenant: beta\r\n" in after
        assert TOKEN.encode() not in after


async def test_a_rotated_admin_token_is_refused_on_a_warm_caller_connection(
    client: APIClient, caller: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    """A caller's connection remembers the admin token it was admitted with
    (``FrontProtocol.admits``): a rotation without grace must end that at
    once, for the very next request on the same connection."""
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(client, api.base, token.agent_id)
    proxy = f"/v1/connections/{conn_id}/proxy/hello"
    for _ in range(3):
        assert (await caller.call("GET", proxy)).status == 200
    rotated = await client.call(
        "POST", "/v1/admin/rotate-token", json_body={"grace_seconds": 0}, shows_token=True
    )
    assert rotated.status == 200, rotated.text
    new = rotated.body["token"]
    remember_secret(new)
    client.token = new
    seen = len(api.seen)
    refused = await caller.call("GET", proxy)
    assert refused.status == 401, refused.text
    assert refused.body["type"].endswith("unauthorized")
    assert len(api.seen) == seen  # it never reached the API
    caller.token = new
    for _ in range(2):
        assert (await caller.call("GET", proxy)).status == 200
    assert len(api.seen) == seen + 2
