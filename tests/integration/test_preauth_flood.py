"""A pre-auth SSH flood (its own process) against a relay process with few
descriptors: agents still log in and the API still answers."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.agent import AgentProcess
from tests.support.capture import remember_secret
from tests.support.relay_process import RelayProcess

REPO = Path(__file__).resolve().parents[2]
PRLIMIT = shutil.which("prlimit")


@pytest.mark.skipif(PRLIMIT is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.timeout(90)
async def test_idle_preauth_connections_cannot_lock_agents_and_the_api_out(
    tmp_path: Path,
) -> None:
    assert PRLIMIT is not None
    relay = RelayProcess(
        tmp_path / "relay",
        tmp_path / "relay.log",
        prefix=[PRLIMIT, "--nofile=160:160", "--"],
        max_preauth_ssh="64",
        max_preauth_ssh_per_address="16",
    )
    remember_secret(relay.admin_token)
    await relay.start()
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.ssh_flood",
        str(relay.ssh_port),
        "300",
        "127.0.0.2",  # the agent logs in from 127.0.0.1
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    agent: AgentProcess | None = None
    try:
        assert flood.stdout is not None
        async with asyncio.timeout(30):
            opened = (await flood.stdout.readline()).decode()
        assert opened.startswith("OPEN"), opened
        headers = {"Authorization": f"Bearer {relay.admin_token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.post(
                relay.base + "/v1/agents", json={"name": "a"}, headers=headers
            ) as resp:
                assert resp.status == 201
                created = await resp.json()
            remember_secret(created["token"])
            agent = AgentProcess(
                {
                    "SLUICE_AGENT_RELAY": f"127.0.0.1:{relay.ssh_port}",
                    "SLUICE_AGENT_TOKEN": created["token"],
                    "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint(),
                    "SLUICE_AGENT_ALLOW": "127.0.0.1:9",
                    "SLUICE_AGENT_LOG_FORMAT": "json",
                    "SLUICE_AGENT_HEALTH_LISTEN": "off",
                    "SLUICE_AGENT_BACKOFF_MAX": "1",
                },
                tmp_path / "agent.log",
            )
            await agent.start()
            status = "offline"
            async with asyncio.timeout(20):
                while status != "online":
                    async with http.get(
                        f"{relay.base}/v1/agents/{created['id']}", headers=headers
                    ) as resp:
                        status = (await resp.json())["status"]
                    await asyncio.sleep(0.1)  # polling the API, with the deadline above
        print(f"\nflood: {opened.strip()} from 127.0.0.2; the agent logged in beside it")
    finally:
        flood.terminate()
        await flood.wait()
        if agent is not None:
            await agent.stop()
        await relay.stop()
