"""Cluster benchmarks: ``python -m bench.cluster`` (PostgreSQL needed).

1. A small GET served by the relay that holds the agent's tunnel against the
   same GET through a relay without one (forwarded over the relay-to-relay
   hop): the hop's added p50/p99, at c=1 and c=8.
2. Small GETs at c=32 through ``sluice-server run`` with 1 and with 2
   workers (the API port shared with SO_REUSEPORT).

The database comes from SLUICE_BENCH_POSTGRES_URL or SLUICE_TEST_POSTGRES_URL
(a server URL; a fresh database is made and dropped). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import WrkResult, write_lua, wrk
from bench.nginx import Nginx
from bench.postgres import fresh_database, server_url, unavailable
from bench.proc import Child, free_port, spawn, wait_until
from bench.stack import BIN, Relay, clean_env, start_agent


async def _agent(
    relay: Relay, agent_id: str, token: str, nginx: Nginx, log: Path, *, max_relays: int
) -> Child:
    """A ``sluice-agent run`` process dialling *relay*; returns once it is online."""
    return await start_agent(
        relay,
        agent_id,
        token,
        nginx.base.split("//", 1)[1],
        log,
        SLUICE_AGENT_MAX_RELAYS=str(max_relays),
        SLUICE_AGENT_DISCOVERY_INTERVAL="0.5",
    )


def _row(name: str, result: WrkResult) -> dict[str, Any]:
    return {
        "scenario": name,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The points as a Markdown table."""
    out = ["| scenario | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|"]
    out += [
        f"| {r['scenario']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
        f"| {r['errors']} |"
        for r in rows
    ]
    return out


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """What the hop adds (forwarded less local) and what a second worker gives."""
    by = {r["scenario"]: r for r in rows}
    out = []
    for c in (1, 8):
        local, fwd = by.get(f"local, c={c}"), by.get(f"forwarded, c={c}")
        if local and fwd:
            out.append(
                f"A forwarded request at c={c} adds {fwd['p50_ms'] - local['p50_ms']:+.2f} ms "
                f"p50 and {fwd['p99_ms'] - local['p99_ms']:+.2f} ms p99 to one served "
                f"locally ({fwd['rps'] / local['rps']:.2f}x the req/s)."
            )
    one, two = by.get("c=32, 1 worker"), by.get("c=32, 2 workers")
    if one and two and one["rps"]:
        out.append(
            f"c=32 with 2 workers: {two['rps'] / one['rps']:.2f}x the req/s of 1 worker "
            f"({two['rps']:,.0f} vs {one['rps']:,.0f})."
        )
    return out


async def forwarding(root: Path, database: str, nginx: Nginx, seconds: int) -> list[dict[str, Any]]:
    key = base64.b64encode(os.urandom(32)).decode()
    cluster = {"database_url": database, "master_key": key}
    env = {f"SLUICE_SERVER_{k.upper()}": v for k, v in cluster.items()}
    holder = await Relay.create(root / "holder", **env)
    other: Relay | None = None
    agent: Child | None = None
    try:
        other = await Relay.create(root / "other", **env)
        agent_id, token = await holder.create_agent("bench")
        # One tunnel, to the holder only: the other relay must forward.
        agent = await _agent(holder, agent_id, token, nginx, root / "a.log", max_relays=1)
        conn = await holder.create_connection("fwd", nginx.base + "/", agent_id)
        lua = write_lua(root)
        rows = []
        for conns in (1, 8):
            for name, relay in (("local", holder), ("forwarded", other)):
                result = await wrk(
                    relay.proxy_base(conn) + "/small.json",
                    lua=lua,
                    connections=conns,
                    seconds=seconds,
                    headers=relay.auth,
                )
                rows.append(_row(f"{name}, c={conns}", result))
        return rows
    finally:
        if agent is not None:
            await agent.stop()
        if other is not None:
            await other.close()
        await holder.close()


@contextlib.asynccontextmanager
async def worker_stack(
    root: Path, database: str, nginx: Nginx, count: int, name: str = "w", **extra_env: str
) -> AsyncIterator[tuple[Relay, Child, str]]:
    """``sluice-server run --workers count`` on *database*, an agent tunnelled
    to every worker and a connection through it to *nginx*: yields the relay
    (its pid is the workers' parent), the agent and the connection's id.
    *extra_env*: more variables for both (PYTHONPATH: the tree to run)."""
    key = base64.b64encode(os.urandom(32)).decode()
    data = root / f"workers-{count}-{name}"
    data.mkdir()
    http_port, ssh_port = free_port(), free_port()
    admin = "bench-admin-" + os.urandom(12).hex()
    env = clean_env(
        SLUICE_SERVER_DATA_DIR=str(data),
        SLUICE_SERVER_DATABASE_URL=database,
        SLUICE_SERVER_MASTER_KEY=key,
        SLUICE_SERVER_ADMIN_TOKEN=admin,
        SLUICE_SERVER_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        SLUICE_SERVER_SSH_LISTEN=f"127.0.0.1:{ssh_port}",
        SLUICE_SERVER_ALLOW_PRIVATE_DESTINATIONS="true",
        SLUICE_SERVER_LOG_LEVEL="warning",
        SLUICE_SERVER_LOG_FORMAT="json",
        **extra_env,
    )
    child = await spawn(
        "relay",
        [str(BIN / "sluice-server"), "run", "--workers", str(count)],
        env=env,
        log=root / f"workers-{count}-{name}.log",
    )
    relay = Relay(data, ssh_port, http_port, admin, child=child)
    relay.http = aiohttp.ClientSession(headers=relay.auth)
    agent: Child | None = None
    try:

        async def members() -> bool:
            try:
                body = await relay.call("GET", "/v1/cluster")
            except (aiohttp.ClientError, RuntimeError):
                return False
            return len(body["relays"]) == count

        await wait_until("every worker up", members, timeout=60, child=child)
        relay.fingerprint = (await relay.call("GET", "/v1/relay"))["ssh_fingerprint"]
        agent_id, token = await relay.create_agent(name)
        agent = await start_agent(
            relay,
            agent_id,
            token,
            nginx.base.split("//", 1)[1],
            root / f"workers-{count}-{name}-agent.log",
            SLUICE_AGENT_MAX_RELAYS=str(max(4, count)),
            SLUICE_AGENT_DISCOVERY_INTERVAL="0.5",
            **extra_env,
        )

        async def on_every_worker() -> bool:
            view = await relay.call("GET", f"/v1/agents/{agent_id}")
            return len({r["relay"] for r in view["replicas"]}) == count

        await wait_until("a tunnel to each worker", on_every_worker, timeout=60, child=agent)
        conn = await relay.create_connection(name, nginx.base + "/", agent_id)
        yield relay, agent, conn
    finally:
        if agent is not None:
            await agent.stop()
        await relay.close()


async def workers(
    root: Path, database: str, nginx: Nginx, count: int, seconds: int
) -> dict[str, Any]:
    async with worker_stack(root, database, nginx, count) as (relay, _agent, conn):
        result = await wrk(
            relay.proxy_base(conn) + "/small.json",
            lua=write_lua(root),
            connections=32,
            seconds=seconds,
            headers=relay.auth,
        )
        return _row(f"c=32, {count} worker{'s' if count > 1 else ''}", result)


async def measure(root: Path, seconds: int, fleet: tuple[int, int] | None = None) -> dict[str, Any]:
    """Every cluster point, or {"skipped": reason} without PostgreSQL.

    *fleet* (agents, per process): also that many agents tunnelled to each
    relay of a 3-relay cluster, and a restart of all three under them."""
    server = server_url()
    reason = await unavailable(server)
    if reason is not None:
        return {"skipped": reason}
    assert server is not None
    root.mkdir(parents=True, exist_ok=True)
    nginx = await Nginx.start(root / "nginx", {}, upload_size=1024)
    rows: list[dict[str, Any]] = []
    try:
        async with fresh_database(server) as database:
            rows += await forwarding(root, database, nginx, seconds)
        for count in (1, 2):
            async with fresh_database(server) as database:
                rows.append(await workers(root, database, nginx, count, seconds))
    finally:
        await nginx.stop()
    got: dict[str, Any] = {"seconds": seconds, "rows": rows}
    if fleet is not None:
        from bench.scale import cluster_fleet

        try:
            async with fresh_database(server) as database:
                got["fleet"] = await cluster_fleet(root / "fleet", database, *fleet, timeout=300.0)
        except RuntimeError as exc:
            # Said in the report, and the points above are kept.
            got["fleet_failed"] = str(exc)
    return got


def fleet_lines(fleet: dict[str, Any]) -> list[str]:
    """The 3-relay fleet's numbers in words."""
    rss = ", ".join(f"{v:.0f}" for v in fleet["relay_rss_mb"])
    idle = ", ".join(f"{v:.0f}" for v in fleet["relay_rss_idle_mb"])
    per = ", ".join(f"{v:.0f}" for v in fleet["relay_rss_per_tunnel_kb"])
    return [
        f"{fleet['agents']} agents, each tunnelled to all {fleet['relays']} relays "
        f"({fleet['processes']} `bench.fleet` processes): all connected in "
        f"{fleet['connect_all_s']:.1f} s; relay RSS {rss} MB (idle {idle}; {per} KB per "
        "tunnel).",
        f"All {fleet['relays']} relays stopped (SIGTERM, {fleet['relays_stop_s']:.1f} s) and "
        f"started again: every agent back on every relay {fleet['restart_all_online_s']:.1f} s "
        "after the stop.",
    ]


async def main(seconds: int) -> int:
    got = await measure(Path(tempfile.mkdtemp(prefix="sluice-bench-cluster-")), seconds)
    if "skipped" in got:
        print(f"bench.cluster: skipped: {got['skipped']}")
        return 2
    print("\n".join(table(got["rows"])))
    print("\n".join(findings(got["rows"])))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    sys.exit(asyncio.run(main(parser.parse_args().seconds)))
