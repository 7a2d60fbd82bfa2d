"""A link that silently drops every packet: both ends notice within the keepalive
bound, and the agent comes back when the link does. Real namespaces, real nftables."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.relay import Relay
from sluice.addresses import HostPort
from tests.conftest import relay_settings
from tests.support.agent import AgentProcess
from tests.support.netns import Topology, netns_available, relay_agent_api
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.netns,
    # Its namespaces' subnet comes from the process id, which another
    # worker's may share modulo 200: `make test` runs it alone.
    pytest.mark.serial,
    pytest.mark.skipif(
        not netns_available() or shutil.which("nft") is None,
        reason="needs root, ip netns and nftables",
    ),
]

REPO = Path(__file__).resolve().parents[2]
INTERVAL, COUNT = 1.0, 3
BOUND = INTERVAL * COUNT + 4  # interval * count, plus a few seconds


@pytest.fixture
def topology() -> Iterator[Topology]:
    with relay_agent_api() as topo:
        yield topo


def _nft(ns: str, script: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script.encode(),
        check=True,
        capture_output=True,
    )


def blackhole(topo: Topology) -> None:
    _nft(
        topo.agent_ns,
        f"""
        table inet sluice_blackhole {{
            chain out {{ type filter hook output priority 0; ip daddr {topo.relay_ip} drop; }}
            chain in {{ type filter hook input priority 0; ip saddr {topo.relay_ip} drop; }}
        }}
    """,
    )


def restore(topo: Topology) -> None:
    _nft(topo.agent_ns, "delete table inet sluice_blackhole")


@pytest.mark.timeout(90)
async def test_blackholed_link_is_noticed_and_survived(topology: Topology, tmp_path: Path) -> None:
    api = await asyncio.create_subprocess_exec(
        *topology.exec_prefix(topology.api_ns),
        sys.executable,
        "-m",
        "tests.support.api_server",
        "--host",
        topology.api_ip,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    relay = await Relay.start(
        relay_settings(
            tmp_path,
            ssh_listen=HostPort(topology.relay_ip, 0),
            keepalive_interval=INTERVAL,
            keepalive_count=COUNT,
        )
    )
    agent: AgentProcess | None = None
    try:
        assert api.stdout is not None
        async with asyncio.timeout(15):
            port = int((await api.stdout.readline()).split()[1])
        _, token = await relay.store.create_agent("behind-a-flaky-link")
        agent = AgentProcess(
            {
                "SLUICE_AGENT_RELAY": f"{topology.relay_ip}:{relay.ssh_address[1]}",
                "SLUICE_AGENT_TOKEN": str(token),
                "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
                "SLUICE_AGENT_ALLOW": f"{topology.api_ip}:{port}",
                "SLUICE_AGENT_KEEPALIVE_INTERVAL": str(INTERVAL),
                "SLUICE_AGENT_KEEPALIVE_COUNT": str(COUNT),
                "SLUICE_AGENT_CONNECT_TIMEOUT": "2",
                "SLUICE_AGENT_LOGIN_TIMEOUT": "3",
                "SLUICE_AGENT_BACKOFF_INITIAL": "0.2",
                "SLUICE_AGENT_BACKOFF_MAX": "1",
                "SLUICE_AGENT_HEALTH_LISTEN": "off",
                "SLUICE_AGENT_LOG_FORMAT": "json",
            },
            tmp_path / "agent.log",
            prefix=topology.exec_prefix(topology.agent_ns),
        )
        await agent.start()
        await wait_until(
            lambda: relay.registry.is_online(token.agent_id), timeout=15, what="agent online"
        )

        blackhole(topology)
        cut = time.monotonic()
        await wait_until(
            lambda: not relay.registry.is_online(token.agent_id),
            timeout=BOUND + 2,
            what="the relay dropping the dead tunnel",
        )
        relay_noticed = time.monotonic() - cut
        running = agent
        await wait_until(
            lambda: '"tunnel_down"' in running.log(), timeout=BOUND + 2, what="the agent noticing"
        )
        agent_noticed = time.monotonic() - cut
        assert relay_noticed <= BOUND, relay_noticed
        assert agent_noticed <= BOUND, agent_noticed

        restore(topology)
        back = time.monotonic()
        await wait_until(
            lambda: relay.registry.is_online(token.agent_id), timeout=15, what="agent online"
        )
        print(
            f"relay noticed after {relay_noticed:.1f} s, agent after {agent_noticed:.1f} s, "
            f"back online {time.monotonic() - back:.1f} s after the link returned"
        )
        async with relay.tunnel_http.session(token.agent_id).get(
            f"http://{topology.api_ip}:{port}/hello"
        ) as resp:
            assert resp.status == 200
    finally:
        await relay.tunnel_http.close()
        if agent is not None and agent.proc is not None:
            await agent.stop()
        await relay.close()
        api.terminate()
        await api.wait()
