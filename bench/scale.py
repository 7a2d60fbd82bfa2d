"""Scale: many slow requests through one agent; many agents on one relay; restart.

The agents here are ``bench.fleet`` processes (a few hundred asyncssh agent
sessions each) against a relay of their own, so the relay's memory per agent
is not mixed with what the throughput runs left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.fleet import BACKOFF
from bench.postgres import fresh_database, server_url, unavailable
from bench.proc import (
    Child,
    cpu_seconds,
    memory_kib,
    raise_fd_limit,
    reset_peak,
    spawn,
    wait_until,
)
from bench.stack import Relay, clean_env


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def slow_requests(
    url: str, headers: dict[str, str], n: int, pids: dict[str, int]
) -> dict[str, Any]:
    """*n* requests at once to an endpoint that answers after 1 s; all must be 200."""
    for pid in pids.values():
        reset_peak(pid)
    cpu0 = cpu_seconds(list(pids.values()))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    statuses: list[int | str] = []
    latencies: list[float] = []

    async def one(session: aiohttp.ClientSession) -> None:
        began = time.perf_counter()
        try:
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                statuses.append(resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            statuses.append(type(exc).__name__)
        latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(one(session) for _ in range(n)))
    wall = time.perf_counter() - began
    ok = sum(1 for s in statuses if s == 200)
    failures: dict[str, int] = {}
    for s in statuses:
        if s != 200:
            failures[str(s)] = failures.get(str(s), 0) + 1
    return {
        "requests": n,
        "ok": ok,
        "failures": failures,
        "wall_s": wall,
        "p50_s": _pct(latencies, 0.5),
        "p99_s": _pct(latencies, 0.99),
        "max_s": max(latencies, default=0.0),
        "cpu_s": cpu_seconds(list(pids.values())) - cpu0,
        "peak_rss_mb": {role: memory_kib(pid)["VmHWM"] / 1024 for role, pid in pids.items()},
    }


def max_in_flight(
    events: list[tuple[float, float, bool]],
    since: float,
    until: float,
) -> int:
    """Most connection attempts (TCP connect to tunnel registered) open at once."""
    edges: list[tuple[float, int]] = []
    for start, end, _ok in events:
        if end >= since and start <= until:
            edges += [(start, 1), (end, -1)]
    edges.sort(key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


async def _create_agents(relay: Relay, n: int) -> list[str]:
    tokens: list[str] = []
    for first in range(0, n, 50):
        made = await asyncio.gather(
            *(relay.create_agent(f"fleet-{i}") for i in range(first, min(n, first + 50)))
        )
        tokens += [token for _, token in made]
    return tokens


async def _wait_online(relay: Relay, n: int, timeout: float) -> float:
    async def all_online() -> bool:
        return await relay.agents_online() >= n

    return await wait_until(
        f"{n} agents online", all_online, timeout=timeout, interval=0.1, child=relay.child
    )


async def agent_fleet(root: Path, n: int, per_process: int, timeout: float) -> dict[str, Any]:
    """Connect *n* agents to a fresh relay, then restart the relay under them."""
    relay = await Relay.create(root / "relay")
    fleets: list[Child] = []
    result: dict[str, Any] = {
        "agents": n,
        "per_process": per_process,
        "processes": -(-n // per_process),
        "backoff": BACKOFF,
    }
    try:
        tokens = await _create_agents(relay, n)
        await asyncio.sleep(1)  # let the relay settle after the API burst before sampling
        before = memory_kib(relay.pid)
        result["relay_rss_idle_mb"] = before["VmRSS"] / 1024
        cpu0 = cpu_seconds([relay.pid])
        began = time.monotonic()
        for i in range(0, n, per_process):
            (root / f"tokens-{i}.txt").write_text("\n".join(tokens[i : i + per_process]) + "\n")
            fleets.append(
                await spawn(
                    f"fleet-{i}",
                    [
                        sys.executable,
                        "-m",
                        "bench.fleet",
                        "--relay",
                        relay.ssh_address,
                        "--fingerprint",
                        relay.fingerprint,
                        "--tokens",
                        str(root / f"tokens-{i}.txt"),
                        "--events",
                        str(root / f"events-{i}.jsonl"),
                        "--max-seconds",
                        "1800",
                    ],
                    env=clean_env(),
                    log=root / f"fleet-{i}.log",
                )
            )
        result["connect_all_s"] = await _wait_online(relay, n, timeout)
        connected_at = time.monotonic()
        result["relay_cpu_connect_s"] = cpu_seconds([relay.pid]) - cpu0
        await asyncio.sleep(2)  # let the last registrations' bookkeeping finish
        after = memory_kib(relay.pid)
        result["relay_rss_mb"] = after["VmRSS"] / 1024
        result["relay_hwm_mb"] = after["VmHWM"] / 1024
        result["relay_rss_per_agent_kb"] = (after["VmRSS"] - before["VmRSS"]) / n
        # Let sessions pass stable_after, as long-lived agents' would have.
        await asyncio.sleep(
            max(0.0, BACKOFF["stable_after"] + 1 - (time.monotonic() - connected_at))
        )

        stop_at = time.monotonic()
        result["relay_stop_rc"] = await relay.stop()
        stopped_at = time.monotonic()
        result["relay_stop_s"] = stopped_at - stop_at
        result["relay_start_s"] = await relay.start()
        online_s = await _wait_online(relay, n, timeout)
        done_at = time.monotonic()
        result["restart_all_online_s"] = done_at - stop_at
        result["restart_online_after_spawn_s"] = done_at - stopped_at
        result["restart_online_after_ready_s"] = online_s
        restart_window = (stop_at, done_at)
        connect_window = (began, connected_at)
    finally:
        for fleet in fleets:
            await fleet.stop(timeout=60)
        await relay.close()
    events: list[tuple[float, float, bool]] = []
    for path in root.glob("events-*.jsonl"):
        events += [tuple(json.loads(line)) for line in path.read_text().split("\n") if line]
    result["attempts"] = len(events)
    result["failed_attempts"] = sum(1 for e in events if not e[2])
    result["handshakes_at_once_connect"] = max_in_flight(events, *connect_window)
    result["handshakes_at_once_restart"] = max_in_flight(events, *restart_window)
    ok = [e[1] - e[0] for e in events if e[2]]
    result["handshake_median_s"] = statistics.median(ok) if ok else 0.0
    return result


async def cluster_fleet(
    root: Path, database: str, n: int, per_process: int, timeout: float, relays: int = 3
) -> dict[str, Any]:
    """*n* agents each tunnelled to every relay of a *relays*-relay cluster on
    PostgreSQL (*database*, made fresh by the caller): RSS per relay, then the
    time for every agent to be back on every relay after all relays are
    stopped (SIGTERM) and started again."""
    key = base64.b64encode(os.urandom(32)).decode()
    env = {"SLUICE_SERVER_DATABASE_URL": database, "SLUICE_SERVER_MASTER_KEY": key}
    root.mkdir(parents=True, exist_ok=True)
    members: list[Relay] = []
    fleets: list[Child] = []
    result: dict[str, Any] = {
        "agents": n,
        "relays": relays,
        "per_process": per_process,
        "processes": -(-n // per_process),
    }

    async def all_online(what: str) -> float:
        async def check() -> bool:
            counts = await asyncio.gather(*(r.agents_online() for r in members))
            return min(counts) >= n

        return await wait_until(what, check, timeout=timeout, interval=0.2)

    try:
        for i in range(relays):
            members.append(await Relay.create(root / f"relay-{i}", **env))
        tokens = await _create_agents(members[0], n)
        # One host key for the cluster (the later relays' `fingerprint` output
        # carries a note about adopting it): the API's answer is the key in use.
        fingerprint = str((await members[0].call("GET", "/v1/relay"))["ssh_fingerprint"])
        await asyncio.sleep(1)
        result["relay_rss_idle_mb"] = [memory_kib(r.pid)["VmRSS"] / 1024 for r in members]
        began = time.monotonic()
        for k, i in enumerate(range(0, n, per_process)):
            seed = members[k % relays]  # the fleets' seeds spread over the relays
            (root / f"tokens-{i}.txt").write_text("\n".join(tokens[i : i + per_process]) + "\n")
            fleets.append(
                await spawn(
                    f"fleet-{i}",
                    [
                        sys.executable,
                        "-m",
                        "bench.fleet",
                        "--relay",
                        seed.ssh_address,
                        "--fingerprint",
                        fingerprint,
                        "--tokens",
                        str(root / f"tokens-{i}.txt"),
                        "--events",
                        str(root / f"events-{i}.jsonl"),
                        "--max-seconds",
                        str(timeout * 3),
                        "--max-relays",
                        str(relays),
                    ],
                    env=clean_env(),
                    log=root / f"fleet-{i}.log",
                )
            )
        await all_online(f"{n} agents on each of {relays} relays")
        result["connect_all_s"] = time.monotonic() - began
        await asyncio.sleep(2)  # let the last registrations' bookkeeping finish
        result["relay_rss_mb"] = [memory_kib(r.pid)["VmRSS"] / 1024 for r in members]
        result["relay_rss_per_tunnel_kb"] = [
            (after - before) * 1024 / n
            for after, before in zip(
                result["relay_rss_mb"], result["relay_rss_idle_mb"], strict=True
            )
        ]
        await asyncio.sleep(BACKOFF["stable_after"] + 1)
        stop_at = time.monotonic()
        await asyncio.gather(*(r.stop() for r in members))
        result["relays_stop_s"] = time.monotonic() - stop_at
        await asyncio.gather(*(r.start() for r in members))
        await all_online(f"{n} agents back on each of {relays} relays")
        result["restart_all_online_s"] = time.monotonic() - stop_at
        result["relay_rss_after_restart_mb"] = [memory_kib(r.pid)["VmRSS"] / 1024 for r in members]
    finally:
        for fleet in fleets:
            await fleet.stop(timeout=60)
        for relay in members:
            await relay.close()
    return result


async def _cluster_fleet_main(n: int, per_process: int, timeout: float) -> int:
    server = server_url()
    reason = await unavailable(server)
    if reason is not None:
        print(f"skipped: {reason}")
        return 2
    assert server is not None
    raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="sluice-bench-cluster-fleet-"))
    async with fresh_database(server) as database:
        got = await cluster_fleet(root, database, n, per_process, timeout)
    print(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="n agents on a 3-relay cluster (PostgreSQL)")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--per-process", type=int, default=250)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    sys.exit(asyncio.run(_cluster_fleet_main(args.agents, args.per_process, args.timeout)))
