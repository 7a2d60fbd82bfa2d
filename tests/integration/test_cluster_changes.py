"""The change feed: a relay acts on changes another process made (the CLI, or
another relay on the same database) — tokens, agents, connections."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from server.connections.service import ConnectionService
from server.relay import Relay
from server.secrets.keyring import load_secret_box
from server.storage.store import Store
from tests.conftest import AgentFactory, relay_settings
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.waiting import wait_until

# Also run against PostgreSQL by `make test` when SLUICE_TEST_POSTGRES_URL is set.
pytestmark = pytest.mark.postgres

BIN = Path(sys.executable).parent
TOKEN = "api-token-" + "c" * 20


async def _cli(relay: Relay, *args: str) -> tuple[int, str]:
    """``sluice-server`` run as the operator runs it, on the relay's data dir and database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["SLUICE_SERVER_DATA_DIR"] = str(relay.settings.data_dir)
    if relay.settings.database_url:
        env["SLUICE_SERVER_DATABASE_URL"] = relay.settings.database_url
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "sluice-server"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _offline_within(relay: Relay, agent_id: str, limit: float) -> float:
    began = time.monotonic()
    await wait_until(
        lambda: not relay.registry.replicas(agent_id),
        timeout=limit,
        what="the agent's tunnels closed",
    )
    return time.monotonic() - began


async def test_cli_rotate_token_closes_live_tunnels_within_5s(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    code, out = await _cli(relay, "agents", "rotate-token", token.agent_id)
    assert code == 0, out
    remember_secret(out.split("token: ", 1)[1].strip())
    await _offline_within(relay, token.agent_id, 5)
    # The agent keeps retrying with its old token: it stays out.
    answer = await client.call("GET", f"/v1/agents/{token.agent_id}")
    assert answer.body["status"] == "offline"
    assert await relay.store.authenticate_agent(token) is None


async def test_cli_delete_closes_live_tunnels_within_5s(
    relay: Relay, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    code, out = await _cli(relay, "agents", "delete", token.agent_id)
    assert code == 0, out
    await _offline_within(relay, token.agent_id, 5)


async def test_grace_period_end_closes_tunnels_of_the_old_token(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    rotated = await client.call(
        "POST",
        f"/v1/agents/{token.agent_id}/rotate-token",
        json_body={"grace_seconds": 1},
        shows_token=True,
    )
    remember_secret(rotated.body["token"])
    assert rotated.status == 200
    assert relay.registry.is_online(token.agent_id)  # the grace lets it stay for now
    elapsed = await _offline_within(relay, token.agent_id, 5)
    assert elapsed >= 0.5


async def test_connection_edit_by_another_process_is_used_by_the_next_request(
    tmp_path: Path, relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    """Another relay on the same database edits a connection: this relay's
    next requests use the edit, not its cached copy."""
    remember_secret(TOKEN)
    _, token = await start_agent([f"127.0.0.1:{api.port}"])
    created = await client.call(
        "POST",
        "/v1/connections",
        json_body={
            "name": "edited elsewhere",
            "mode": "on_premise",
            "agent_id": token.agent_id,
            "http": {
                "base_uri": f"{api.base}/",
                "headers": [{"name": "X-Version", "value": "one"}],
            },
        },
    )
    assert created.status == 201, created.text
    conn_id = created.body["id"]
    path = f"/v1/connections/{conn_id}/proxy/hello"
    assert (await client.call("GET", path)).status == 200
    assert api.seen[-1].headers["X-Version"] == "one"

    # The other process: its own store and connection service on the same database.
    other = await Store.open(relay.settings.resolved_database_url())
    try:
        service = ConnectionService(other, load_secret_box(relay.settings))
        await service.patch(conn_id, {"http": {"headers": [{"name": "X-Version", "value": "two"}]}})
    finally:
        await other.close()
    # Within the feed's interval (not the cache's), the next request uses it.
    began = time.monotonic()
    while True:
        assert (await client.call("GET", path)).status == 200
        if api.seen[-1].headers["X-Version"] == "two":
            break
        assert time.monotonic() - began < 1.5, "the edit never reached this relay"
        await asyncio.sleep(0.02)


async def test_feed_interval_is_what_bounds_the_delay(tmp_path: Path) -> None:
    """The feed reads on its interval: a change by another process is seen
    after about one interval, with the relay doing nothing else."""
    relay = await Relay.start(relay_settings(tmp_path, change_poll_interval=0.2), serve_http=False)
    try:
        assert relay.feed is not None
        seen: list[tuple[str, str]] = []
        assert relay.reactions is not None
        relay.reactions.on("probe", lambda target: seen.append(("probe", target)))
        other = await Store.open(relay.settings.resolved_database_url())
        try:
            from server.storage.cluster import ClusterStore

            await ClusterStore(other).record("probe", "x1")
        finally:
            await other.close()
        await wait_until(lambda: ("probe", "x1") in seen, timeout=2, what="the change")
    finally:
        await relay.close()
