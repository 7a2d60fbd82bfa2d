"""What the agent's request handling costs per small request (issue 22): the
real agent, counted by ``bench/calls_site`` (``sys.setprofile`` in the agent
process, started and stopped by signals, as ``python -m bench.calls`` does),
while a caller sends repeated GETs of a small answer through the relay.

The calls into ``agent/proxy.py`` per request stay within a budget: the
request written on to the API (``ChannelProxy.data_received``), the answer
read (``_Upstream.get_buffer``, which sizes the read itself) and handed
to the channel (``upstream_data``, bound as the upstream's ``buffer_updated``).
And none into ``sluice/window_tuning.py``: on a link its setup showed short
(loopback) a stream's window stays as it starts (``ShortWindow``), and is fed
only while its reader holds the stream back (the tuner's ``received`` ran for
every request before, about 90 bytecodes and a call).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import bench
from tests.conftest import AgentFactory
from tests.support.capture import APIClient
from tests.support.raw_api import fixed_answer, raw_api
from tests.support.waiting import wait_until

SITE = Path(bench.__file__).parent / "calls_site"
BODY = b'{"ok": true}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
AGENT_PROXY = "(agent/proxy.py:"
# data_received, get_buffer, upstream_data (no read_size; the loop calls
# upstream_data as the upstream protocol's buffer_updated, not through it).
AGENT_PROXY_CALLS = 3
WINDOW_TUNING = "(sluice/window_tuning.py:"
REQUESTS = 30
# An agent whose setup showed a link that may be long (its ready request's
# round trip past the tuner's LONG, 4 ms, on a busy machine; on loopback
# 0.3-1 ms: its tunnel_up line says) is the case this test is not about:
# another agent is started then (up to this many in all).
AGENTS = 3
# (Those round trips are what another test's load stretches.)
pytestmark = pytest.mark.serial


async def test_the_agent_makes_few_calls_per_small_request(
    client: APIClient, start_agent: AgentFactory, tmp_path: Path
) -> None:
    timed_long: list[str] = []
    called: dict[str, int] | None = None
    async for raw in raw_api(fixed_answer(ANSWER)):
        for attempt in range(AGENTS):
            counted = tmp_path / f"agent-{attempt}"
            counted.mkdir()
            agent, token = await start_agent(
                [f"127.0.0.1:{raw.port}"],
                process_env={
                    "PYTHONPATH": os.pathsep.join(
                        [str(SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
                    ),
                    "SLUICE_BENCH_CALLS": "agent",
                    "SLUICE_BENCH_CALLS_DIR": str(counted),
                },
            )
            up = await _tunnel_up(agent.log_path)
            if not up["short_link"]:
                timed_long.append(up["connect_ms"])
                await agent.stop()
                continue
            created = await client.call(
                "POST",
                "/v1/connections",
                json_body={
                    "name": f"agent calls {attempt}",
                    "mode": "on_premise",
                    "agent_id": token.agent_id,
                    "http": {"base_uri": f"http://127.0.0.1:{raw.port}"},
                },
            )
            assert created.status == 201, created.text
            conn_id = created.body["id"]
            counts = await _count(client, conn_id, agent.pid, counted / "calls-agent.txt")
            rows = [line.split(" ", 1) for line in counts.splitlines() if line]
            called = {name: int(n) for n, name in rows}
            break

    assert called is not None, f"no agent's setup timed the loopback short: {timed_long} ms"
    # On a link its setup showed short, no window code per request.
    tuning = {name: n for name, n in called.items() if WINDOW_TUNING in name}
    assert tuning == {}, tuning
    # The requests counted: each small request reaches the agent's
    # data_received once (counting starts when the agent takes the signal).
    requests = sum(
        n for name, n in called.items() if name.startswith("data_received " + AGENT_PROXY)
    )
    assert requests >= REQUESTS // 2, called
    proxy = {name: n for name, n in called.items() if AGENT_PROXY in name}
    assert sum(proxy.values()) <= AGENT_PROXY_CALLS * requests, (requests, proxy)


async def _tunnel_up(log_path: Path) -> dict[str, Any]:
    """The agent's ``tunnel_up`` log line (JSON), once it is written."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        for line in log_path.read_text().splitlines():
            if line.startswith("{") and '"tunnel_up"' in line:
                found.append(json.loads(line))
                return True
        return False

    await wait_until(logged, what="the agent's tunnel_up line")
    return found[0]


async def _count(client: APIClient, conn_id: str, pid: int, counts: Path) -> str:
    """On one caller connection: 3 requests to warm up, REQUESTS counted in
    the agent (process *pid*); the agent's counts file."""
    front = urlsplit(client.base)
    assert front.hostname is not None
    reader, writer = await asyncio.open_connection(front.hostname, front.port)
    request = (
        f"GET /v1/connections/{conn_id}/proxy/small HTTP/1.1\r\n"
        f"Host: relay\r\nAuthorization: Bearer {client.token}\r\n\r\n"
    ).encode()

    async def call() -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert await reader.readexactly(len(BODY)) == BODY

    try:
        async with asyncio.timeout(30):
            for _ in range(3):
                await call()  # the stream and the windows settle
            os.kill(pid, signal.SIGUSR1)
            started = counts.with_suffix(".started")
            await wait_until(started.exists, what="the agent's counting")
            for _ in range(REQUESTS):
                await call()
            os.kill(pid, signal.SIGUSR2)
            await wait_until(counts.exists, what="the agent's counts")
    finally:
        writer.close()
    return counts.read_text()
