"""A hostile internal API against a real relay and agent (processes): the
relay bounds what an answer can make it hold, and says so in a problem."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.agent import AgentProcess
from tests.support.capture import remember_secret
from tests.support.relay_process import RelayProcess
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
URL_TOKEN = "url-param-token-" + "q" * 24


@dataclass
class Hostile:
    port: int
    proc: asyncio.subprocess.Process
    lines: list[str]


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.hostile_api",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(15):
        line = (await proc.stdout.readline()).decode()
    assert line.startswith("READY"), line
    lines: list[str] = []

    async def collect() -> None:
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            lines.append(raw.decode().strip())

    reader = asyncio.create_task(collect())
    try:
        yield Hostile(int(line.split()[1]), proc, lines)
    finally:
        proc.terminate()
        await proc.wait()
        await reader


@dataclass
class Running:
    relay: RelayProcess
    http: aiohttp.ClientSession
    agent_id: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
        headers = {"Authorization": f"Bearer {self.relay.admin_token}"}
        async with self.http.request(
            method, self.relay.base + path, json=body, headers=headers
        ) as resp:
            text = await resp.text()
            data = await resp.json(content_type=None) if text else None
            return resp.status, data, text

    async def connection(self, port: int, **http: Any) -> str:
        status, body, text = await self.call(
            "POST",
            "/v1/connections",
            {
                "name": "hostile",
                "mode": "on_premise",
                "agent_id": self.agent_id,
                "http": {"base_uri": f"http://127.0.0.1:{port}/", **http},
            },
        )
        assert status == 201, text
        return str(body["id"])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
async def running(tmp_path: Path, hostile: Hostile) -> AsyncIterator[Running]:
    relay = RelayProcess(tmp_path / "relay", tmp_path / "relay.log")
    remember_secret(relay.admin_token)
    await relay.start()
    agent: AgentProcess | None = None
    try:
        async with aiohttp.ClientSession() as http:
            run = Running(relay, http, "")
            status, body, text = await run.call("POST", "/v1/agents", {"name": "hostile-lab"})
            assert status == 201, text
            run.agent_id = body["id"]
            remember_secret(body["token"])
            agent = AgentProcess(
                {
                    "SLUICE_AGENT_RELAY": f"127.0.0.1:{relay.ssh_port}",
                    "SLUICE_AGENT_TOKEN": body["token"],
                    "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint(),
                    "SLUICE_AGENT_ALLOW": f"127.0.0.1:{hostile.port}",
                    "SLUICE_AGENT_LOG_FORMAT": "json",
                    "SLUICE_AGENT_HEALTH_LISTEN": "off",
                },
                tmp_path / "agent.log",
            )
            await agent.start()
            for _ in range(300):
                _, view, _ = await run.call("GET", f"/v1/agents/{run.agent_id}")
                if view["status"] == "online":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"agent never came online:\n{agent.log()}")
            yield run
    finally:
        if agent is not None:
            await agent.stop()
        await relay.stop()


@pytest.mark.timeout(90)
async def test_endless_answer_headers_get_a_502_at_once_and_memory_stays_flat(
    running: Running, hostile: Hostile
) -> None:
    conn_id = await running.connection(hostile.port, timeouts={"total": 20})
    assert running.relay.proc is not None
    pid = running.relay.proc.pid
    status, _, text = await running.call("GET", f"/v1/connections/{conn_id}/proxy/ok")
    assert status == 200, text
    before = rss_kib(pid)
    began = time.monotonic()
    for _ in range(3):
        status, problem, text = await running.call("GET", f"/v1/connections/{conn_id}/proxy/bomb")
        assert status == 502, text
        assert problem["type"] == "upstream_head_too_large", problem
    elapsed = time.monotonic() - began
    await wait_until(lambda: len(hostile.lines) >= 3, what="the bomb to stop", timeout=20)
    sent = [int(line.split()[1]) for line in hostile.lines if line.startswith("BOMB")]
    grown = rss_kib(pid) - before
    print(f"\n3 bombs: {elapsed:.2f} s, API wrote {sent} bytes, relay RSS +{grown} KiB")
    assert elapsed < 5, elapsed
    assert grown < 30 * 1024, f"relay RSS grew by {grown} KiB"
    # The relay stopped reading: the API could not push its bomb through.
    assert max(sent) < 64 * MiB, sent
