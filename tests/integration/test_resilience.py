"""An agent that never silently dies: restarts, kills, drains, replicas."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from server.errors import is_tunnel_lost
from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.tinyproxy import TINYPROXY, run_tinyproxy
from tests.support.waiting import wait_until

MiB = 1024 * 1024


def _allow(api: InternalAPI) -> list[str]:
    return [f"127.0.0.1:{api.port}"]


@pytest.mark.timeout(90)
async def test_relay_restart_brings_every_agent_back(
    tmp_path: Path, relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    tokens = [(await start_agent(_allow(api)))[1] for _ in range(3)]
    ssh_port, http_port = relay.ssh_address[1], relay.http_address[1]
    await relay.close()
    assert not any(relay.registry.is_online(t.agent_id) for t in tokens)

    began = time.monotonic()
    again = await Relay.start(relay_settings(
        tmp_path, ssh_listen=f"127.0.0.1:{ssh_port}", http_listen=f"127.0.0.1:{http_port}"))
    try:
        for token in tokens:
            await again.registry.wait_online(token.agent_id, timeout=20)
        elapsed = time.monotonic() - began
        # Agents here back off from 0.1 s up to 1 s (full jitter): all are back
        # within a couple of their backoff caps.
        assert elapsed < 10, elapsed
        async with again.tunnel_http.session(tokens[0].agent_id).get(
            f"{api.base}/hello"
        ) as resp:
            assert resp.status == 200
    finally:
        await again.close()


@pytest.mark.timeout(90)
async def test_agent_killed_mid_download_fails_fast_then_other_replica_serves(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    first, token = await start_agent(_allow(api))
    http = relay.tunnel_http.session(token.agent_id)
    response = await http.get(f"{api.base}/blob/{50 * MiB}")
    second, _ = await start_agent(_allow(api), token=token, wait_online=False)
    await wait_until(lambda: len(relay.registry.replicas(token.agent_id)) == 2,
                     what="second replica")
    got = len(await response.content.read(MiB))
    assert got > 0
    first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    began = time.monotonic()
    async def drain() -> None:
        async with asyncio.timeout(15):
            while await response.content.read(MiB):
                pass

    with pytest.raises(aiohttp.ClientError) as err:
        await drain()
    assert time.monotonic() - began < 10
    assert is_tunnel_lost(err.value), repr(err.value)
    response.release()

    async with http.get(f"{api.base}/hello") as resp:  # served by the other replica
        assert resp.status == 200
    assert len(relay.registry.replicas(token.agent_id)) == 1
    assert await first.wait() == -signal.SIGKILL
    assert second.proc is not None


@pytest.mark.timeout(90)
async def test_sigterm_drains_in_flight_work_while_the_other_replica_serves(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    draining, token = await start_agent(_allow(api))
    http = relay.tunnel_http.session(token.agent_id)
    slow = asyncio.create_task(http.get(f"{api.base}/slow?s=2"))
    await wait_until(lambda: any(s.path == "/slow" for s in api.seen), what="slow request")
    other, _ = await start_agent(_allow(api), token=token, wait_online=False)
    await wait_until(lambda: len(relay.registry.replicas(token.agent_id)) == 2,
                     what="second replica")
    old = next(t for t in relay.registry.replicas(token.agent_id) if t.in_flight)
    draining.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    await wait_until(lambda: old.draining, what="replica marked draining")

    for _ in range(5):
        async with http.get(f"{api.base}/hello") as resp:
            assert resp.status == 200
    assert old.streams_total == 1  # nothing new went to the draining replica

    response = await asyncio.wait_for(slow, 10)
    assert response.status == 200
    assert await response.json() == {"slow": True}
    response.release()
    assert await draining.wait(20) == 0
    assert "draining" in draining.log()
    assert other.proc is not None
    assert other.proc.returncode is None


@pytest.mark.timeout(60)
async def test_tunnel_lost_before_the_answer_is_a_problem_for_the_caller(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    agent, token = await start_agent(_allow(api))
    created = await client.call("POST", "/v1/connections", json_body={
        "name": "slow", "mode": "on_premise", "agent_id": token.agent_id,
        "http": {"base_uri": api.base, "media_type": "json",
                 "auth": {"type": "token", "token": "tok-" + "z" * 12, "location": "header"}}})
    remember_secret("tok-" + "z" * 12)
    conn_id = created.body["id"]
    pending = asyncio.create_task(client.call("GET", f"/v1/connections/{conn_id}/proxy/slow?s=30"))
    await wait_until(lambda: any(s.path == "/slow" for s in api.seen), what="slow request")
    began = time.monotonic()
    agent.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    answer = await asyncio.wait_for(pending, 10)
    assert time.monotonic() - began < 5
    assert answer.status == 502
    assert answer.body["type"] == "tunnel_lost"


@pytest.mark.skipif(TINYPROXY is None, reason="tinyproxy is not installed")
@pytest.mark.timeout(60)
async def test_agent_reaches_the_relay_through_an_authenticating_proxy(
    tmp_path: Path, relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    password = "Pr0xy-pa55.word"
    remember_secret(password)
    ssh_port = relay.ssh_address[1]
    async with run_tinyproxy(tmp_path, users={"agentuser": password},
                             connect_ports=[ssh_port]) as proxy:
        _, token = await start_agent(
            _allow(api), proxy=f"http://agentuser:{password}@127.0.0.1:{proxy.port}",
            log_level="debug")
        assert f"CONNECT 127.0.0.1:{ssh_port}" in proxy.log()
        async with relay.tunnel_http.session(token.agent_id).get(f"{api.base}/hello") as resp:
            assert resp.status == 200

        bad, _ = await start_agent(
            _allow(api), wait_online=False,
            proxy=f"http://agentuser:wrong-{password}@127.0.0.1:{proxy.port}")
        await wait_until(lambda: "relay_needs_attention" in bad.log(), what="proxy refusal")
        assert "password" in bad.log()
        assert f"wrong-{password}" not in bad.log()
