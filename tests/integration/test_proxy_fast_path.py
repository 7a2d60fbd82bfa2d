"""The proxy route's fast path (kept-alive HTTP/1.1 streams through the agent)
against the real relay and agent: reuse, framing the API may choose, APIs
that misbehave, timeouts, bodies both ways, header injection."""

from __future__ import annotations

import asyncio
import hashlib
import io
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI, blob_sha256
from tests.support.capture import APIClient, remember_secret
from tests.support.raw_api import RawAPI, fixed_answer, raw_api
from tests.support.waiting import wait_until

MiB = 1024 * 1024
TOKEN = "fast-path-token-" + "f" * 16


def _auth(client: APIClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.token}"}


async def _connection(client: APIClient, base: str, agent_id: str, **http: Any) -> str:
    remember_secret(TOKEN)
    document = {
        "name": "fast path",
        "mode": "on_premise",
        "agent_id": agent_id,
        "http": {
            "base_uri": base,
            "media_type": "json",
            "auth": {
                "type": "token",
                "token": TOKEN,
                "location": "header",
                "header_name": "Authorization",
                "scheme": "Bearer",
            },
            **http,
        },
    }
    answer = await client.call("POST", "/v1/connections", json_body=document)
    assert answer.status == 201, answer.text
    return str(answer.body["id"])


async def _through_agent(raw: RawAPI, client: APIClient, start_agent: AgentFactory) -> str:
    """An agent allowed to reach *raw*, and an on-premise connection to it."""
    _, token = await start_agent([f"127.0.0.1:{raw.port}"])
    return await _connection(client, f"http://127.0.0.1:{raw.port}", token.agent_id)


async def _ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Content-Length: 11\r\n\r\n{"ok":true}'
    )
    await writer.drain()
    return True


async def test_sequential_requests_reuse_one_stream(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(client, api.base, token.agent_id)
    for i in range(20):
        answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello?i={i}")
        assert answer.status == 200
        assert answer.body == {"hello": "world", "path": f"/hello?i={i}"}
    (tunnel,) = relay.registry.replicas(token.agent_id)
    assert tunnel.streams_total == 1  # one CONNECT stream carried all twenty
    assert all(s.headers["Authorization"] == f"Bearer {TOKEN}" for s in api.seen)
    assert api.seen[0].headers["Host"] == f"127.0.0.1:{api.port}"


async def test_large_bodies_both_ways_arrive_intact(
    client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(client, api.base, token.agent_id)
    size = 20 * MiB
    url = f"{client.base}/v1/connections/{conn_id}/proxy/blob/{size}"
    digest = hashlib.sha256()
    async with client.session.get(url, headers=_auth(client)) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(256 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == blob_sha256(size)

    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    echo = f"{client.base}/v1/connections/{conn_id}/proxy/echo"
    # Known length (Content-Length kept) and unknown length (chunked to the API).
    async with client.session.put(echo, data=io.BytesIO(payload), headers=_auth(client)) as resp:
        assert await resp.json() == {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
            "method": "PUT",
        }
    async with client.session.post(echo, data=pieces(), headers=_auth(client)) as resp:
        assert await resp.json() == {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "bytes": len(payload),
            "method": "POST",
        }
    assert api.seen[-2].headers.get("Content-Length") == str(len(payload))
    assert api.seen[-1].headers.get("Transfer-Encoding") == "chunked"


async def test_framings_the_api_may_choose(client: APIClient, start_agent: AgentFactory) -> None:
    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        path = head.split(b" ", 2)[1]
        if path == b"/chunked":
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
        elif path == b"/continue":
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"
            )
        elif path == b"/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nread to the end")
            await writer.drain()
            return False
        elif path == b"/no-content":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        return True

    async for raw in raw_api(answer):
        conn_id = await _through_agent(raw, client, start_agent)
        proxy = f"/v1/connections/{conn_id}/proxy"
        for _ in range(2):  # the second round runs on kept-alive streams
            chunked = await client.call("GET", f"{proxy}/chunked")
            assert (chunked.status, chunked.text) == (200, "hello world")
            created = await client.call("POST", f"{proxy}/continue", json_body={"a": 1})
            assert (created.status, created.text) == (201, "done")
            closed = await client.call("GET", f"{proxy}/until-close")
            assert (closed.status, closed.text) == (200, "read to the end")
            empty = await client.call("GET", f"{proxy}/no-content")
            assert (empty.status, empty.text) == (204, "")
        # /until-close ends its connection each round; the others share one.
        assert raw.connections == 3
        assert all(b"expect:" not in r.lower() for r in raw.requests)


async def test_an_api_that_drops_kept_alive_connections_costs_no_error(
    client: APIClient, start_agent: AgentFactory
) -> None:
    async def answer_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        await _ok(reader, writer, head)
        return False  # says nothing about closing, then closes

    async for raw in raw_api(answer_once):
        conn_id = await _through_agent(raw, client, start_agent)
        for _ in range(10):
            answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/x")
            assert (answer.status, answer.body) == (200, {"ok": True})
        assert raw.connections == 10


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", "tunnel_protocol_error"),
        # A small answer is read whole before the caller sees it: cut short, a 502.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", "tunnel_lost"),
        # A large one streams: the caller sees its head, then a cut body.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000, None),
        (b"", "tunnel_lost"),
    ],
)
async def test_a_misbehaving_api_gets_a_definite_answer(
    client: APIClient, start_agent: AgentFactory, reply: bytes, expected: str | None
) -> None:
    async for raw in raw_api(fixed_answer(reply, keep_open=False)):
        conn_id = await _through_agent(raw, client, start_agent)
        url = f"{client.base}/v1/connections/{conn_id}/proxy/x"
        async with asyncio.timeout(10):
            if expected is not None:
                answer_ = await client.call("GET", f"/v1/connections/{conn_id}/proxy/x")
                assert answer_.status == 502
                assert answer_.body["type"].endswith(expected), answer_.body
            else:
                # The head went out already: the caller's body is cut short.
                async with client.session.get(url, headers=_auth(client)) as resp:
                    assert resp.status == 200
                    with pytest.raises(Exception, match=r"(?i)payload|transfer|closed"):
                        await resp.read()


async def test_total_timeout_ends_a_slow_answer(
    client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(
        client, api.base, token.agent_id, timeouts={"connect": 1, "total": 1}
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/slow?s=5")
    assert answer.status == 504
    assert answer.body["type"].endswith("upstream_timeout")
    assert loop.time() - began < 4
    ok = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello")
    assert ok.status == 200  # the timed-out stream was dropped, not reused


async def test_a_line_break_in_a_header_value_is_refused(
    client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(
        client,
        api.base,
        token.agent_id,
        encrypted={"tenant": "acme\r\nX-Injected: yes"},
        headers=[{"name": "X-Tenant", "value": "{{connection.http.encrypted.tenant}}"}],
    )
    answer = await client.call("GET", f"/v1/connections/{conn_id}/proxy/hello")
    assert answer.status == 400, answer.text
    assert "X-Tenant" in answer.body["detail"]
    assert not any("X-Injected" in s.headers for s in api.seen)


async def test_a_second_answer_to_one_request_costs_only_that_stream(
    client: APIClient, start_agent: AgentFactory
) -> None:
    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        await _ok(reader, writer, head)
        if len(raw.requests) == 1:  # the first request gets two answers at once
            await _ok(reader, writer, head)
        return True

    async for raw in raw_api(answer):
        conn_id = await _through_agent(raw, client, start_agent)
        for _ in range(3):
            answer_ = await client.call("GET", f"/v1/connections/{conn_id}/proxy/x")
            assert (answer_.status, answer_.body) == (200, {"ok": True})
        # The stream that went out of step was dropped; a fresh one took over.
        assert raw.connections == 2


async def test_a_long_answer_without_length_arrives_whole(
    client: APIClient, start_agent: AgentFactory
) -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB, far past the relay's read-ahead

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for i in range(0, len(body), 65536):
            writer.write(body[i : i + 65536])
            await writer.drain()
        return False

    async for raw in raw_api(answer):
        conn_id = await _through_agent(raw, client, start_agent)
        url = f"{client.base}/v1/connections/{conn_id}/proxy/long"
        for _ in range(2):
            got = hashlib.sha256()
            size = 0
            async with client.session.get(url, headers=_auth(client)) as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_chunked(16 * 1024):
                    got.update(chunk)
                    size += len(chunk)
            assert (size, got.hexdigest()) == (len(body), hashlib.sha256(body).hexdigest())


async def test_header_bytes_pass_unchanged_and_the_relay_names_itself(
    client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(client, api.base, token.agent_id)
    url = f"{client.base}/v1/connections/{conn_id}/proxy/hello"
    async with client.session.get(
        url, headers={**_auth(client), "X-Name": "Zoë 東京"}, skip_auto_headers=["User-Agent"]
    ) as resp:
        assert resp.status == 200
    assert api.seen[-1].headers["X-Name"] == "Zoë 東京"
    assert api.seen[-1].headers["User-Agent"].startswith("Sluice/")
    await client.call(
        "GET", f"/v1/connections/{conn_id}/proxy/hello", headers={"User-Agent": "inventory-sync/2"}
    )
    assert api.seen[-1].headers["User-Agent"] == "inventory-sync/2"
    async with client.session.head(
        url, headers=_auth(client), skip_auto_headers=["User-Agent"]
    ) as resp:
        assert resp.status == 200  # HEAD goes through aiohttp's client: same default
    assert api.seen[-1].method == "HEAD"
    assert api.seen[-1].headers["User-Agent"].startswith("Sluice/")


@pytest.mark.timeout(90)
async def test_kept_alive_streams_leave_a_draining_replica(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    first, token = await start_agent([f"127.0.0.1:{api.port}"])
    conn_id = await _connection(client, api.base, token.agent_id)
    proxy = f"/v1/connections/{conn_id}/proxy/hello"
    assert (await client.call("GET", proxy)).status == 200  # leaves a kept-alive stream
    (old,) = relay.registry.replicas(token.agent_id)
    assert old.in_flight == 1
    second, _ = await start_agent([f"127.0.0.1:{api.port}"], token=token, wait_online=False)
    await wait_until(
        lambda: len(relay.registry.replicas(token.agent_id)) == 2, what="second replica"
    )
    began = asyncio.get_running_loop().time()
    first.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    await wait_until(lambda: old.draining, what="replica marked draining")
    # The relay closes the kept-alive stream it held there at once.
    await wait_until(lambda: old.in_flight == 0, timeout=5, what="idle stream closed")
    for _ in range(5):
        assert (await client.call("GET", proxy)).status == 200
    assert old.streams_total == 1  # nothing new went to the draining replica
    assert await first.wait(20) == 0
    assert asyncio.get_running_loop().time() - began < 15
    # The other replica holds a kept-alive stream now; it too leaves at once
    # when its agent stops (rather than after the agent's 30 s drain_timeout).
    (new,) = relay.registry.replicas(token.agent_id)
    assert new.in_flight == 1
    began = asyncio.get_running_loop().time()
    assert await second.stop() == 0
    assert asyncio.get_running_loop().time() - began < 10
