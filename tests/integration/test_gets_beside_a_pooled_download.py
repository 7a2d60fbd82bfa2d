"""Small GETs beside a download on a long link, when the download runs on a
stream that carried one before (kept alive in the relay's pool with its
receive window grown; issue 22): each GET takes at most two round trips,
from the download's very start.

The download's peer (the agent) still holds the credit the stream's window
gave it, and sends it at once: a round trip's worth queues ahead of the
GETs, once. Beyond that the window must stay near what the link carries. A
grown stream that restarted slow start after sitting in the pool took its
first round as rising and quadrupled its window, up to the whole budget,
and the GETs beside waited 3-5 round trips behind that queue
(bench.long_link's later repetitions; make bench's p99 at 100 ms: 313 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from bench.delay_line import DelayLine
from server.relay import Relay
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.waiting import wait_until

RTT = 0.1
MiB = 1024 * 1024
TOKEN = "pooled-download-token-" + "p" * 16


async def _connection(client: APIClient, base: str, agent_id: str) -> str:
    remember_secret(TOKEN)
    document = {
        "name": "far api",
        "mode": "on_premise",
        "agent_id": agent_id,
        "http": {
            "base_uri": base,
            "media_type": "json",
            "auth": {"type": "token", "token": TOKEN, "location": "header"},
        },
    }
    answer = await client.call("POST", "/v1/connections", json_body=document)
    assert answer.status == 201, answer.text
    return str(answer.body["id"])


def _caller(
    http: aiohttp.ClientSession, proxy: str, headers: dict[str, str]
) -> Callable[[], Awaitable[float]]:
    async def hello() -> float:
        """One small GET through the relay's proxy route: how long it took, in seconds."""
        began = time.monotonic()
        async with http.get(f"{proxy}/hello", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["hello"] == "world"
        return time.monotonic() - began

    return hello


@pytest.mark.timeout(60)
async def test_gets_beside_a_download_on_a_pooled_stream(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    async with DelayLine.start(relay.ssh_address[1], RTT) as line:
        _, token = await start_agent(
            [f"127.0.0.1:{api.port}"], relay_address=f"127.0.0.1:{line.port}"
        )
        conn_id = await _connection(client, api.base, token.agent_id)
        proxy = f"{relay.http_base}/v1/connections/{conn_id}/proxy"
        headers = {"Authorization": f"Bearer {relay.admin_token}"}
        # Callers on connections of their own (the downloads', the GETs').
        async with aiohttp.ClientSession() as bulk_http, aiohttp.ClientSession() as get_http:
            hello = _caller(get_http, proxy, headers)
            # Two streams in the relay's pool: the downloads take the one the
            # last answer freed, the GETs the other.
            await asyncio.gather(hello(), _caller(bulk_http, proxy, headers)())
            # The first download fills the link: its window grows, and the
            # connection learns what it carries per round trip.
            async with bulk_http.get(f"{proxy}/blob/{128 * MiB}", headers=headers) as resp:
                assert resp.status == 200
                assert len(await resp.read()) == 128 * MiB
            await asyncio.sleep(5 * RTT)  # the scenario: the stream sits in the pool
            got = 0

            async def download() -> None:
                nonlocal got
                async with bulk_http.get(f"{proxy}/blob/{4096 * MiB}", headers=headers) as resp:
                    async for chunk in resp.content.iter_any():
                        got += len(chunk)

            bulk = asyncio.create_task(download())
            latencies: list[float] = []
            try:
                await wait_until(lambda: got > 0, timeout=10, what="the download's first bytes")
                # Through its first rounds (where slow start overshot) and beyond.
                began = time.monotonic()
                while time.monotonic() - began < 15 * RTT:
                    latencies.append(await hello())
                assert not bulk.done()
            finally:
                bulk.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await bulk
    shown = f"GETs (ms): {[round(t * 1000) for t in latencies]}, {got} bytes beside"
    assert len(latencies) >= 5, shown
    assert got > 32 * MiB, shown  # the download did run beside them
    # Two round trips, plus this busy process's own delays (relay, API and
    # delay line in one process): 0.13-0.20 s here at a load of 4 on two
    # cores. Slow start again from the grown window: 0.24-0.50 s (over the
    # bound in 6 of 7 runs).
    assert max(latencies) <= 2 * RTT + 0.05, shown
