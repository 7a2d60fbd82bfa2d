"""The asyncssh tweaks (sluice/ssh_tuning.py) speak plain SSH: a tuned end
works against OpenSSH's sshd and against stock asyncssh in either role, with
keys exchanged again and again in the middle of transfers (a small rekey
limit), on loopback and through a long link (bench's delay line)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncssh
import pytest

from bench.delay_line import DelayLine
from server.relay import Relay
from sluice import send_coalescing, send_scheduler, ssh_send, ssh_tuning, sshconfig
from tests.conftest import relay_settings
from tests.support.agent import AgentProcess
from tests.support.api import InternalAPI, noise
from tests.support.capture import APIClient, remember_secret
from tests.support.relay_process import RelayProcess
from tests.support.sshd import run_sshd
from tests.support.waiting import wait_until

MiB = 1024 * 1024
REKEY = 1 * MiB
LINKS = [pytest.param(0.0, id="loopback"), pytest.param(0.03, id="30ms-link")]


def _size(rtt: float) -> int:
    # 64 MiB on loopback; less on the long link, where today's fixed windows
    # move a stream one window per round trip.
    return 64 * MiB if rtt == 0 else 16 * MiB


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def _link(port: int, rtt: float) -> AsyncIterator[int]:
    """The port to reach *port* through: itself, or a delay line of *rtt* seconds."""
    if rtt == 0:
        yield port
        return
    async with DelayLine.start(port, rtt) as line:
        yield line.port


def _count_key_exchanges(
    conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection,
) -> list[int]:
    """Count the KEXINITs *conn* sends from now on (one per key exchange, whoever starts it)."""
    counted = [0]
    original = conn._send_kexinit

    def counting() -> None:
        counted[0] += 1
        original()

    conn._send_kexinit = counting  # type: ignore[method-assign]
    return counted


@pytest.mark.timeout(90)
@pytest.mark.parametrize("rtt", LINKS)
async def test_a_tuned_client_forwards_through_openssh_sshd_intact(
    tmp_path: Path, rtt: float
) -> None:
    """The agent's side (asyncssh, tuned) holds a remote forward on OpenSSH's
    sshd; a caller sends a body through sshd and reads the answer back."""
    assert ssh_tuning.tune_asyncssh({})
    size = _size(rtt)
    up, down = noise(size, seed=1), noise(size, seed=2)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await reader.read(-1)  # until the caller's EOF
        writer.write(hashlib.sha256(got).digest())
        writer.write(down)
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(serve, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    try:
        async with (
            run_sshd(tmp_path / "sshd", rekey_limit=f"{REKEY // 1024}K") as sshd,
            _link(sshd.port, rtt) as port,
            asyncssh.connect(
                "127.0.0.1",
                port,
                username=sshd.user,
                client_keys=[sshd.client_key],
                known_hosts=([sshd.host_key.convert_to_public()], [], []),
                agent_path=None,
                config=None,
                encryption_algs=list(sshconfig.ENCRYPTION_ALGS),
                rekey_bytes=REKEY,
                window=2 * MiB,
                max_pktsize=sshconfig.CHANNEL_MAX_PKTSIZE,
            ) as conn,
        ):
            assert ssh_send._gcm_ready(conn) is not None  # the tuned framing path
            assert send_scheduler.start(conn)  # as the agent's tunnel: packets interleaved
            assert send_coalescing.start(conn)  # and a loop turn's packets in one write
            exchanges = _count_key_exchanges(conn)
            listener = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", backend_port)
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
            writer.write(up)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(-1), 60)
            writer.close()
            await writer.wait_closed()
            listener.close()
    finally:
        backend.close()
        await backend.wait_closed()
    assert answer[:32] == hashlib.sha256(up).digest(), sshd.log()
    assert len(answer) == 32 + size
    assert _sha(answer[32:]) == _sha(down)
    assert exchanges[0] >= size // REKEY  # keys exchanged all along both transfers


async def _through_session(http: aiohttp.ClientSession, base: str, size: int) -> tuple[str, str]:
    """Download /noise/{size}, upload another noise body to /echo: the digests."""
    async with http.get(f"{base}/noise/{size}") as resp:
        assert resp.status == 200
        down = await resp.read()
    async with http.post(f"{base}/echo", data=io.BytesIO(noise(size, seed=3))) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["bytes"] == size
    return _sha(down), str(echoed["sha256"])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("rtt", LINKS)
async def test_a_tuned_relay_serves_a_stock_asyncssh_agent(
    tmp_path: Path, api: InternalAPI, rtt: float
) -> None:
    relay = await Relay.start(relay_settings(tmp_path, ssh_rekey_bytes=REKEY))
    remember_secret(relay.admin_token)
    agent: AgentProcess | None = None
    try:
        assert ssh_tuning.applied()  # the relay in this process is tuned
        assert send_scheduler.installed()  # and schedules its tunnels' sends
        assert send_coalescing.installed()  # and coalesces their writes
        _, token = await relay.store.create_agent("stock")
        remember_secret(str(token), token.secret)
        async with _link(relay.ssh_address[1], rtt) as port:
            agent = AgentProcess(
                {
                    "SLUICE_AGENT_RELAY": f"127.0.0.1:{port}",
                    "SLUICE_AGENT_TOKEN": str(token),
                    "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
                    "SLUICE_AGENT_ALLOW": f"127.0.0.1:{api.port}",
                    "SLUICE_AGENT_LOG_FORMAT": "json",
                    "SLUICE_AGENT_HEALTH_LISTEN": "off",
                    "SLUICE_AGENT_REKEY_BYTES": str(REKEY),
                    "SLUICE_SSH_TUNING": "off",
                },
                tmp_path / "agent.log",
            )
            await agent.start()
            await wait_until(
                lambda: relay.registry.is_online(token.agent_id), timeout=15, what="agent online"
            )
            [tunnel] = relay.registry.replicas(token.agent_id)
            exchanges = _count_key_exchanges(tunnel.ssh)
            size = _size(rtt)
            down, up = await _through_session(
                relay.tunnel_http.session(token.agent_id), api.base, size
            )
        assert '"state": "off"' in agent.log()  # the agent ran asyncssh stock
    finally:
        if agent is not None and agent.proc is not None and agent.proc.returncode is None:
            await agent.stop()
        await relay.close()
    assert down == _sha(noise(size))
    assert up == _sha(noise(size, seed=3))
    assert exchanges[0] >= size // REKEY


async def _wait_online(client: APIClient, agent_id: str, agent: AgentProcess) -> None:
    deadline = time.monotonic() + 15
    while True:
        got = await client.call("GET", f"/v1/agents/{agent_id}")
        if got.body["status"] == "online":
            return
        assert time.monotonic() < deadline, agent.log()
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("rtt", LINKS)
async def test_a_tuned_agent_works_with_a_stock_asyncssh_relay(
    tmp_path: Path, api: InternalAPI, rtt: float
) -> None:
    relay = RelayProcess(tmp_path / "relay", tmp_path / "relay.log", ssh_rekey_bytes=str(REKEY))
    relay.env["SLUICE_SSH_TUNING"] = "off"
    await relay.start()
    remember_secret(relay.admin_token)
    agent: AgentProcess | None = None
    size = _size(rtt)
    try:
        async with aiohttp.ClientSession() as session, _link(relay.ssh_port, rtt) as port:
            client = APIClient(session, relay.base, relay.admin_token)
            created = await client.call(
                "POST", "/v1/agents", json_body={"name": "tuned"}, shows_token=True
            )
            remember_secret(created.body["token"])
            agent = AgentProcess(
                {
                    "SLUICE_AGENT_RELAY": f"127.0.0.1:{port}",
                    "SLUICE_AGENT_TOKEN": created.body["token"],
                    "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint(),
                    "SLUICE_AGENT_ALLOW": f"127.0.0.1:{api.port}",
                    "SLUICE_AGENT_HEALTH_LISTEN": "off",
                    "SLUICE_AGENT_LOG_FORMAT": "json",
                    "SLUICE_AGENT_REKEY_BYTES": str(REKEY),
                },
                tmp_path / "agent.log",
            )
            await agent.start()
            await _wait_online(client, created.body["id"], agent)
            conn = await client.call(
                "POST",
                "/v1/connections",
                json_body={
                    "name": "bulk",
                    "mode": "on_premise",
                    "agent_id": created.body["id"],
                    "http": {"base_uri": api.base, "media_type": "json"},
                },
            )
            assert conn.status == 201, conn.body
            proxy = f"{relay.base}/v1/connections/{conn.body['id']}/proxy"
            auth = {"Authorization": f"Bearer {relay.admin_token}"}
            async with aiohttp.ClientSession(headers=auth) as http:
                down, up = await _through_session(http, proxy, size)
        assert '"state": "on"' in agent.log()
        assert '"send_scheduler": "on"' in agent.log()
        assert '"send_coalescing": "on"' in agent.log()
        assert '"state": "off"' in relay.log_path.read_text()  # the relay ran asyncssh stock
    finally:
        if agent is not None and agent.proc is not None and agent.proc.returncode is None:
            await agent.stop()
        if relay.proc is not None and relay.proc.returncode is None:
            await relay.stop()
    assert down == _sha(noise(size))
    assert up == _sha(noise(size, seed=3))
