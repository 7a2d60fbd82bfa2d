"""Relays on one PostgreSQL database as one cluster, run as processes."""

from __future__ import annotations

import asyncio
import hashlib
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
from tests.support.capture import remember_secret
from tests.support.cluster import cluster_relay, get_json, master_key, start_cluster_agent
from tests.support.ports import free_ports
from tests.support.relay_process import BIN, RelayProcess
from tests.support.waiting import poll_until

ADMIN = "slcadm_cluster_" + os.urandom(12).hex()


async def _create_agent(http: aiohttp.ClientSession, relay: RelayProcess) -> AgentToken:
    async with http.post(
        relay.base + "/v1/agents",
        json={"name": "cluster agent"},
        headers={"Authorization": f"Bearer {relay.admin_token}"},
    ) as resp:
        assert resp.status == 201
        return AgentToken.parse((await resp.json())["token"])


async def _fingerprint(http: aiohttp.ClientSession, relay: RelayProcess) -> str:
    status, body = await get_json(http, relay, "/v1/relay")
    assert status == 200
    return str(body["ssh_fingerprint"])


async def _view(http: aiohttp.ClientSession, relay: RelayProcess, agent_id: str) -> dict[str, Any]:
    status, body = await get_json(http, relay, f"/v1/agents/{agent_id}")
    assert status == 200, body
    return dict(body)


async def _metric(http: aiohttp.ClientSession, relay: RelayProcess, series: str) -> float:
    auth = {"Authorization": f"Bearer {relay.admin_token}"}
    async with http.get(relay.base + "/metrics", headers=auth) as resp:
        assert resp.status == 200
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.timeout(150)
async def test_presence_is_the_same_through_every_relay_and_a_dead_relays_expires(
    tmp_path: Path, cluster_database: str, api: InternalAPI
) -> None:
    key = master_key()
    a = cluster_relay(tmp_path, "a", cluster_database, key, ADMIN)
    b = cluster_relay(tmp_path, "b", cluster_database, key, ADMIN)
    await a.start()
    await b.start()
    try:
        async with aiohttp.ClientSession() as http:
            token = await _create_agent(http, a)
            assert await _fingerprint(http, a) == await _fingerprint(http, b)
            agent = await start_cluster_agent(
                tmp_path,
                "0",
                f"127.0.0.1:{a.ssh_port}",
                await _fingerprint(http, b),
                token,
                [f"127.0.0.1:{api.port}"],
                max_relays="1",  # one tunnel, as an agent of the previous version keeps
            )
            try:

                async def online_on_b() -> bool:
                    return bool((await _view(http, b, token.agent_id))["status"] == "online")

                await poll_until(online_on_b, 15, "the agent online through relay B")
                view_a = await _view(http, a, token.agent_id)
                view_b = await _view(http, b, token.agent_id)
                assert [r["relay"] for r in view_b["replicas"]] == [f"127.0.0.1:{a.ssh_port}"]
                assert [(r["relay"], r["peer"]) for r in view_a["replicas"]] == [
                    (r["relay"], r["peer"]) for r in view_b["replicas"]
                ]
                assert view_a["replicas"][0]["streams_in_flight"] == 0  # A's own
                assert view_b["replicas"][0]["streams_in_flight"] is None  # held elsewhere

                await a.stop(signal.SIGKILL)

                async def offline_on_b() -> bool:
                    view = await _view(http, b, token.agent_id)
                    return view["status"] == "offline" and not view["replicas"]

                assert await poll_until(offline_on_b, 10, "A's presence to expire") < 10
            finally:
                await agent.stop()
    finally:
        for relay in (a, b):
            if relay.proc is not None and relay.proc.returncode is None:
                await relay.stop()


async def _connection(
    http: aiohttp.ClientSession, relay: RelayProcess, agent_id: str, api: InternalAPI
) -> str:
    async with http.post(
        relay.base + "/v1/connections",
        json={
            "name": "through the cluster",
            "mode": "on_premise",
            "agent_id": agent_id,
            "http": {"base_uri": f"{api.base}/"},
        },
        headers={"Authorization": f"Bearer {relay.admin_token}"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])


@pytest.mark.timeout(150)
async def test_a_relay_without_the_tunnel_forwards_to_one_with_it(
    tmp_path: Path, cluster_database: str, api: InternalAPI
) -> None:
    key = master_key()
    a = cluster_relay(tmp_path, "a", cluster_database, key, ADMIN)
    b = cluster_relay(tmp_path, "b", cluster_database, key, ADMIN)
    await a.start()
    await b.start()
    try:
        async with aiohttp.ClientSession() as http:
            token = await _create_agent(http, a)
            agent = await start_cluster_agent(
                tmp_path,
                "0",
                f"127.0.0.1:{a.ssh_port}",
                await _fingerprint(http, a),
                token,
                [f"127.0.0.1:{api.port}"],
                max_relays="1",  # one tunnel, as an agent of the previous version keeps
            )
            try:

                async def online_on_b() -> bool:
                    return bool((await _view(http, b, token.agent_id))["status"] == "online")

                await poll_until(online_on_b, 15, "the agent online through relay B")
                conn_id = await _connection(http, b, token.agent_id, api)
                auth = {"Authorization": f"Bearer {ADMIN}"}
                # B holds no tunnel: every request, small or streamed, goes through A.
                async with http.get(
                    f"{b.base}/v1/connections/{conn_id}/proxy/hello?x=1", headers=auth
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers.getall("Sluice-Connection") == [conn_id]
                    assert (await resp.json())["path"] == "/hello?x=1"
                body = os.urandom(3 * 1024 * 1024)

                async def upload() -> AsyncIterator[bytes]:
                    for i in range(0, len(body), 65536):
                        yield body[i : i + 65536]

                async with http.post(
                    f"{b.base}/v1/connections/{conn_id}/proxy/echo",
                    data=upload(),
                    headers=auth,
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    echoed = await resp.json()
                assert echoed["bytes"] == len(body)
                assert echoed["sha256"] == hashlib.sha256(body).hexdigest()
                async with http.get(
                    f"{b.base}/v1/connections/{conn_id}/proxy/blob/{5 * 1024 * 1024}",
                    headers=auth,
                ) as resp:
                    assert resp.status == 200
                    assert len(await resp.read()) == 5 * 1024 * 1024

                # B served all three by forwarding them to A.
                assert await _metric(http, b, 'sluice_forwarded_total{direction="out"}') == 3
                assert await _metric(http, a, 'sluice_forwarded_total{direction="in"}') == 3
                assert await _replica_relays(http, b, token.agent_id) == {f"127.0.0.1:{a.ssh_port}"}

                # The hop header is no way in without the cluster's key.
                forged = {"Sluice-Relay-Hop": f"rly_x.{int(time.time())}.{'0' * 64}"}
                async with http.get(
                    f"{b.base}/v1/connections/{conn_id}/proxy/hello", headers=forged
                ) as resp:
                    assert resp.status == 401
            finally:
                await agent.stop()

            async def offline_everywhere() -> bool:
                async with http.get(
                    f"{b.base}/v1/connections/{conn_id}/proxy/hello", headers=auth
                ) as resp:
                    if resp.status != 503:
                        return False
                    return bool((await resp.json())["type"] == "agent_offline")

            await poll_until(offline_everywhere, 10, "agent_offline once no relay holds it")
    finally:
        for relay in (a, b):
            if relay.proc is not None and relay.proc.returncode is None:
                await relay.stop()


@pytest.mark.timeout(90)
async def test_the_connection_test_on_a_relay_without_the_tunnel_pings_through_one_with_it(
    tmp_path: Path, cluster_database: str, api: InternalAPI
) -> None:
    key = master_key()
    a = cluster_relay(tmp_path, "a", cluster_database, key, ADMIN)
    b = cluster_relay(tmp_path, "b", cluster_database, key, ADMIN)
    await a.start()
    await b.start()
    try:
        async with aiohttp.ClientSession() as http:
            token = await _create_agent(http, a)
            agent = await start_cluster_agent(
                tmp_path,
                "0",
                f"127.0.0.1:{a.ssh_port}",
                await _fingerprint(http, a),
                token,
                [f"127.0.0.1:{api.port}"],
                max_relays="1",  # A alone holds the agent's tunnel
            )
            try:

                async def online_on_b() -> bool:
                    return bool((await _view(http, b, token.agent_id))["status"] == "online")

                await poll_until(online_on_b, 15, "the agent online through relay B")
                auth = {"Authorization": f"Bearer {ADMIN}"}
                async with http.post(
                    b.base + "/v1/connections",
                    json={
                        "name": "tested through the cluster",
                        "mode": "on_premise",
                        "agent_id": token.agent_id,
                        "http": {"base_uri": f"{api.base}/", "ping": {"relative_uri": "hello"}},
                    },
                    headers=auth,
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    conn_id = str((await resp.json())["id"])
                before = len(api.seen)
                async with http.post(
                    f"{b.base}/v1/connections/{conn_id}/test", headers=auth
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    result = await resp.json()
                assert (result["ok"], result["status"]) == (True, 200), result
                # The ping reached the API, through A's tunnel (B has none).
                assert [r.path for r in api.seen[before:]] == ["/hello"]
                assert await _metric(http, a, 'sluice_forwarded_total{direction="in"}') == 1
                assert await _replica_relays(http, b, token.agent_id) == {f"127.0.0.1:{a.ssh_port}"}
            finally:
                await agent.stop()
    finally:
        for relay in (a, b):
            if relay.proc is not None and relay.proc.returncode is None:
                await relay.stop()


async def _replica_relays(
    http: aiohttp.ClientSession, relay: RelayProcess, agent_id: str
) -> set[str]:
    view = await _view(http, relay, agent_id)
    return {r["relay"] for r in view["replicas"] if not r["draining"]}


@pytest.mark.timeout(150)
async def test_an_agent_given_one_relay_tunnels_to_every_relay_and_follows_membership(
    tmp_path: Path, cluster_database: str, api: InternalAPI
) -> None:
    key = master_key()
    relays = [cluster_relay(tmp_path, name, cluster_database, key, ADMIN) for name in "abc"]
    # C advertises an address the agent cannot reach: it must still serve, by forwarding.
    unreachable = cluster_relay(
        tmp_path, "d", cluster_database, key, ADMIN, advertise_ssh="127.0.0.1:9"
    )
    a, b, c = relays
    for relay in relays:
        await relay.start()
    try:
        async with aiohttp.ClientSession() as http:
            token = await _create_agent(http, a)
            agent = await start_cluster_agent(
                tmp_path,
                "0",
                f"127.0.0.1:{a.ssh_port}",
                await _fingerprint(http, a),
                token,
                [f"127.0.0.1:{api.port}"],
                discovery_interval="0.3",
            )
            everyone = {f"127.0.0.1:{r.ssh_port}" for r in relays}
            try:

                async def on_all() -> bool:
                    return await _replica_relays(http, b, token.agent_id) == everyone

                await poll_until(on_all, 15, "a tunnel to each of the three relays")
                conn_id = await _connection(http, a, token.agent_id, api)
                auth = {"Authorization": f"Bearer {ADMIN}"}
                for relay in relays:
                    async with http.get(
                        f"{relay.base}/v1/connections/{conn_id}/proxy/hello", headers=auth
                    ) as resp:
                        assert resp.status == 200, await resp.text()

                # A fourth relay joins, whose advertised address is unreachable.
                await unreachable.start()
                async with http.get(
                    f"{unreachable.base}/v1/connections/{conn_id}/proxy/hello", headers=auth
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["Sluice-Connection"] == conn_id
                await unreachable.stop()

                # A relay leaves: its tunnel goes, the others stay.
                await c.stop()
                remaining = everyone - {f"127.0.0.1:{c.ssh_port}"}

                async def without_c() -> bool:
                    return await _replica_relays(http, a, token.agent_id) == remaining

                await poll_until(without_c, 10, "the agent to follow C's departure")
                # And it comes back.
                await c.start()
                await poll_until(on_all, 10, "the agent back on C")
            finally:
                await agent.stop()
    finally:
        for relay in (*relays, unreachable):
            if relay.proc is not None and relay.proc.returncode is None:
                await relay.stop()


@pytest.mark.timeout(150)
async def test_three_relays_a_killed_one_fails_nothing_elsewhere_and_changes_reach_all(
    tmp_path: Path, cluster_database: str, api: InternalAPI
) -> None:
    key = master_key()
    relays = [cluster_relay(tmp_path, name, cluster_database, key, ADMIN) for name in "abc"]
    a, b, c = relays
    for relay in relays:
        await relay.start()
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        async with aiohttp.ClientSession() as http:
            token = await _create_agent(http, a)
            agent = await start_cluster_agent(
                tmp_path,
                "0",
                f"127.0.0.1:{a.ssh_port}",
                await _fingerprint(http, a),
                token,
                [f"127.0.0.1:{api.port}"],
                discovery_interval="0.3",
            )
            everyone = {f"127.0.0.1:{r.ssh_port}" for r in relays}
            try:

                async def on_all() -> bool:
                    return await _replica_relays(http, c, token.agent_id) == everyone

                await poll_until(on_all, 15, "a tunnel to each of the three relays")
                conn_id = await _connection(http, a, token.agent_id, api)

                # Requests flow through B and C while A is killed.
                results: dict[str, list[int]] = {"b": [], "c": []}
                stop = asyncio.Event()

                async def load(name: str, relay: RelayProcess) -> None:
                    while not stop.is_set():
                        async with http.get(
                            f"{relay.base}/v1/connections/{conn_id}/proxy/hello", headers=auth
                        ) as resp:
                            await resp.read()
                            results[name].append(resp.status)

                loaders = [
                    asyncio.ensure_future(load("b", b)),
                    asyncio.ensure_future(load("c", c)),
                ]
                try:
                    await poll_until(
                        lambda: _true(len(results["b"]) > 20), 10, "requests through B"
                    )
                    await a.stop(signal.SIGKILL)
                    killed_at = time.monotonic()

                    async def a_gone() -> bool:
                        return f"127.0.0.1:{a.ssh_port}" not in await _replica_relays(
                            http, b, token.agent_id
                        )

                    await poll_until(a_gone, 10, "A's presence to expire")
                    assert time.monotonic() - killed_at < 10
                finally:
                    stop.set()
                    await asyncio.gather(*loaders)
                assert len(results["b"]) > 20
                assert len(results["c"]) > 20
                assert set(results["b"]) == {200}, results["b"]
                assert set(results["c"]) == {200}, results["c"]

                # A comes back: the agent is on it again within 30 s.
                await a.start()
                assert await poll_until(on_all, 30, "the agent back on A") < 30

                # An edit through A is what the next request through C uses.
                for value in ("one", "two", "three"):
                    async with http.patch(
                        f"{a.base}/v1/connections/{conn_id}",
                        json={"http": {"headers": [{"name": "X-Version", "value": value}]}},
                        headers=auth,
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                    async with http.get(
                        f"{c.base}/v1/connections/{conn_id}/proxy/hello", headers=auth
                    ) as resp:
                        assert resp.status == 200
                    assert api.seen[-1].headers["X-Version"] == value

                # A token rotated through B takes the agent offline on every relay.
                async with http.post(
                    f"{b.base}/v1/agents/{token.agent_id}/rotate-token", headers=auth
                ) as resp:
                    assert resp.status == 200
                    remember_secret((await resp.json())["token"])
                rotated_at = time.monotonic()

                async def offline_everywhere() -> bool:
                    for relay in relays:
                        view = await _view(http, relay, token.agent_id)
                        if view["status"] != "offline" or view["replicas"]:
                            return False
                    return True

                await poll_until(offline_everywhere, 5, "the agent offline on every relay")
                assert time.monotonic() - rotated_at < 5
            finally:
                await agent.stop()
    finally:
        for relay in relays:
            if relay.proc is not None and relay.proc.returncode is None:
                await relay.stop()


async def _true(value: bool) -> bool:
    return value


@pytest.mark.timeout(150)
async def test_workers_share_the_api_port_and_each_has_an_ssh_port(
    tmp_path: Path, cluster_database: str, api: InternalAPI
) -> None:
    key = master_key()
    ssh_port = free_ports(2)
    relay = cluster_relay(
        tmp_path,
        "w",
        cluster_database,
        key,
        ADMIN,
        ssh_listen=f"127.0.0.1:{ssh_port}",
        cluster_listen="",  # a port of the system's choosing for each worker
    )
    assert relay.proc is None
    with relay.log_path.open("ab") as out:
        relay.proc = await asyncio.create_subprocess_exec(
            str(BIN / "sluice-server"),
            "run",
            "--workers",
            "2",
            env=relay.env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as http:

            async def two_members() -> bool:
                try:
                    status, body = await get_json(http, relay, "/v1/cluster")
                except aiohttp.ClientError:
                    return False
                return status == 200 and len(body["relays"]) == 2

            await poll_until(two_members, 30, "two workers in the cluster")
            _, body = await get_json(http, relay, "/v1/cluster")
            ssh = sorted(r["ssh"] for r in body["relays"])
            assert ssh == [f"127.0.0.1:{ssh_port}", f"127.0.0.1:{ssh_port + 1}"]
            # The kernel spreads callers over both workers.
            answering = set()
            for _ in range(60):
                async with aiohttp.ClientSession() as fresh:  # a new connection each time
                    _, one = await get_json(fresh, relay, "/v1/cluster")
                    answering.add(one["relay"])
            assert answering == {r["id"] for r in body["relays"]}

            token = await _create_agent(http, relay)
            agent = await start_cluster_agent(
                tmp_path,
                "0",
                ssh[0],
                await _fingerprint(http, relay),
                token,
                [f"127.0.0.1:{api.port}"],
                discovery_interval="0.3",
            )
            try:

                async def on_both() -> bool:
                    return await _replica_relays(http, relay, token.agent_id) == set(ssh)

                await poll_until(on_both, 15, "a tunnel to each worker")
                conn_id = await _connection(http, relay, token.agent_id, api)
                auth = {"Authorization": f"Bearer {ADMIN}"}
                for _ in range(20):
                    async with (
                        aiohttp.ClientSession() as fresh,
                        fresh.get(
                            f"{relay.base}/v1/connections/{conn_id}/proxy/hello", headers=auth
                        ) as resp,
                    ):
                        assert resp.status == 200
            finally:
                await agent.stop()
    finally:
        assert await relay.stop() == 0
