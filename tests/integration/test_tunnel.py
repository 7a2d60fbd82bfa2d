"""Requests through a real agent process and a real relay, on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme

from server.errors import DestinationDenied, UpstreamConnectFailed
from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.api import BLOCK, InternalAPI, blob_sha256
from tests.support.waiting import wait_until

MiB = 1024 * 1024


def _allow(api: InternalAPI) -> list[str]:
    return [f"127.0.0.1:{api.port}", f"localhost:{api.port}"]


async def test_get_and_post_reach_the_internal_api(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent(_allow(api))
    http = relay.tunnel_http.session(token.agent_id)

    async with http.get(f"{api.base}/hello?x=1") as resp:
        assert resp.status == 200
        assert await resp.json() == {"hello": "world", "path": "/hello?x=1"}
    async with http.post(f"{api.base}/echo", data=b"ping" * 10) as resp:
        body = await resp.json()
    assert body == {
        "sha256": hashlib.sha256(b"ping" * 10).hexdigest(),
        "bytes": 40,
        "method": "POST",
    }
    assert [s.method for s in api.seen] == ["GET", "POST"]
    assert api.seen[0].headers["Host"] == f"127.0.0.1:{api.port}"


async def _body(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = BLOCK[: min(len(BLOCK), total - sent)]
        sent += len(chunk)
        yield chunk


async def _round_trip(http: aiohttp.ClientSession, base: str, size: int) -> None:
    expected = blob_sha256(size)
    async with http.post(f"{base}/echo", data=_body(size)) as resp:
        assert resp.status == 200
        assert await resp.json() == {"sha256": expected, "bytes": size, "method": "POST"}
    h = hashlib.sha256()
    got = 0
    async with http.get(f"{base}/blob/{size}") as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            h.update(chunk)
            got += len(chunk)
    assert got == size
    assert h.hexdigest() == expected


@pytest.mark.timeout(120)
async def test_large_bodies_are_streamed_with_flat_agent_memory(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    agent, token = await start_agent(_allow(api))
    http = relay.tunnel_http.session(token.agent_id)

    await _round_trip(http, api.base, 10 * MiB)
    small_peak = agent.peak_rss_kib()
    await _round_trip(http, api.base, 50 * MiB)
    big_peak = agent.peak_rss_kib()
    print("agent peak RSS KiB after 10 MiB / 50 MiB:", small_peak, big_peak)

    # Five times the body, (almost) the same peak: nothing is buffered whole.
    assert big_peak - small_peak < 10 * 1024, (small_peak, big_peak)

    # Closing the pooled streams ends them on the agent: one canonical line each.
    await relay.tunnel_http.forget(token.agent_id)

    def streams() -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in agent.log().splitlines() if '"event": "stream"' in line
        ]

    await wait_until(
        lambda: sum(int(s["bytes_down"]) for s in streams()) > 55 * MiB, what="stream log lines"
    )
    assert sum(int(s["bytes_up"]) for s in streams()) > 55 * MiB
    assert {s["outcome"] for s in streams()} == {"ok"}


async def test_https_is_verified_end_to_end(
    relay: Relay, tls_api: InternalAPI, start_agent: AgentFactory, ca: trustme.CA
) -> None:
    _, token = await start_agent([f"localhost:{tls_api.port}", f"127.0.0.1:{tls_api.port}"])
    http = relay.tunnel_http.session(token.agent_id)
    url = f"https://localhost:{tls_api.port}/hello"

    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with http.get(url, ssl=trusting) as resp:
        assert resp.status == 200
        assert (await resp.json())["hello"] == "world"

    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with http.get(url, ssl=other):
            pass
    assert len(tls_api.seen) == 1


async def test_destination_outside_allowlist_is_refused_and_never_connected(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    accepted = 0

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    forbidden = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    forbidden_port = forbidden.sockets[0].getsockname()[1]
    agent, token = await start_agent(_allow(api))
    http = relay.tunnel_http.session(token.agent_id)
    try:
        with pytest.raises(DestinationDenied, match="allowlist") as denied:
            await http.get(f"http://127.0.0.1:{forbidden_port}/")
        assert f"127.0.0.1:{forbidden_port}" in str(denied.value)
        with pytest.raises(DestinationDenied):
            await http.get(f"http://localhost:{forbidden_port}/")
    finally:
        forbidden.close()
        await forbidden.wait_closed()
    assert accepted == 0
    await wait_until(lambda: "destination_denied" in agent.log(), what="the agent's log line")


async def test_allowed_port_with_nothing_listening_is_a_connect_failure(
    relay: Relay, start_agent: AgentFactory
) -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    _, token = await start_agent([f"127.0.0.1:{port}"])
    with pytest.raises(UpstreamConnectFailed, match="cannot connect"):
        await relay.tunnel_http.session(token.agent_id).get(f"http://127.0.0.1:{port}/")


async def test_wrong_token_is_refused(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    record, good = await relay.store.create_agent("victim")
    forged = type(good)(agent_id=good.agent_id, secret="A" * 40)
    agent, _ = await start_agent(_allow(api), token=forged, wait_online=False)
    await wait_until(lambda: "refused the access token" in agent.log(), what="auth refusal")
    assert not relay.registry.is_online(record.id)
    assert str(forged) not in agent.log()
    assert forged.secret not in agent.log()


async def test_agent_refuses_a_relay_with_another_host_key(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await relay.store.create_agent("pinned")
    wrong = "SHA256:" + "A" * 43
    agent, _ = await start_agent(
        _allow(api), token=token, wait_online=False, relay_fingerprint=wrong
    )
    await wait_until(lambda: "presented host key" in agent.log(), what="host key refusal")
    assert wrong in agent.log()
    assert not relay.registry.is_online(token.agent_id)


async def test_a_name_rule_does_not_reach_loopback_unless_an_address_rule_names_it(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    # 'localhost' stands for any name in an allowed zone that DNS points at
    # the agent host itself (or at 169.254.169.254).
    _, token = await start_agent([f"localhost:{api.port}"])
    http = relay.tunnel_http.session(token.agent_id)
    with pytest.raises(DestinationDenied, match="loopback") as denied:
        await http.get(f"http://localhost:{api.port}/hello")
    assert f"127.0.0.1:{api.port}" in str(denied.value)  # the rule to add
    assert not api.seen

    _, named = await start_agent([f"localhost:{api.port}", f"127.0.0.1:{api.port}"])
    async with relay.tunnel_http.session(named.agent_id).get(
        f"http://localhost:{api.port}/hello"
    ) as resp:
        assert resp.status == 200
