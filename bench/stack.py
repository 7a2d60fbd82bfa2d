"""Sluice as the product runs: ``sluice-server run`` and ``sluice-agent run`` processes.

Settings go in through the environment, as an operator would set them. The
relay's admin API creates the agents and the two connections the bench
drives: on-premise (through the agent) and cloud (the relay straight to
nginx, so the relay's own cost shows apart from the tunnel's).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.proc import Child, free_port, run_tool, spawn, wait_until

BIN = Path(sys.executable).parent
DUMMY_API_TOKEN = "bench-api-token"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(extra)
    return env


@dataclass
class Relay:
    """One ``sluice-server run`` process and an admin client for its API."""

    data: Path
    ssh_port: int
    http_port: int
    admin: str
    child: Child | None = None
    fingerprint: str = ""
    http: aiohttp.ClientSession | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ssh_address(self) -> str:
        return f"127.0.0.1:{self.ssh_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def env(self) -> dict[str, str]:
        settings = {
            "SLUICE_SERVER_DATA_DIR": str(self.data),
            "SLUICE_SERVER_SSH_LISTEN": self.ssh_address,
            "SLUICE_SERVER_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "SLUICE_SERVER_ADMIN_TOKEN": self.admin,
            # nginx is on loopback; a real cloud API would not be.
            "SLUICE_SERVER_ALLOW_PRIVATE_DESTINATIONS": "true",
            "SLUICE_SERVER_LOG_LEVEL": "warning",
            "SLUICE_SERVER_LOG_FORMAT": "json",
        }
        return clean_env(**(settings | self.extra_env))

    @classmethod
    async def create(cls, data: Path, **extra_env: str) -> Relay:
        relay = cls(
            data,
            free_port(),
            free_port(),
            "bench-admin-" + os.urandom(12).hex(),
            extra_env=extra_env,
        )
        data.mkdir(parents=True)
        rc, out, err = await run_tool(
            [str(BIN / "sluice-server"), "fingerprint"], 30, env=relay.env()
        )
        if rc:
            raise RuntimeError(f"sluice-server fingerprint failed: {err}")
        relay.fingerprint = out.strip()
        relay.http = aiohttp.ClientSession(headers=relay.auth)
        try:
            await relay.start()
        except BaseException:
            await relay.close()
            raise
        return relay

    async def start(self) -> float:
        """Start the process; returns seconds until /healthz answered."""
        self.child = await spawn(
            "relay",
            [str(BIN / "sluice-server"), "run"],
            env=self.env(),
            log=self.data.parent / f"{self.data.name}.log",
        )
        return await wait_until("the relay's /healthz", self._healthy, timeout=30, child=self.child)

    async def _healthy(self) -> bool:
        assert self.http is not None
        async with self.http.get(self.base + "/healthz") as resp:
            return resp.status == 200

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.http is not None
        async with self.http.request(method, self.base + path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {data}")
            return data

    async def agents_online(self) -> int:
        """The relay's own count (sluice_agents_online on /metrics)."""
        assert self.http is not None
        async with self.http.get(self.base + "/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("sluice_agents_online "):
                return int(float(line.split()[1]))
        return 0

    async def create_agent(self, name: str) -> tuple[str, str]:
        agent = await self.call("POST", "/v1/agents", {"name": name})
        return str(agent["id"]), str(agent["token"])

    async def create_connection(self, name: str, base_uri: str, agent_id: str | None) -> str:
        doc = {
            "name": name,
            "mode": "on_premise" if agent_id else "cloud",
            "agent_id": agent_id,
            "http": {
                "base_uri": base_uri,
                "media_type": "json",
                "auth": {
                    "type": "token",
                    "token": DUMMY_API_TOKEN,
                    "location": "header",
                    "header_name": "Authorization",
                    "scheme": "Bearer",
                },
            },
        }
        conn = await self.call("POST", "/v1/connections", doc)
        return str(conn["id"])

    def proxy_base(self, conn_id: str) -> str:
        return f"{self.base}/v1/connections/{conn_id}/proxy"

    async def stop(self) -> int:
        rc = await self.child.stop(timeout=45) if self.child else 0
        return rc

    async def close(self) -> None:
        try:
            await self.stop()
        finally:
            if self.http is not None:
                await self.http.close()


async def start_agent(
    relay: Relay,
    agent_id: str,
    token: str,
    allow: str,
    log: Path,
    relay_address: str | None = None,
    **settings: str,
) -> Child:
    """A real ``sluice-agent run`` process; returns once the relay sees it online.
    *relay_address*: where it reaches the relay's SSH port (e.g. a delay line);
    *settings*: more SLUICE_AGENT_* variables."""
    child = await spawn(
        "agent",
        [str(BIN / "sluice-agent"), "run"],
        log=log,
        env=clean_env(
            SLUICE_AGENT_RELAY=relay_address or relay.ssh_address,
            SLUICE_AGENT_TOKEN=token,
            SLUICE_AGENT_RELAY_FINGERPRINT=relay.fingerprint,
            SLUICE_AGENT_ALLOW=allow,
            SLUICE_AGENT_HEALTH_LISTEN="off",
            SLUICE_AGENT_LOG_LEVEL="warning",
            SLUICE_AGENT_LOG_FORMAT="json",
            SLUICE_AGENT_DRAIN_TIMEOUT="5",
        )
        | settings,  # (may set any of these, e.g. the log level)
    )

    async def online() -> bool:
        agent = await relay.call("GET", f"/v1/agents/{agent_id}")
        return bool(agent["status"] == "online")

    try:
        await wait_until("the agent online", online, timeout=30, child=child)
    except BaseException:
        await child.stop()
        raise
    return child
