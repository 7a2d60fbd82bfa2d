"""A rolling restart of a 3-relay cluster behind nginx, under load: no request fails."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from sluice.tokens import AgentToken
from tests.support.api import InternalAPI
from tests.support.cluster import cluster_relay, get_json, master_key, start_cluster_agent
from tests.support.ports import free_port
from tests.support.relay_process import RelayProcess

ADMIN = "slcadm_rolling_" + os.urandom(12).hex()
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

NGINX_CONF = """
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream relays {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_buffering off;
        }}
    }}
}}
"""


async def _nginx(
    tmp_path: Path, relays: list[RelayProcess]
) -> tuple[asyncio.subprocess.Process, int]:
    assert NGINX is not None
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir()
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{r.http_port} max_fails=0;" for r in relays)
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=conf_dir, servers=servers, port=port))
    proc = await asyncio.create_subprocess_exec(
        NGINX,
        "-p",
        str(conf_dir),
        "-c",
        str(conf),
        "-g",
        "daemon off;",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc, port
        except OSError:
            assert time.monotonic() < deadline, (conf_dir / "error.log").read_text()
            await asyncio.sleep(0.05)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")
@pytest.mark.timeout(240)
async def test_rolling_restart_through_nginx_under_load_fails_no_request(
    tmp_path: Path, cluster_database: str, api: InternalAPI
) -> None:
    key = master_key()
    relays = [cluster_relay(tmp_path, name, cluster_database, key, ADMIN) for name in "abc"]
    for relay in relays:
        await relay.start()
    nginx, port = await _nginx(tmp_path, relays)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                relays[0].base + "/v1/agents", json={"name": "rolling"}, headers=auth
            ) as resp:
                token = AgentToken.parse((await resp.json())["token"])
            _, info = await get_json(http, relays[0], "/v1/relay")
            agent = await start_cluster_agent(
                tmp_path,
                "0",
                f"127.0.0.1:{relays[0].ssh_port}",
                info["ssh_fingerprint"],
                token,
                [f"127.0.0.1:{api.port}"],
                discovery_interval="0.3",
            )
            try:
                async with http.post(
                    relays[0].base + "/v1/connections",
                    json={
                        "name": "rolling",
                        "mode": "on_premise",
                        "agent_id": token.agent_id,
                        "http": {"base_uri": f"{api.base}/"},
                    },
                    headers=auth,
                ) as resp:
                    assert resp.status == 201
                    conn_id = (await resp.json())["id"]
                url = f"http://127.0.0.1:{port}/v1/connections/{conn_id}/proxy/hello"
                everyone = {f"127.0.0.1:{r.ssh_port}" for r in relays}

                async def on_all(timeout: float) -> None:
                    """As an operator's rolling restart does: the next relay goes
                    only once the agents are back on the one restarted."""
                    deadline = time.monotonic() + timeout
                    while True:
                        status, view = await get_json(
                            http, relays[1], f"/v1/agents/{token.agent_id}"
                        )
                        seen = {r["relay"] for r in view["replicas"] if not r["draining"]}
                        if status == 200 and seen == everyone:
                            return
                        assert time.monotonic() < deadline, seen
                        await asyncio.sleep(0.05)

                await on_all(30)

                statuses: list[int] = []
                failures: list[str] = []
                restarting = asyncio.Event()
                restarting.set()

                async def caller() -> None:
                    async with aiohttp.ClientSession() as own:
                        while restarting.is_set() or len(statuses) < 2000:
                            try:
                                async with own.get(url, headers=auth) as resp:
                                    await resp.read()
                                    statuses.append(resp.status)
                                    if resp.status != 200:
                                        failures.append(f"{resp.status} {await resp.text()}")
                            except aiohttp.ClientError as exc:
                                failures.append(repr(exc))

                callers = [asyncio.ensure_future(caller()) for _ in range(8)]
                try:
                    for relay in relays:
                        await relay.stop()  # SIGTERM: drain, then leave
                        await relay.start()
                        await on_all(30)
                finally:
                    restarting.clear()
                    await asyncio.gather(*callers)
                assert len(statuses) + len(failures) >= 2000
                assert failures == []
                assert set(statuses) == {200}
            finally:
                await agent.stop()
    finally:
        nginx.terminate()
        await nginx.wait()
        for relay in relays:
            if relay.proc is not None and relay.proc.returncode is None:
                await relay.stop()
