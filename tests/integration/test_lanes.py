"""Lanes (``sluice.lanes``): an agent whose link to its relay is long keeps a
second SSH connection to it, whose streams have none of a download's queue
ahead of them; the lanes of one process share one receive budget on the
relay; an agent on a short link keeps one connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import aiohttp
import pytest

from bench.delay_line import DelayLine
from server.relay import Relay
from server.tunnel.registry import Tunnel
from sluice import lanes
from tests.conftest import AgentFactory
from tests.support.agent import AgentProcess
from tests.support.api import InternalAPI
from tests.support.capture import APIClient
from tests.support.waiting import wait_until

RTT = 0.02  # long: sluice.window_tuning.LONG is 4 ms
MiB = 1024 * 1024


def _tunnels_up(proc: AgentProcess) -> Iterator[dict[str, object]]:
    """The agent's ``tunnel_up`` log events."""
    for line in proc.log().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "tunnel_up":
                yield event


async def _replicas(relay: Relay, agent_id: str, count: int) -> list[Tunnel]:
    await wait_until(
        lambda: len(relay.registry.replicas(agent_id)) == count,
        timeout=15,
        what=f"{count} connections of agent {agent_id}",
    )
    return relay.registry.replicas(agent_id)


@pytest.mark.timeout(60)
async def test_a_far_agent_keeps_two_lanes_that_share_one_budget(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    allow = [f"127.0.0.1:{api.port}"]
    async with DelayLine.start(relay.ssh_address[1], RTT) as line:
        first, token = await start_agent(allow, relay_address=f"127.0.0.1:{line.port}")
        # A second process of the same agent (a replica): lanes of its own.
        await start_agent(allow, token=token, relay_address=f"127.0.0.1:{line.port}")
        replicas = await _replicas(relay, token.agent_id, 4)
    by_process: dict[str, list[Tunnel]] = {}
    for tunnel in replicas:
        by_process.setdefault(lanes.family(tunnel.instance), []).append(tunnel)
    assert len(by_process) == 2, [t.instance for t in replicas]
    for process, tunnels in by_process.items():
        assert sorted(t.instance for t in tunnels) == [process, process + "x1"]
        # One cap on what the process's streams may have in flight, not one a lane.
        assert tunnels[0].budget is tunnels[1].budget
    one, other = by_process.values()
    assert one[0].budget is not other[0].budget
    [up] = [e for e in _tunnels_up(first) if "lane" not in e]
    assert up["short_link"] is False, up
    assert up["lanes"] == 2, up


@pytest.mark.timeout(60)
async def test_a_near_agent_keeps_one_connection(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    proc, token = await start_agent([f"127.0.0.1:{api.port}"])
    # The agent decides before it logs the tunnel up.
    await wait_until(lambda: any(_tunnels_up(proc)), timeout=15, what="tunnel_up logged")
    [up] = _tunnels_up(proc)
    assert up["short_link"] is True, up
    assert up["lanes"] == 1, up
    assert len(relay.registry.replicas(token.agent_id)) == 1


@pytest.mark.timeout(60)
async def test_gets_beside_a_download_go_on_the_other_lane(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    async with DelayLine.start(relay.ssh_address[1], RTT) as line:
        _, token = await start_agent(
            [f"127.0.0.1:{api.port}"], relay_address=f"127.0.0.1:{line.port}"
        )
        await _replicas(relay, token.agent_id, 2)
        http = relay.tunnel_http.session(token.agent_id)
        got = 0

        async def download() -> None:
            nonlocal got
            async with http.get(f"{api.base}/blob/{4096 * MiB}") as resp:
                async for chunk in resp.content.iter_any():
                    got += len(chunk)

        bulk = asyncio.create_task(download())
        try:
            await wait_until(lambda: got > 8 * MiB, timeout=15, what="the download under way")
            for _ in range(5):
                async with http.get(f"{api.base}/hello") as resp:
                    assert (await resp.json())["hello"] == "world"
            # As the API shows each connection: the download's stream on
            # one, the GETs' (kept alive between them) on the other.
            answer = await client.call("GET", f"/v1/agents/{token.agent_id}")
            assert not bulk.done()
        finally:
            bulk.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await bulk
    in_flight = sorted(r["streams_in_flight"] for r in answer.body["replicas"])
    assert in_flight == [1, 1], answer.body["replicas"]
