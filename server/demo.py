"""``sluice-server demo``: the whole product on this machine, end to end.

Starts a relay (embedded defaults in a temporary data dir), creates an agent,
starts a real ``sluice-agent`` process, starts a small "internal" API on
loopback, sends requests to it through the tunnel, prints what came back
with timings, and shuts everything down.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from server.relay import Relay
from server.settings import ServerSettings
from sluice.addresses import HostPort
from sluice.logs import configure_logging


def _sample_api() -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def items(_: web.Request) -> web.Response:
        return web.json_response({"items": [{"sku": "A-1", "qty": 3}, {"sku": "B-7", "qty": 0}]})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"received_bytes": len(body)})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/items", items)
    app.router.add_post("/echo", echo)
    return app


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo() -> int:
    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory(prefix="sluice-demo-") as tmp:
        data = Path(tmp)
        runner = web.AppRunner(_sample_api(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        api_port = runner.addresses[0][1]
        _say(f"1. internal API listening on 127.0.0.1:{api_port} (stands in for a private API)")

        relay = await Relay.start(ServerSettings(
            data_dir=data / "relay", ssh_listen=HostPort("127.0.0.1", 0), log_format="json",
            log_level="warning",
        ))
        host, port = relay.ssh_address
        _say(f"2. relay up: SSH on {host}:{port}, host key {relay.fingerprint}")
        agent_rec, token = await relay.store.create_agent("demo-agent")
        _say(f"3. agent created: {agent_rec.id} (token printed once, shown here masked: "
             f"slc_{agent_rec.id}_****)")

        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_AGENT_")}
        env.update({
            "SLUICE_AGENT_RELAY": f"{host}:{port}",
            "SLUICE_AGENT_TOKEN": str(token),
            "SLUICE_AGENT_RELAY_FINGERPRINT": relay.fingerprint,
            "SLUICE_AGENT_ALLOW": f"127.0.0.1:{api_port}",
            "SLUICE_AGENT_LOG_FORMAT": "json",
            "SLUICE_AGENT_LOG_LEVEL": "warning",
        })
        agent_bin = Path(sys.executable).parent / "sluice-agent"
        agent = await asyncio.create_subprocess_exec(str(agent_bin), "run", env=env)
        status = 1
        try:
            began = time.perf_counter()
            await relay.registry.wait_online(agent_rec.id, timeout=20)
            _say(f"4. agent process {agent.pid} connected in "
                 f"{(time.perf_counter() - began) * 1000:.0f} ms")

            http = relay.tunnel_http.session(agent_rec.id)
            base = f"http://127.0.0.1:{api_port}"
            _say("5. requests through the tunnel:")
            for method, path, body in [
                ("GET", "/health", None), ("GET", "/items", None), ("POST", "/echo", b"x" * 4096),
                ("GET", "/items", None), ("GET", "/secret-admin", None),
            ]:
                t0 = time.perf_counter()
                async with http.request(method, base + path, data=body) as resp:
                    text = await resp.text()
                ms = (time.perf_counter() - t0) * 1000
                _say(f"   {method:4} {path:14} -> {resp.status} in {ms:6.2f} ms  {text[:70]}")
            t0 = time.perf_counter()
            try:
                await http.get("http://127.0.0.1:22/")
            except Exception as exc:  # the allowlist refusal is the point here
                ms = (time.perf_counter() - t0) * 1000
                _say(f"   GET  127.0.0.1:22      -> refused in {ms:6.2f} ms: {exc}")
            status = 0
        finally:
            await relay.tunnel_http.close()
            agent.terminate()
            code = await asyncio.wait_for(agent.wait(), timeout=40)
            _say(f"6. agent stopped (exit {code}); relay stopping")
            await relay.close()
            await runner.cleanup()
            if code != 0:
                status = 1
        _say("demo finished: OK" if status == 0 else "demo finished: FAILED")
        return status
