"""Abuse by volume: one agent's traffic, or a failed-login storm, must not starve
another agent.

(a) A hostile or buggy caller fires FLOOD_REQUESTS requests at concurrency
    FLOOD_CONCURRENCY through agent A's connection. That connection sends
    ``Connection: close``, so the API ends every TCP connection after one
    answer and the relay opens a new SSH channel to agent A for each request:
    channels opened as fast as the relay can. Agent B's requests run the whole
    time, one after another; all must succeed, with p99 under P99_BOUND.
(b) A client hammers the relay's SSH door from 127.0.0.1 with bad-token
    logins (LOGIN_ATTEMPTS, LOGIN_CONCURRENCY at once) while agent B, already
    connected from the same address, stays online and keeps answering.

The numbers are printed (run with -s to see them). The test API runs as its
own process (tests.support.api_server), so it does not share the relay's
event loop; the agents are real sluice-agent processes.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest

from server.relay import Relay
from sluice import sshconfig
from tests.conftest import AgentFactory
from tests.support.capture import APIClient, remember_secret

# It measures what another test's load would skew: `make test` runs it alone.
pytestmark = pytest.mark.serial

REPO = Path(__file__).resolve().parents[2]
FLOOD_REQUESTS = 2000
FLOOD_CONCURRENCY = 200
LOGIN_ATTEMPTS = 300
LOGIN_CONCURRENCY = 50
P99_BOUND = 2.0  # seconds, for agent B's requests during the abuse
TOKEN = "flood-api-token-" + "f" * 16


@dataclass
class Latencies:
    """Agent B's requests while the abuse runs."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.seconds:
            return "no requests"
        return (
            f"{len(self.seconds)} requests, {len(self.failures)} failed; "
            f"p50 {self.p(50) * 1000:.1f} ms, p99 {self.p(99) * 1000:.1f} ms, "
            f"max {max(self.seconds) * 1000:.1f} ms"
        )

    def p(self, percent: int) -> float:
        if len(self.seconds) < 2:
            return self.seconds[0]
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[percent - 1]


@pytest.fixture
async def api_port() -> AsyncIterator[int]:
    """The test API in its own process; its port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.api_server",
        "--host",
        "127.0.0.1",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("READY"), line
        yield int(line.split()[1])
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def _connection(client: APIClient, agent_id: str, port: int, **http: Any) -> str:
    answer = await client.call(
        "POST",
        "/v1/connections",
        json_body={
            "name": f"flood {agent_id}",
            "mode": "on_premise",
            "agent_id": agent_id,
            "http": {"base_uri": f"http://127.0.0.1:{port}/", "auth": {"token": TOKEN}, **http},
        },
    )
    assert answer.status == 201, answer.text
    return str(answer.body["id"])


async def _measure_until(
    stop: asyncio.Event, call: Callable[[], Awaitable[int]], latencies: Latencies
) -> None:
    """Agent B's steady trickle: one request after another until *stop*."""
    while not stop.is_set():
        began = time.perf_counter()
        try:
            status = await call()
        except (aiohttp.ClientError, TimeoutError) as exc:
            latencies.failures.append(repr(exc))
        else:
            if status != 200:
                latencies.failures.append(f"HTTP {status}")
        latencies.seconds.append(time.perf_counter() - began)


def _proxy_call(
    session: aiohttp.ClientSession, relay: Relay, conn_id: str, path: str
) -> Callable[[], Awaitable[int]]:
    url = f"{relay.http_base}/v1/connections/{conn_id}/proxy/{path}"
    headers = {"Authorization": f"Bearer {relay.admin_token}"}
    timeout = aiohttp.ClientTimeout(total=15)

    async def call() -> int:
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            await resp.read()
            return resp.status

    return call


@pytest.mark.timeout(60)
async def test_one_agents_channel_flood_does_not_starve_another(
    relay: Relay, client: APIClient, api_port: int, start_agent: AgentFactory
) -> None:
    remember_secret(TOKEN)
    allow = [f"127.0.0.1:{api_port}"]
    (_, token_a), (_, token_b) = await asyncio.gather(start_agent(allow), start_agent(allow))
    flooded = await _connection(client, token_a.agent_id, api_port)
    steady = await _connection(client, token_b.agent_id, api_port)

    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=FLOOD_CONCURRENCY)
        ) as flood_http,
        aiohttp.ClientSession() as steady_http,
    ):
        probe = _proxy_call(steady_http, relay, steady, "hello")
        baseline = Latencies()
        for _ in range(50):
            began = time.perf_counter()
            assert await probe() == 200
            baseline.seconds.append(time.perf_counter() - began)

        # /bye closes its connection: every flood request opens a new channel.
        flood_call = _proxy_call(flood_http, relay, flooded, "bye")
        statuses: Counter[str] = Counter()
        queue = iter(range(FLOOD_REQUESTS))

        async def flooder() -> None:
            for _ in queue:
                try:
                    statuses[str(await flood_call())] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[type(exc).__name__] += 1

        during = Latencies()
        stop = asyncio.Event()
        measuring = asyncio.create_task(_measure_until(stop, probe, during))
        began = time.perf_counter()
        try:
            await asyncio.gather(*(flooder() for _ in range(FLOOD_CONCURRENCY)))
        finally:
            elapsed = time.perf_counter() - began
            stop.set()
            await measuring
    channels_a = sum(t.streams_total for t in relay.registry.replicas(token_a.agent_id))
    print(
        f"\nflood through agent A: {FLOOD_REQUESTS} requests at concurrency "
        f"{FLOOD_CONCURRENCY} in {elapsed:.1f} s ({FLOOD_REQUESTS / elapsed:.0f}/s), "
        f"{channels_a} channels opened to A, answers {dict(statuses)}"
    )
    print(f"agent B before: {baseline.summary()}")
    print(f"agent B during: {during.summary()}")
    assert sum(statuses.values()) == FLOOD_REQUESTS
    assert "500" not in statuses, statuses
    assert channels_a >= FLOOD_REQUESTS // 2, "the flood did not open a channel per request"
    assert len(during.seconds) >= 10, during.summary()
    assert not during.failures, during.failures[:5]
    assert during.p(99) < P99_BOUND, during.summary()
    assert relay.registry.is_online(token_a.agent_id)
    assert relay.registry.is_online(token_b.agent_id)


async def _bad_login(relay: Relay, password: str) -> str:
    host, port = relay.ssh_address
    try:
        async with asyncio.timeout(20):
            conn = await asyncssh.connect(
                host,
                port,
                username=sshconfig.AGENT_USERNAME,
                password=password,
                known_hosts=None,
                client_keys=None,
                agent_path=None,
                config=None,
                preferred_auth=["password"],
            )
    except asyncssh.PermissionDenied:
        return "refused at login"
    except (asyncssh.DisconnectError, asyncssh.ConnectionLost, ConnectionError):
        return "cut off (banned)"
    except TimeoutError:
        return "timed out"
    conn.close()
    return "LOGGED IN"


@pytest.mark.timeout(60)
async def test_failed_login_storm_does_not_disturb_a_connected_agent(
    relay: Relay, client: APIClient, api_port: int, start_agent: AgentFactory
) -> None:
    remember_secret(TOKEN)
    _, token_b = await start_agent([f"127.0.0.1:{api_port}"])
    steady = await _connection(client, token_b.agent_id, api_port)
    _, victim = await relay.store.create_agent("guessed")
    # Well-formed tokens for a real agent id with wrong secrets, and garbage.
    guesses = [
        f"slc_{victim.agent_id}_{'x' * 39}{i % 10}" if i % 2 else f"guess-{i}"
        for i in range(LOGIN_ATTEMPTS)
    ]
    outcomes: Counter[str] = Counter()
    pending = iter(guesses)

    async def attacker() -> None:
        for guess in pending:
            outcomes[await _bad_login(relay, guess)] += 1

    async with aiohttp.ClientSession() as steady_http:
        probe = _proxy_call(steady_http, relay, steady, "hello")
        during = Latencies()
        stop = asyncio.Event()
        measuring = asyncio.create_task(_measure_until(stop, probe, during))
        began = time.perf_counter()
        try:
            await asyncio.gather(*(attacker() for _ in range(LOGIN_CONCURRENCY)))
        finally:
            elapsed = time.perf_counter() - began
            stop.set()
            await measuring
    # Bans are per source address: a new, legitimate login from the same
    # address is turned away too until the ban ends (docs/SECURITY.md).
    _, fresh = await relay.store.create_agent("fresh")
    remember_secret(str(fresh))
    lockout = await _bad_login(relay, str(fresh))
    print(
        f"\nfailed-login storm: {LOGIN_ATTEMPTS} attempts, {LOGIN_CONCURRENCY} at once, "
        f"in {elapsed:.1f} s: {dict(outcomes)}"
    )
    print(f"agent B during: {during.summary()}")
    print(f"a valid token from the same address right after: {lockout}")
    assert outcomes["LOGGED IN"] == 0
    assert sum(outcomes.values()) == LOGIN_ATTEMPTS
    # The ban cuts the storm short: most attempts never get to present a password.
    assert outcomes["cut off (banned)"] > outcomes["refused at login"], outcomes
    assert relay.registry.is_online(token_b.agent_id)
    assert not during.failures, during.failures[:5]
    assert during.p(99) < P99_BOUND, during.summary()
