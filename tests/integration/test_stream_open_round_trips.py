"""What a new tunnel stream costs on a long link (issue 22): a caller's request
that needs a new stream (the pooled one is busy) takes one round trip, not
three. The relay keeps a spare channel open per tunnel (no CHANNEL_OPEN
round trip) and sends the request right behind the CONNECT (no wait for its
answer); a refused CONNECT still gives the caller the agent's clear error,
and the request sent behind it reaches nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme

from bench.delay_line import DelayLine
from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI, serve_api
from tests.support.capture import APIClient, remember_secret
from tests.support.waiting import wait_until

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

RTT = 0.1
TOKEN = "round-trip-token-" + "r" * 16


async def _connection(
    client: APIClient, base: str, agent_id: str, ca: trustme.CA | None = None
) -> str:
    remember_secret(TOKEN)
    document: dict[str, Any] = {
        "name": "far api",
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
        },
    }
    if ca is not None:
        document["http"]["tls"] = {"ca_bundle_pem": ca.cert_pem.bytes().decode()}
    answer = await client.call("POST", "/v1/connections", json_body=document)
    assert answer.status == 201, answer.text
    return str(answer.body["id"])


async def _timed_get(client: APIClient, path: str) -> tuple[float, Any]:
    began = time.monotonic()
    answer = await client.call("GET", path)
    return time.monotonic() - began, answer


@pytest.fixture
async def other_api() -> AsyncIterator[InternalAPI]:
    """A live API the agent may NOT reach: a request that leaked past a refused
    CONNECT would show up here."""
    async for running in serve_api():
        yield running


@pytest.mark.timeout(60)
async def test_a_get_beside_a_busy_stream_costs_one_round_trip(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    await _beside_a_busy_stream(relay, client, api, start_agent, api.base, None, 1)


@pytest.mark.timeout(60)
async def test_over_tls_the_hello_goes_with_the_connect(
    relay: Relay, client: APIClient, tls_api: InternalAPI, start_agent: AgentFactory, ca: trustme.CA
) -> None:
    # TLS 1.3: the ClientHello rides with the CONNECT (1 RTT), the request
    # with the client's Finished (1 RTT). Before: channel, CONNECT, hello,
    # request, 4 RTT (411 ms here on main; 219-225 ms now).
    base = f"https://127.0.0.1:{tls_api.port}"
    await _beside_a_busy_stream(relay, client, tls_api, start_agent, base, ca, 2)


async def _beside_a_busy_stream(
    relay: Relay,
    client: APIClient,
    api: InternalAPI,
    start_agent: AgentFactory,
    base: str,
    ca: trustme.CA | None,
    round_trips: int,
) -> None:
    async with DelayLine.start(relay.ssh_address[1], RTT) as line:
        _, token = await start_agent(
            [f"127.0.0.1:{api.port}"], relay_address=f"127.0.0.1:{line.port}"
        )
        conn_id = await _connection(client, base, token.agent_id, ca)
        proxy = f"/v1/connections/{conn_id}/proxy"
        # The tunnel's first stream (kept alive in the relay's pool after).
        first, answer = await _timed_get(client, f"{proxy}/hello?i=0")
        assert answer.status == 200, answer.text
        # Hold the pooled stream with a slow answer: the next GET needs a new one.
        slow = asyncio.ensure_future(client.call("GET", f"{proxy}/slow?s=2"))
        await wait_until(
            lambda: any(s.path.startswith("/slow") for s in api.seen), timeout=10, what="slow"
        )
        beside = []
        for i in range(1, 4):
            took, answer = await _timed_get(client, f"{proxy}/hello?i={i}")
            assert answer.status == 200, answer.text
            assert answer.body["path"] == f"/hello?i={i}"
            beside.append(took)
        slow_answer = await slow
        assert slow_answer.status == 200, slow_answer.text
        # The idle pooled path stays at one round trip.
        pooled, answer = await _timed_get(client, f"{proxy}/hello?i=9")
        assert answer.status == 200, answer.text
    (tunnel,) = relay.registry.replicas(token.agent_id)
    shown = (
        f"first {first * 1000:.0f} ms, beside a busy stream "
        f"{[round(t * 1000) for t in beside]} ms, pooled {pooled * 1000:.0f} ms at {RTT * 1000:.0f}"
    )
    print(shown)
    # Before: CHANNEL_OPEN, then the CONNECT answer, then the request: 3 RTT.
    # The first one beside opens on the spare; those after it on the pooled
    # streams or on spares opened in the background meanwhile.
    # Slack for the relay's front and CPU on a busy 2-core machine (the
    # handshake's crypto, too): below the next round trip.
    slack = 0.6 if ca is None else 0.8
    assert beside[0] < (round_trips + slack) * RTT, shown
    assert max(beside) < (round_trips + 1) * RTT, shown
    assert pooled < 1.6 * RTT, shown
    assert tunnel.streams_total == 2, shown  # the slow one's stream, and one more


@pytest.mark.timeout(30)
async def test_a_request_behind_a_refused_connect_reaches_nothing(
    relay: Relay,
    client: APIClient,
    api: InternalAPI,
    other_api: InternalAPI,
    start_agent: AgentFactory,
) -> None:
    agent, token = await start_agent([f"127.0.0.1:{api.port}"])
    allowed = await _connection(client, api.base, token.agent_id)
    denied = await _connection(client, other_api.base, token.agent_id)
    answer = await client.call("GET", f"/v1/connections/{allowed}/proxy/hello")
    assert answer.status == 200, answer.text
    # The first refusal opens its stream afresh; the second on the spare
    # opened meanwhile. Both carried the request right behind the CONNECT.
    # Over TLS, the ClientHello went behind the CONNECT: the same refusal.
    denied_tls = await _connection(
        client, f"https://127.0.0.1:{other_api.port}", token.agent_id, trustme.CA()
    )
    for i, conn in enumerate((denied, denied, denied_tls)):
        answer = await client.call("GET", f"/v1/connections/{conn}/proxy/hello?i={i}")
        assert answer.status == 403, answer.text
        assert answer.body["type"].endswith("destination_denied"), answer.body
        assert f"127.0.0.1:{other_api.port}" in answer.body["detail"], answer.body
        assert "allowlist" in answer.body["detail"], answer.body
    # The agent answered each CONNECT once (no retry) and passed nothing on.
    await wait_until(
        lambda: _events(agent.log(), "destination_denied") == 3, timeout=10, what="refusals"
    )
    assert other_api.seen == []
    # A stream on the same tunnel afterwards still works.
    answer = await client.call("GET", f"/v1/connections/{allowed}/proxy/hello?after=1")
    assert answer.status == 200, answer.text
    assert _events(agent.log(), "destination_denied") == 3


@pytest.mark.timeout(30)
async def test_the_spare_channel_closes_when_its_tunnel_drains(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    agent, token = await start_agent([f"127.0.0.1:{api.port}"], log_level="debug")
    conn_id = await _connection(client, api.base, token.agent_id)
    proxy = f"/v1/connections/{conn_id}/proxy"
    answer = await client.call("GET", f"{proxy}/hello")
    assert answer.status == 200, answer.text
    # A slow answer keeps the tunnel draining (not closed) for a while.
    slow = asyncio.ensure_future(client.call("GET", f"{proxy}/slow?s=1.5"))
    await wait_until(
        lambda: any(s.path.startswith("/slow") for s in api.seen), timeout=10, what="slow"
    )
    assert _events(agent.log(), "channel_unused") == 0  # the spare is open
    assert agent.proc is not None
    agent.proc.terminate()
    # The relay closes the spare as soon as the replica drains, while the
    # slow stream still runs: the agent logs the unused channel before the
    # slow stream's end, and its drain does not wait on the spare.
    await wait_until(
        lambda: _events(agent.log(), "channel_unused") == 1, timeout=10, what="spare closed"
    )
    assert not slow.done()
    assert _events(agent.log(), "stream") == 0  # the pooled stream carries /slow still
    assert (await slow).status == 200
    assert await agent.wait(10) == 0
    assert _events(agent.log(), "stream") == 1
    assert _events(agent.log(), "drain_timeout") == 0
    # The agent counted the slow stream, not the spare, as open.
    (draining,) = [line for line in _lines(agent.log()) if line.get("event") == "draining"]
    assert draining["streams_open"] == 1
    assert _events(agent.log(), "channel_unused") == 1


def _lines(log: str) -> list[dict[str, Any]]:
    found = []
    for line in log.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def _events(log: str, event: str) -> int:
    return sum(1 for line in _lines(log) if line.get("event") == event)
