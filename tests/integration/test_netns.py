"""The agent reaches an API that the relay cannot: real namespaces, real processes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.relay import Relay
from server.settings import ServerSettings
from sluice.addresses import HostPort
from tests.support.agent import AgentProcess
from tests.support.netns import Topology, netns_available, relay_agent_api
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.netns,
    # Its namespaces' subnet comes from the process id, which another
    # worker's may share modulo 200: `make test` runs it alone.
    pytest.mark.serial,
    pytest.mark.skipif(not netns_available(), reason="needs root and ip netns"),
]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def topology() -> Iterator[Topology]:
    with relay_agent_api() as topo:
        yield topo


async def test_agent_reaches_an_api_the_relay_cannot(topology: Topology, tmp_path: Path) -> None:
    api_proc = await asyncio.create_subprocess_exec(
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
        ServerSettings(
            data_dir=tmp_path / "relay",
            ssh_listen=HostPort(topology.relay_ip, 0),
            http_listen=HostPort("127.0.0.1", 0),  # not 8080: tests run side by side
            log_format="json",
        )
    )
    agent: AgentProcess | None = None
    try:
        assert api_proc.stdout is not None
        async with asyncio.timeout(15):
            line = (await api_proc.stdout.readline()).decode()
        assert line.startswith("READY"), line
        port = int(line.split()[1])

        # The relay has no path to the API's network.
        with pytest.raises(OSError, match=r"(?i)unreachable|no route"):
            async with asyncio.timeout(5):
                await asyncio.open_connection(topology.api_ip, port)

        _, token = await relay.store.create_agent("in-a-namespace")
        agent = AgentProcess(
            {
                "SLUICE_AGENT_RELAY": f"{topology.relay_ip}:{relay.ssh_address[1]}",
                "SLUICE_AGENT_TOKEN": str(token),
                "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
                "SLUICE_AGENT_ALLOW": f"{topology.api_ip}:{port}",
                "SLUICE_AGENT_LOG_FORMAT": "json",
            },
            tmp_path / "agent.log",
            prefix=topology.exec_prefix(topology.agent_ns),
        )
        await agent.start()
        try:
            await wait_until(
                lambda: relay.registry.is_online(token.agent_id), timeout=15, what="agent online"
            )
        except TimeoutError:
            raise AssertionError(agent.log()) from None

        http = relay.tunnel_http.session(token.agent_id)
        async with http.get(f"http://{topology.api_ip}:{port}/hello") as resp:
            assert resp.status == 200
            assert (await resp.json())["hello"] == "world"
        peer = relay.registry.replicas(token.agent_id)[0].peer
        assert peer.startswith(topology.agent_uplink_ip + ":")
    finally:
        await relay.tunnel_http.close()
        if agent is not None and agent.proc is not None:
            assert await agent.stop() == 0
        await relay.close()
        api_proc.terminate()
        await api_proc.wait()
