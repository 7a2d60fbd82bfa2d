"""``sluice-server demo``: the whole product on this machine, end to end.

Starts a relay process (embedded defaults in a temporary data dir), a small
"internal" API on loopback, creates an agent through the API and starts a
real ``sluice-agent`` process with its token, then creates an on-premise and
a cloud connection, tests them, sends requests through the proxy route,
prints what came back with timings, and shuts everything down cleanly.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

API_TOKEN = "demo-api-token"  # noqa: S105 - the sample API's own token, not a Sluice secret


def _sample_api() -> web.Application:
    def authorised(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {API_TOKEN}"

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": authorised(request)})

    async def items(request: web.Request) -> web.Response:
        if not authorised(request):
            return web.json_response({"error": "unauthorised"}, status=401)
        return web.json_response({"items": [{"sku": "A-1", "qty": 3}, {"sku": "B-7", "qty": 0}]})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {"received_bytes": len(body), "content_type": request.headers.get("Content-Type")}
        )

    app = web.Application()
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/items", items)
    app.router.add_post("/api/echo", echo)
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(text: str) -> None:
    print(text, flush=True)


class Demo:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.ssh_port = _free_port()
        self.http_port = _free_port()
        self.health_port = _free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.admin = "demo-admin-" + os.urandom(8).hex()
        self.bin = Path(sys.executable).parent
        self.procs: list[asyncio.subprocess.Process] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(extra)
        return env

    async def spawn(self, *args: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *args,
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        self.procs.append(proc)
        return proc

    async def call(
        self, http: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> Any:
        async with http.request(
            method, self.base + path, json=body, headers={"Authorization": f"Bearer {self.admin}"}
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {data}")
            return data

    async def wait_for(
        self, http: aiohttp.ClientSession, what: str, check: Any, timeout: float = 20
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await check():
                    return
            except (aiohttp.ClientError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)

    async def stop_all(self) -> list[int]:
        codes = []
        for proc in reversed(self.procs):
            if proc.returncode is None:
                proc.terminate()
            try:
                codes.append(await asyncio.wait_for(proc.wait(), timeout=40))
            except TimeoutError:
                proc.kill()
                codes.append(await proc.wait())
        return codes


async def run_demo() -> int:
    with tempfile.TemporaryDirectory(prefix="sluice-demo-") as tmp:
        data = Path(tmp)
        runner = web.AppRunner(_sample_api(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        api_port = runner.addresses[0][1]
        api_base = f"http://127.0.0.1:{api_port}/api"
        _say(f"1. sample internal API on {api_base}")
        demo = Demo(data)
        ok = False
        try:
            ok = await _scenario(demo, api_port, api_base)
        except Exception as exc:  # the demo reports any failure plainly
            _say(f"FAILED: {exc}")
            for log in sorted(data.glob("*.log")):  # noqa: ASYNC240 - failure report
                _say(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        finally:
            codes = await demo.stop_all()
            await runner.cleanup()
            _say(f"9. stopped agent and relay (exit codes {codes})")
            ok = ok and all(code == 0 for code in codes)
        _say("demo finished: OK" if ok else "demo finished: FAILED")
        return 0 if ok else 1


async def _scenario(demo: Demo, api_port: int, api_base: str) -> bool:
    relay_env = demo.env(
        SLUICE_SERVER_DATA_DIR=str(demo.data / "relay"),
        SLUICE_SERVER_SSH_LISTEN=f"127.0.0.1:{demo.ssh_port}",
        SLUICE_SERVER_HTTP_LISTEN=f"127.0.0.1:{demo.http_port}",
        SLUICE_SERVER_ADMIN_TOKEN=demo.admin,
        # The sample API is on loopback; a real cloud connection would not be.
        SLUICE_SERVER_ALLOW_PRIVATE_DESTINATIONS="true",
        SLUICE_SERVER_LOG_FORMAT="json",
    )
    await demo.spawn(
        str(demo.bin / "sluice-server"), "run", env=relay_env, log=demo.data / "relay.log"
    )
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            async with http.get(demo.base + "/healthz") as resp:
                return resp.status == 200

        t0 = time.perf_counter()
        await demo.wait_for(http, "the relay", ready)
        _say(
            f"2. relay up in {(time.perf_counter() - t0) * 1000:.0f} ms: "
            f"API {demo.base}, SSH 127.0.0.1:{demo.ssh_port}"
        )
        fingerprint = (
            (
                await (
                    await asyncio.create_subprocess_exec(
                        str(demo.bin / "sluice-server"),
                        "fingerprint",
                        env=relay_env,
                        stdout=asyncio.subprocess.PIPE,
                    )
                ).communicate()
            )[0]
            .decode()
            .strip()
        )

        agent = await demo.call(http, "POST", "/v1/agents", {"name": "demo-warehouse"})
        _say(f"3. created agent {agent['id']} (token shown once: slc_{agent['id']}_…)")
        await demo.spawn(
            str(demo.bin / "sluice-agent"),
            "run",
            env=demo.env(
                SLUICE_AGENT_RELAY=f"127.0.0.1:{demo.ssh_port}",
                SLUICE_AGENT_TOKEN=agent["token"],
                SLUICE_AGENT_RELAY_FINGERPRINT=fingerprint,
                SLUICE_AGENT_ALLOW=f"127.0.0.1:{api_port}",
                SLUICE_AGENT_HEALTH_LISTEN=f"127.0.0.1:{demo.health_port}",
                SLUICE_AGENT_LOG_FORMAT="json",
            ),
            log=demo.data / "agent.log",
        )

        async def online() -> bool:
            got = await demo.call(http, "GET", f"/v1/agents/{agent['id']}")
            return bool(got["status"] == "online")

        t0 = time.perf_counter()
        await demo.wait_for(http, "the agent", online)
        _say(
            f"4. agent online after {(time.perf_counter() - t0) * 1000:.0f} ms "
            f"(pinned host key {fingerprint})"
        )

        def connection(name: str, mode: str) -> dict[str, Any]:
            return {
                "name": name,
                "mode": mode,
                "agent_id": agent["id"] if mode == "on_premise" else None,
                "http": {
                    "base_uri": api_base,
                    "media_type": "json",
                    "headers": [{"name": "X-Demo", "value": "{{connection.name}}"}],
                    "auth": {
                        "type": "token",
                        "token": API_TOKEN,
                        "location": "header",
                        "header_name": "Authorization",
                        "scheme": "Bearer",
                    },
                    "ping": {
                        "method": "GET",
                        "relative_uri": "/health",
                        "success_path": "ok",
                        "success_values": ["true"],
                    },
                },
            }

        step = 5
        for mode in ("on_premise", "cloud"):
            created = await demo.call(
                http, "POST", "/v1/connections", connection(f"Inventory ({mode})", mode)
            )
            test = await demo.call(http, "POST", f"/v1/connections/{created['id']}/test")
            _say(
                f"{step}. {mode} connection {created['id']}: test ok={test['ok']} "
                f"status={test['status']} in {test['elapsed_ms']} ms"
            )
            if not test["ok"]:
                raise RuntimeError(f"connection test failed: {test['message']}")
            for method, path, body in [
                ("GET", "/items", None),
                ("GET", "/items", None),
                ("POST", "/echo", b"x" * 65536),
            ]:
                t0 = time.perf_counter()
                async with http.request(
                    method,
                    f"{demo.base}/v1/connections/{created['id']}/proxy{path}",
                    data=body,
                    headers={"Authorization": f"Bearer {demo.admin}"},
                ) as resp:
                    text = await resp.text()
                ms = (time.perf_counter() - t0) * 1000
                _say(f"     {method:4} {path:7} -> {resp.status} in {ms:6.2f} ms  {text[:64]}")
                if resp.status != 200:
                    raise RuntimeError(f"{path} answered {resp.status}")
            step += 1

        denied = connection("Not allowed", "on_premise")
        denied["http"]["base_uri"] = "http://127.0.0.1:9/"
        created = await demo.call(http, "POST", "/v1/connections", denied)
        async with http.get(
            f"{demo.base}/v1/connections/{created['id']}/proxy/",
            headers={"Authorization": f"Bearer {demo.admin}"},
        ) as resp:
            problem = await resp.json(content_type=None)
        _say(
            f"{step}. a destination outside the agent's allowlist -> {resp.status} "
            f"{problem['type']}: {problem['detail'][:80]}"
        )
        status = await asyncio.create_subprocess_exec(
            str(demo.bin / "sluice-agent"),
            "status",
            "--health-listen",
            f"127.0.0.1:{demo.health_port}",
            stdout=asyncio.subprocess.PIPE,
            env=demo.env(),
        )
        out, _ = await status.communicate()
        _say(f"{step + 1}. sluice-agent status:")
        for line in out.decode().splitlines():
            _say(f"     {line}")
    return True
