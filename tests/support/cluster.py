"""Several relays on one PostgreSQL database, and agents that dial one of them."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import aiohttp

from sluice.tokens import AgentToken
from tests.support.agent import AgentProcess
from tests.support.capture import remember_secret
from tests.support.ports import free_port
from tests.support.relay_process import RelayProcess


def master_key() -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    remember_secret(key)
    return key


def cluster_relay(
    tmp_path: Path, name: str, database_url: str, key: str, admin_token: str, **settings: str
) -> RelayProcess:
    """A relay process that is a member of the cluster on *database_url*."""
    values = {
        "database_url": database_url,
        "master_key": key,
        "heartbeat_interval": "0.5",
        "relay_dead_after": "4",
        # Chosen now with the relay's other ports (a port of the system's
        # choosing could be one another relay of the test means to take).
        "cluster_listen": f"127.0.0.1:{free_port()}",
        "admin_token": admin_token,
        **settings,
    }
    relay = RelayProcess(
        tmp_path / f"relay-{name}", tmp_path / f"relay-{name}.log", prefix=None, **values
    )
    relay.admin_token = admin_token
    # Ports a restart can bind again: free_port's lie below the ephemeral
    # range, which no outgoing connection takes a port from meanwhile.
    relay.ssh_port, relay.http_port = free_port(), free_port()
    relay.base = f"http://127.0.0.1:{relay.http_port}"
    if "ssh_listen" not in settings:
        relay.env["SLUICE_SERVER_SSH_LISTEN"] = f"127.0.0.1:{relay.ssh_port}"
    relay.env["SLUICE_SERVER_HTTP_LISTEN"] = f"127.0.0.1:{relay.http_port}"
    remember_secret(admin_token)
    return relay


async def start_cluster_agent(
    tmp_path: Path,
    name: str,
    relay_address: str,
    fingerprint: str,
    token: AgentToken,
    allow: list[str],
    **env: str,
) -> AgentProcess:
    remember_secret(str(token), token.secret)
    agent_env = {
        "SLUICE_AGENT_RELAY": relay_address,
        "SLUICE_AGENT_TOKEN": str(token),
        "SLUICE_AGENT_RELAY_FINGERPRINT": fingerprint,
        "SLUICE_AGENT_ALLOW": ",".join(allow),
        "SLUICE_AGENT_LOG_FORMAT": "json",
        "SLUICE_AGENT_CONNECT_TIMEOUT": "3",
        "SLUICE_AGENT_BACKOFF_INITIAL": "0.1",
        "SLUICE_AGENT_BACKOFF_MAX": "1",
        "SLUICE_AGENT_HEALTH_LISTEN": "off",
        **{f"SLUICE_AGENT_{k.upper()}": v for k, v in env.items()},
    }
    return await AgentProcess(agent_env, tmp_path / f"agent-{name}.log").start()


async def get_json(
    http: aiohttp.ClientSession, relay: RelayProcess, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.get(
        relay.base + path, headers={"Authorization": f"Bearer {relay.admin_token}"}, **kwargs
    ) as resp:
        return resp.status, await resp.json(content_type=None)
