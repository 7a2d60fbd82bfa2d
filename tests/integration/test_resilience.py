"""An agent that never silently dies: restarts, kills, drains, replicas."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from server.errors import TunnelLost, relay_error_in
from server.relay import Relay
from tests.conftest import AgentFactory, relay_settings
from tests.support.agent import AgentProcess
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.relay_process import RelayProcess
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
    again = await Relay.start(
        relay_settings(
            tmp_path, ssh_listen=f"127.0.0.1:{ssh_port}", http_listen=f"127.0.0.1:{http_port}"
        )
    )
    try:
        for token in tokens:
            online = functools.partial(again.registry.is_online, token.agent_id)
            await wait_until(online, timeout=20, what="agent online")
        elapsed = time.monotonic() - began
        # Agents here back off from 0.1 s up to 1 s (full jitter): all are back
        # within a couple of their backoff caps.
        assert elapsed < 10, elapsed
        async with again.tunnel_http.session(tokens[0].agent_id).get(f"{api.base}/hello") as resp:
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
    await wait_until(
        lambda: len(relay.registry.replicas(token.agent_id)) == 2, what="second replica"
    )
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
    assert isinstance(relay_error_in(err.value), TunnelLost), repr(err.value)
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
    await wait_until(
        lambda: len(relay.registry.replicas(token.agent_id)) == 2, what="second replica"
    )
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
    created = await client.call(
        "POST",
        "/v1/connections",
        json_body={
            "name": "slow",
            "mode": "on_premise",
            "agent_id": token.agent_id,
            "http": {
                "base_uri": api.base,
                "media_type": "json",
                "auth": {"type": "token", "token": "tok-" + "z" * 12, "location": "header"},
            },
        },
    )
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
    async with run_tinyproxy(
        tmp_path, users={"agentuser": password}, connect_ports=[ssh_port]
    ) as proxy:
        _, token = await start_agent(
            _allow(api),
            proxy=f"http://agentuser:{password}@127.0.0.1:{proxy.port}",
            log_level="debug",
        )
        assert f"CONNECT 127.0.0.1:{ssh_port}" in proxy.log()
        async with relay.tunnel_http.session(token.agent_id).get(f"{api.base}/hello") as resp:
            assert resp.status == 200

        bad, _ = await start_agent(
            _allow(api),
            wait_online=False,
            proxy=f"http://agentuser:wrong-{password}@127.0.0.1:{proxy.port}",
        )
        await wait_until(lambda: "relay_needs_attention" in bad.log(), what="proxy refusal")
        assert "password" in bad.log()
        assert f"wrong-{password}" not in bad.log()


@pytest.mark.timeout(90)
async def test_relay_sigterm_lets_in_flight_requests_finish(
    tmp_path: Path, api: InternalAPI
) -> None:
    relay = RelayProcess(tmp_path / "relay", tmp_path / "relay.log", drain_timeout="20")
    await relay.start()
    remember_secret(relay.admin_token)
    agent: AgentProcess | None = None
    try:
        async with aiohttp.ClientSession() as session:
            client = APIClient(session, relay.base, relay.admin_token)
            created = await client.call(
                "POST", "/v1/agents", json_body={"name": "a"}, shows_token=True
            )
            remember_secret(created.body["token"])
            agent = AgentProcess(
                {
                    "SLUICE_AGENT_RELAY": f"127.0.0.1:{relay.ssh_port}",
                    "SLUICE_AGENT_TOKEN": created.body["token"],
                    "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint(),
                    "SLUICE_AGENT_ALLOW": f"127.0.0.1:{api.port}",
                    "SLUICE_AGENT_HEALTH_LISTEN": "off",
                    "SLUICE_AGENT_LOG_FORMAT": "json",
                },
                tmp_path / "agent.log",
            )
            await agent.start()

            async def online() -> bool:
                got = await client.call("GET", f"/v1/agents/{created.body['id']}")
                return bool(got.body["status"] == "online")

            deadline = time.monotonic() + 15
            while not await online():
                assert time.monotonic() < deadline, agent.log()
                await asyncio.sleep(0.05)
            conn = await client.call(
                "POST",
                "/v1/connections",
                json_body={
                    "name": "slow",
                    "mode": "on_premise",
                    "agent_id": created.body["id"],
                    "http": {
                        "base_uri": api.base,
                        "media_type": "json",
                        "auth": {"type": "token", "token": "t-" + "y" * 14, "location": "header"},
                    },
                },
            )
            remember_secret("t-" + "y" * 14)
            slow = asyncio.create_task(
                client.call("GET", f"/v1/connections/{conn.body['id']}/proxy/slow?s=2")
            )
            await wait_until(
                lambda: any(s.path == "/slow" for s in api.seen), what="slow request at the API"
            )
            assert relay.proc is not None
            relay.proc.send_signal(signal.SIGTERM)
            answer = await asyncio.wait_for(slow, 15)
            assert answer.status == 200
            assert answer.body == {"slow": True}
            assert await relay.stop() == 0
    finally:
        if agent is not None and agent.proc is not None:
            await agent.stop()
        if relay.proc is not None and relay.proc.returncode is None:
            await relay.stop(signal.SIGKILL)
