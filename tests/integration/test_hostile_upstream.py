"""A hostile internal API against a real relay and agent (processes): the
relay bounds what an answer can make it hold, and says so in a problem."""

from __future__ import annotations

import asyncio
import json
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

    async def connection(self, port: int, mode: str = "on_premise", **http: Any) -> str:
        status, body, text = await self.call(
            "POST",
            "/v1/connections",
            {
                "name": "hostile",
                "mode": mode,
                "agent_id": self.agent_id if mode == "on_premise" else None,
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
    # Cloud connections to the loopback API too: the ping tests use both modes.
    relay = RelayProcess(
        tmp_path / "relay", tmp_path / "relay.log", allow_private_destinations="true"
    )
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


def relay_log(running: Running) -> list[str]:
    return running.relay.log_path.read_text(errors="replace").splitlines()


@pytest.mark.timeout(60)
async def test_a_refused_request_head_is_logged_as_json_with_the_admin_token_masked(
    running: Running,
) -> None:
    token = running.relay.admin_token
    reader, writer = await asyncio.open_connection("127.0.0.1", running.relay.http_port)
    # Bare LF line endings: the fast front hands this to aiohttp, which refuses it.
    writer.write(
        b"GET /v1/agents HTTP/1.1\nHost: x\nAuthorization: Bearer " + token.encode() + b"\n\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(12), 10)
    writer.close()
    assert answer.endswith(b" 400"), answer
    await wait_until(
        lambda: any("Error handling request" in line for line in relay_log(running)),
        what="aiohttp's error line in the relay log",
    )
    lines = relay_log(running)
    assert not any(token in line for line in lines), "admin token in the relay log"
    for line in lines:
        json.loads(line)  # every line, aiohttp's included, is the JSON format


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["cloud", "on_premise"])
async def test_a_ping_meeting_an_oversized_head_fails_the_test_and_masks_the_url_token(
    running: Running, hostile: Hostile, mode: str
) -> None:
    remember_secret(URL_TOKEN)
    conn_id = await running.connection(
        hostile.port,
        mode,
        auth={"token": URL_TOKEN, "location": "url", "param_name": "api_key"},
        ping={"method": "GET", "relative_uri": "/long-header"},
    )
    status, result, text = await running.call("POST", f"/v1/connections/{conn_id}/test")
    assert status == 200, text
    assert result["ok"] is False, result
    assert "head" in result["message"], result
    assert URL_TOKEN not in text
    status, _, text = await running.call("GET", f"/v1/connections/{conn_id}/proxy/long-header")
    assert status == 502, text
    assert not any(URL_TOKEN in line for line in relay_log(running)), "URL token in the log"
    assert not any('"internal_error"' in line for line in relay_log(running))
