"""Limits on every resource: clear errors, and nothing else disturbed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.errors import AgentBusy, RateLimited
from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.waiting import wait_until


@pytest.fixture
async def tight_relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(
        relay_settings(
            tmp_path,
            data_dir=tmp_path / "tight",
            max_body_bytes=1000,
            max_headers=20,
            max_header_bytes=2048,
            max_streams_per_agent=2,
        )
    )
    remember_secret(relay.admin_token)
    try:
        yield relay
    finally:
        await relay.close()


async def test_header_and_body_limits(tight_relay: Relay, api: InternalAPI, tmp_path: Path) -> None:
    remember_secret("tok-" + "b" * 12)
    async with aiohttp.ClientSession() as session:
        client = APIClient(session, tight_relay.http_base, tight_relay.admin_token)
        huge = await client.call("GET", "/v1/agents", headers={"X-Big": "x" * 4000})
        assert huge.status in (400, 431)
        many = await client.call("GET", "/v1/agents", headers={f"X-H{i}": "1" for i in range(40)})
        assert many.status in (400, 431)

        agent = (
            await client.call("POST", "/v1/agents", json_body={"name": "a"}, shows_token=True)
        ).body
        remember_secret(agent["token"])
        conn = await client.call(
            "POST",
            "/v1/connections",
            json_body={
                "name": "c",
                "mode": "on_premise",
                "agent_id": agent["id"],
                "http": {
                    "base_uri": api.base,
                    "media_type": "json",
                    "auth": {"type": "token", "token": "tok-" + "b" * 12, "location": "header"},
                },
            },
        )
        too_big = await client.call(
            "POST", f"/v1/connections/{conn.body['id']}/proxy/echo", data=b"x" * 2000
        )
        assert too_big.status == 413
        assert too_big.body["type"] == "body_too_large"
        assert "max_body_bytes" in too_big.body["detail"]
    assert not any(s.path == "/echo" for s in api.seen)


async def test_streams_per_agent_are_capped(
    tight_relay: Relay, api: InternalAPI, tmp_path: Path
) -> None:
    _, token = await tight_relay.store.create_agent("capped")
    remember_secret(str(token))
    from tests.support.agent import AgentProcess

    agent = AgentProcess(
        {
            "SLUICE_AGENT_RELAY": f"127.0.0.1:{tight_relay.ssh_address[1]}",
            "SLUICE_AGENT_TOKEN": str(token),
            "SLUICE_AGENT_RELAY_FINGERPRINT": tight_relay.fingerprint,
            "SLUICE_AGENT_ALLOW": f"127.0.0.1:{api.port}",
            "SLUICE_AGENT_HEALTH_LISTEN": "off",
            "SLUICE_AGENT_LOG_FORMAT": "json",
        },
        tmp_path / "agent-capped.log",
    )
    await agent.start()
    try:
        await wait_until(
            lambda: tight_relay.registry.is_online(token.agent_id), timeout=15, what="agent online"
        )
        http = tight_relay.tunnel_http.session(token.agent_id)
        slow = [asyncio.create_task(http.get(f"{api.base}/slow?s=1.5")) for _ in range(2)]
        await wait_until(
            lambda: sum(s.path == "/slow" for s in api.seen) == 2,
            what="two slow requests in flight",
        )
        with pytest.raises(AgentBusy, match="max_streams_per_agent"):
            await http.get(f"{api.base}/hello")
        for task in slow:
            response = await asyncio.wait_for(task, 10)
            assert response.status == 200
            response.release()
    finally:
        await tight_relay.tunnel_http.close()
        await agent.stop()


async def test_agent_refuses_streams_past_its_own_limits(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"], max_new_streams_per_second="1")
    http = relay.tunnel_http.session(token.agent_id)
    outcomes: list[int | str] = []
    for _ in range(5):
        try:
            async with http.get(f"{api.base}/hello", headers={"Connection": "close"}) as r:
                outcomes.append(r.status)
        except RateLimited as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == 200
    assert any("max_new_streams_per_second" in str(o) for o in outcomes[1:])


async def test_idle_streams_are_closed_by_the_agent(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    agent, token = await start_agent([f"127.0.0.1:{api.port}"], stream_idle_timeout="0.4")
    http = relay.tunnel_http.session(token.agent_id)
    async with http.get(f"{api.base}/hello") as resp:  # stays pooled, idle, afterwards
        assert resp.status == 200

    def idle_closed() -> bool:
        return any(
            json.loads(line).get("outcome") == "idle_timeout"
            for line in agent.log().splitlines()
            if '"event": "stream"' in line
        )

    await wait_until(idle_closed, timeout=10, what="the idle stream to be closed")
    await wait_until(
        lambda: relay.registry.replicas(token.agent_id)[0].in_flight == 0,
        what="the relay to see the stream end",
    )
    async with http.get(f"{api.base}/hello") as resp:  # a new stream works as before
        assert resp.status == 200
