"""Traffic a fragile API can bear, across a relay cluster: one concurrency cap
shared by every relay (rebalanced when a relay dies), and the console's
traffic charts summed over the relays."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sluice.tokens import AgentToken
from tests.support.cluster import cluster_relay, get_json, master_key, start_cluster_agent
from tests.support.fragile_api import FragileAPI
from tests.support.relay_process import RelayProcess
from tests.support.waiting import poll_until

ADMIN = "slcadm_traffic_" + os.urandom(12).hex()


@pytest.fixture
async def three_relays(tmp_path: Path, cluster_database: str) -> AsyncIterator[list[RelayProcess]]:
    """Relays a, b, c on one database; a starts first (it migrates the database)."""
    key = master_key()
    relays = [
        cluster_relay(
            tmp_path,
            name,
            cluster_database,
            key,
            ADMIN,
            allow_private_destinations="true",
            relay_dead_after="2",
            heartbeat_interval="0.3",
        )
        for name in "abc"
    ]
    try:
        await relays[0].start()
        await asyncio.gather(*(relay.start() for relay in relays[1:]))
        yield relays
    finally:
        for relay in relays:
            if relay.proc is not None and relay.proc.returncode is None:
                await relay.stop()


async def _metric(http: aiohttp.ClientSession, relay: RelayProcess, series: str) -> float:
    async with http.get(relay.base + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def _sharing_over(http: aiohttp.ClientSession, relays: list[RelayProcess], n: int) -> None:
    async def all_see_n() -> bool:
        seen = [await _metric(http, r, "sluice_cap_share_relays") for r in relays]
        return seen == [n] * len(relays)

    await poll_until(all_see_n, 15, f"every relay to share the caps over {n} relays")


async def _in_order(http: aiohttp.ClientSession, relays: list[RelayProcess]) -> list[RelayProcess]:
    """*relays* in presence order (oldest first), as GET /v1/cluster lists them."""
    by_id = {}
    for relay in relays:
        status, info = await get_json(http, relay, "/v1/cluster")
        assert status == 200
        by_id[info["relay"]] = relay
    return [by_id[r["id"]] for r in info["relays"] if r["id"] in by_id]


async def _newest(http: aiohttp.ClientSession, relays: list[RelayProcess]) -> RelayProcess:
    return (await _in_order(http, relays))[-1]


async def _oldest(http: aiohttp.ClientSession, relays: list[RelayProcess]) -> RelayProcess:
    return (await _in_order(http, relays))[0]


async def _call(
    http: aiohttp.ClientSession, relay: RelayProcess, method: str, path: str, **kw: Any
) -> tuple[int, Any]:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with http.request(method, relay.base + path, headers=auth, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def _burst(
    http: aiohttp.ClientSession, relays: list[RelayProcess], conn_id: str, callers: int
) -> list[int]:
    """*callers* concurrent requests to the slow route, spread over *relays*."""
    path = f"/v1/connections/{conn_id}/proxy/slow"
    answers = await asyncio.gather(
        *(_call(http, relays[i % len(relays)], "GET", path) for i in range(callers))
    )
    return [status for status, _ in answers]


@pytest.mark.timeout(120)
async def test_the_cap_holds_for_the_cluster_and_rebalances_when_a_relay_dies(
    three_relays: list[RelayProcess], fragile: FragileAPI
) -> None:
    a = three_relays[0]
    fragile.delay = 0.3
    async with aiohttp.ClientSession() as http:
        await _sharing_over(http, three_relays, 3)
        status, created = await _call(
            http,
            a,
            "POST",
            "/v1/connections",
            json={
                "name": "fragile",
                "mode": "cloud",
                "http": {"base_uri": fragile.base, "concurrency_level": 3},
            },
        )
        assert status == 201, created
        conn_id = created["id"]

        # 30 callers spread over the three relays: one slot each.
        assert await _burst(http, three_relays, conn_id, 30) == [200] * 30
        assert fragile.served == 30
        assert fragile.peak == 3, f"the API saw {fragile.peak} at once with level 3"

        # Level 2 over three relays: the newest holds no share and forwards
        # to the two others, which queue what it sends them.
        newest = await _newest(http, three_relays)
        status, _ = await _call(
            http, a, "PATCH", f"/v1/connections/{conn_id}", json={"http": {"concurrency_level": 2}}
        )
        assert status == 200
        fragile.peak = 0
        forwarded = 'sluice_forwarded_total{direction="out"}'
        out_before = await _metric(http, newest, forwarded)
        assert await _burst(http, [newest], conn_id, 12) == [200] * 12
        assert fragile.peak == 2, f"the API saw {fragile.peak} at once with level 2"
        assert await _metric(http, newest, forwarded) == out_before + 12

        # Level 4: the oldest holds 2, the others 1 each. The oldest dies
        # without a word.
        oldest = await _oldest(http, three_relays)
        rest = [r for r in three_relays if r is not oldest]
        status, _ = await _call(
            http,
            rest[0],
            "PATCH",
            f"/v1/connections/{conn_id}",
            json={"http": {"concurrency_level": 4}},
        )
        assert status == 200
        await oldest.stop(signal.SIGKILL)
        await _sharing_over(http, rest, 2)
        fragile.peak = 0
        assert await _burst(http, rest, conn_id, 20) == [200] * 20
        # The two left hold 2 each now: the cap is reached again, and not passed.
        assert fragile.peak == 4, f"the API saw {fragile.peak} at once with level 4"


@pytest.mark.timeout(120)
async def test_the_traffic_through_any_relay_is_the_clusters(
    three_relays: list[RelayProcess], fragile: FragileAPI
) -> None:
    a, b, c = three_relays
    async with aiohttp.ClientSession() as http:
        status, created = await _call(
            http,
            a,
            "POST",
            "/v1/connections",
            json={"name": "fragile", "mode": "cloud", "http": {"base_uri": fragile.base}},
        )
        assert status == 201, created
        conn_id = created["id"]
        proxy = f"/v1/connections/{conn_id}/proxy"
        fragile.limit_next = 2  # two 429s (the second inside the first one's window or not)
        for path in ("/limited", "/limited", "/slow", "/slow", "/slow"):
            await _call(http, a, "GET", proxy + path)
        for _ in range(3):
            status, _ = await _call(http, b, "GET", proxy + "/slow")
            assert status == 200

        status, traffic = await get_json(http, c, f"/v1/connections/{conn_id}/traffic")
        assert status == 200, traffic
        assert sum(m["requests"] for m in traffic["minutes"]) == 8
        assert sum(m["errors"] for m in traffic["minutes"]) == 2
        assert any(m["p50_ms"] is not None for m in traffic["minutes"])
        assert len(traffic["minutes"]) == 60
        assert sorted(r["answered"] for r in traffic["relays"]) == [True] * 3

        # This relay's own series (what the others ask for): c served none.
        status, own = await get_json(http, c, f"/v1/connections/{conn_id}/traffic?scope=relay")
        assert status == 200
        assert own["series"] == []
        status, bad = await get_json(http, c, f"/v1/connections/{conn_id}/traffic?scope=all")
        assert status == 422, bad
        assert "scope" in str(bad)

        # b stops answering (paused, still in presence for relay_dead_after):
        # the chart shows a's part and names b as missing.
        assert b.proc is not None
        b.proc.send_signal(signal.SIGSTOP)
        try:
            status, traffic = await get_json(http, c, f"/v1/connections/{conn_id}/traffic")
        finally:
            b.proc.send_signal(signal.SIGCONT)
        assert status == 200
        assert sum(m["requests"] for m in traffic["minutes"]) == 5
        missing = [r["ssh"] for r in traffic["relays"] if not r["answered"]]
        assert missing == [f"127.0.0.1:{b.ssh_port}"]


@pytest.mark.timeout(120)
async def test_a_request_forwarded_for_the_tunnel_holds_one_slot_not_two(
    tmp_path: Path, three_relays: list[RelayProcess], fragile: FragileAPI
) -> None:
    """The agent's only tunnel is on a; b and c forward to it. The slot stays
    with the relay the caller reached, so a serves its own share and theirs."""
    a, b, c = three_relays
    fragile.delay = 0.3
    async with aiohttp.ClientSession() as http:
        await _sharing_over(http, three_relays, 3)
        status, created = await _call(http, a, "POST", "/v1/agents", json={"name": "one tunnel"})
        assert status == 201, created
        token = AgentToken.parse(created["token"])
        status, info = await _call(http, a, "GET", "/v1/relay")
        agent = await start_cluster_agent(
            tmp_path,
            "0",
            f"127.0.0.1:{a.ssh_port}",
            info["ssh_fingerprint"],
            token,
            [f"127.0.0.1:{fragile.port}"],
            max_relays="1",
        )
        try:

            async def online_on_c() -> bool:
                _, view = await _call(http, c, "GET", f"/v1/agents/{token.agent_id}")
                return bool(view["status"] == "online")

            await poll_until(online_on_c, 15, "the agent online through relay c")
            status, created = await _call(
                http,
                a,
                "POST",
                "/v1/connections",
                json={
                    "name": "fragile on premise",
                    "mode": "on_premise",
                    "agent_id": token.agent_id,
                    "http": {"base_uri": fragile.base, "concurrency_level": 3},
                },
            )
            assert status == 201, created
            assert await _burst(http, three_relays, created["id"], 18) == [200] * 18
            assert await _metric(http, b, 'sluice_forwarded_total{direction="out"}') >= 6
            # Counted once each: a's one slot does not also carry b's and c's requests.
            assert fragile.peak == 3, f"the API saw {fragile.peak} at once with level 3"
        finally:
            await agent.stop()
