"""Traffic control across a relay cluster (three relay processes on PostgreSQL):
a rate limit seen by one relay pauses the connection on all of them and the
API sees one probe per window, one relay runs the health schedule, and an
agent tunnelled to another relay is not offline."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sluice.tokens import AgentToken
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.cluster import cluster_relay, master_key, start_cluster_agent
from tests.support.fragile_api import FragileAPI
from tests.support.relay_process import RelayProcess
from tests.support.waiting import poll_until

ADMIN = "slcadm_traffic_" + os.urandom(12).hex()
TOKEN = "tok-" + "k" * 20


@pytest.fixture
async def relays(tmp_path: Path, cluster_database: str) -> AsyncIterator[list[RelayProcess]]:
    key = master_key()
    remember_secret(TOKEN)
    started = [
        cluster_relay(
            tmp_path,
            name,
            cluster_database,
            key,
            ADMIN,
            allow_private_destinations="true",
            health_min_interval_seconds="0.2",
        )
        for name in "abc"
    ]
    try:
        # One after the other: the first creates the schema.
        for relay in started:
            await relay.start()
        yield started
    finally:
        for relay in started:
            if relay.proc is not None and relay.proc.returncode is None:
                await relay.stop()


@pytest.fixture
async def clients(relays: list[RelayProcess]) -> AsyncIterator[list[APIClient]]:
    async with aiohttp.ClientSession() as session:
        yield [APIClient(session, r.base, r.admin_token) for r in relays]


async def _metric(client: APIClient, name: str) -> float:
    metrics = await client.call("GET", "/metrics")
    for line in metrics.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


async def _create(client: APIClient, document: dict[str, Any]) -> str:
    created = await client.call("POST", "/v1/connections", json_body=document)
    assert created.status == 201, created.text
    return str(created.body["id"])


def _cloud(api: FragileAPI, **http: Any) -> dict[str, Any]:
    return {
        "name": "fragile",
        "mode": "cloud",
        "http": {
            "base_uri": api.base,
            "auth": {"type": "token", "token": TOKEN, "scheme": "Bearer"},
            **http,
        },
    }


async def _gates_are(clients: list[APIClient], count: int) -> bool:
    return all([await _metric(c, "sluice_rate_limit_gates") == count for c in clients])


@pytest.mark.timeout(120)
async def test_one_limit_pauses_every_relay_and_the_api_sees_one_probe_per_window(
    relays: list[RelayProcess], clients: list[APIClient], fragile: FragileAPI
) -> None:
    a, b, c = clients
    # The first answer is a limit, and so is the first probe after it.
    fragile.limit_next = 2
    conn_id = await _create(a, _cloud(fragile, rate_limit={"max_retries": 5}))
    path = f"/v1/connections/{conn_id}/proxy/limited"
    first = asyncio.ensure_future(a.call("GET", path))
    # Relays B and C hear of A's limit (their gates close to its deadline).
    await poll_until(lambda: _gates_are([b, c], 1), 5, "B and C to close their gates")
    assert fragile.limited == 1
    # Callers on all three relays at once, while the connection is limited.
    others = [asyncio.ensure_future(r.call("GET", path)) for r in (a, b, c) for _ in range(3)]
    answers = await asyncio.gather(first, *others)
    assert [x.status for x in answers] == [200] * 10
    assert all(x.headers["Sluice-Retries"] in ("0", "1", "2") for x in answers)
    assert answers[0].headers["Sluice-Retries"] in ("1", "2")
    # One probe for the whole cluster per window: the second limit came from
    # the single probe at the first window's end, and nothing arrived inside
    # either window.
    assert fragile.early == 0, "a request reached the API inside a limit window"
    assert fragile.limited == 2
    assert len(fragile.arrivals) == 12  # ten callers, the first limit, the limited probe
    # Done: no relay holds a gate any more.
    await poll_until(lambda: _gates_are(clients, 0), 5, "every gate dropped")

    # A connection deleted through B frees its gates on every relay.
    fragile.limit_next, fragile.retry_seconds = 1, 30
    other = await _create(a, _cloud(fragile, rate_limit={"max_retries": 0}))
    limited = await a.call("GET", f"/v1/connections/{other}/proxy/limited")
    assert limited.status == 429
    await poll_until(lambda: _gates_are(clients, 1), 5, "the limit to reach every relay")
    # A relay starting while a limit is in force reads it: its gate is closed at once.
    await relays[2].stop()
    await relays[2].start()
    assert await _metric(c, "sluice_rate_limit_gates") == 1
    # An edit of rate_limit through B opens the connection on every relay:
    # requests through A (which had the limit) and C go at once, and the
    # API's 429, no limit under the new rule, comes straight back.
    edited = await b.call(
        "PATCH",
        f"/v1/connections/{other}",
        json_body={"http": {"rate_limit": {"max_retries": 0, "fail_status": 503}}},
    )
    assert edited.status == 200, edited.text
    began = time.monotonic()
    again = await asyncio.gather(
        *(r.call("GET", f"/v1/connections/{other}/proxy/limited") for r in (a, c))
    )
    assert [x.status for x in again] == [429, 429]
    assert time.monotonic() - began < 5
    assert (await b.call("DELETE", f"/v1/connections/{other}")).status == 204
    await poll_until(lambda: _gates_are(clients, 0), 5, "the deleted connection's gates dropped")


async def _leaders(clients: list[APIClient]) -> list[float]:
    return [await _metric(c, "sluice_health_leader") for c in clients]


@pytest.mark.timeout(150)
async def test_one_relay_pings_and_another_takes_over_when_it_dies(
    relays: list[RelayProcess], clients: list[APIClient], fragile: FragileAPI
) -> None:
    interval = 0.3
    conn_id = await _create(
        clients[0],
        _cloud(
            fragile,
            ping={"method": "GET", "relative_uri": "/health", "error_path": "detail"},
            health={"interval_seconds": interval},
        ),
    )

    async def one_leader() -> bool:
        return sorted(await _leaders(clients)) == [0.0, 0.0, 1.0]

    await poll_until(lambda: _true(bool(fragile.health_bodies)), 10, "the first scheduled ping")
    # The time ten more pings take says how many relays ping: one relay needs
    # nine intervals between them (2.7 s), three relays a third of that.
    seen = len(fragile.health_bodies)
    took = await poll_until(
        lambda: _true(len(fragile.health_bodies) >= seen + 10), 15, "ten more scheduled pings"
    )
    assert 9 * interval * 0.75 <= took <= 9 * interval * 2.5, f"ten pings in {took:.2f} s"
    await poll_until(one_leader, 5, "one relay to lead the health schedule")
    leader = (await _leaders(clients)).index(1.0)

    await relays[leader].stop(signal.SIGKILL)
    rest = [c for i, c in enumerate(clients) if i != leader]

    async def new_leader() -> bool:
        return sorted(await _leaders(rest)) == [0.0, 1.0]

    took = await poll_until(new_leader, 10, "another relay to take the schedule over")
    assert took < 3
    seen = len(fragile.health_bodies)
    await poll_until(
        lambda: _true(len(fragile.health_bodies) >= seen + 3), 5, "pings from the new leader"
    )

    # Every relay's API shows the same status: the checks are in the database.
    fragile.up = False

    async def offline_everywhere() -> bool:
        views = [(await c.call("GET", f"/v1/connections/{conn_id}")).body for c in rest]
        return all(v["status"] == "offline" and v["last_error"] == "maintenance" for v in views)

    await poll_until(offline_everywhere, 10, "offline through every relay")
    down = f'sluice_connection_up{{connection="{conn_id}"}} 0.0'

    async def down_in_every_metrics() -> bool:
        return all([down in (await c.call("GET", "/metrics")).text for c in rest])

    await poll_until(down_in_every_metrics, 5, "sluice_connection_up 0 on every relay")


async def _true(value: bool) -> bool:
    return value


@pytest.mark.timeout(120)
async def test_an_agent_tunnelled_to_another_relay_is_not_offline(
    tmp_path: Path, relays: list[RelayProcess], clients: list[APIClient], api: InternalAPI
) -> None:
    a, b, _c = clients
    created = await a.call("POST", "/v1/agents", json_body={"name": "held by A"}, shows_token=True)
    assert created.status == 201
    token = AgentToken.parse(created.body["token"])
    fingerprint = (await a.call("GET", "/v1/relay")).body["ssh_fingerprint"]
    agent = await start_cluster_agent(
        tmp_path,
        "0",
        f"127.0.0.1:{relays[0].ssh_port}",
        fingerprint,
        token,
        [f"127.0.0.1:{api.port}"],
        max_relays="1",  # one tunnel, to A only
    )
    try:
        conn_id = await _create(
            a,
            {
                "name": "on-prem",
                "mode": "on_premise",
                "agent_id": token.agent_id,
                "http": {"base_uri": api.base, "ping": {"method": "GET", "relative_uri": "/hello"}},
            },
        )

        async def tested() -> bool:
            answer = await a.call("POST", f"/v1/connections/{conn_id}/test")
            return bool(answer.body["ok"])

        await poll_until(tested, 10, "the agent's tunnel to A")

        async def online_through_b() -> bool:
            view = (await b.call("GET", f"/v1/connections/{conn_id}")).body
            return bool(view["status"] == "online")

        await poll_until(online_through_b, 5, "B to show the connection online")

        # The debug log, opened through B: a request through B goes to A (the
        # agent's tunnel) and is one entry, as A sent it to the API. A reads the
        # window opened through B within a second, so requests go until it records.
        started = await b.call("POST", f"/v1/connections/{conn_id}/debug", json_body={"minutes": 5})
        assert started.status == 200, started.text

        async def entries() -> list[dict[str, Any]]:
            log = await b.call("GET", f"/v1/connections/{conn_id}/debug-log")
            return list(log.body["entries"])

        sent = 0

        async def recorded() -> bool:
            nonlocal sent
            sent += 1
            proxied = await b.call("GET", f"/v1/connections/{conn_id}/proxy/hello?via=b{sent}")
            assert proxied.status == 200
            return bool(await entries())

        await poll_until(recorded, 10, "A to record the window opened through B")
        proxied = await b.call("GET", f"/v1/connections/{conn_id}/proxy/hello?via=b")
        assert proxied.status == 200
        last = f"{api.base}/hello?via=b"

        async def last_recorded() -> bool:
            return any(e["request"].get("url") == last for e in await entries())

        await poll_until(last_recorded, 5, "the last request's entry")
        urls = [e["request"].get("url") for e in await entries()]
        assert urls.count(last) == 1, urls
        assert None not in urls, urls  # no second entry from the forwarding relay
        assert len(urls) == len(set(urls)), urls
        entry = next(e for e in await entries() if e["request"].get("url") == last)
        assert entry["sends"] == 1
        assert entry["answer"]["status"] == 200
        await agent.stop()

        async def offline_through_b() -> bool:
            view = (await b.call("GET", f"/v1/connections/{conn_id}")).body
            reason = str(view["last_error"] or "")
            return bool(view["status"] == "offline" and reason.startswith("agent_offline"))

        await poll_until(offline_through_b, 10, "B to show the agent offline")
    finally:
        await agent.stop()
