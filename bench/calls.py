"""Function calls per request in the relay and the agent: ``python -m bench.calls``.

Runs a relay and an agent of one source tree (``--tree DIR``, default this
one) in front of nginx, with ``bench/calls_site`` first on their PYTHONPATH,
and counts each process's calls (``sys.setprofile``) while ``wrk`` sends
keep-alive GETs of a small JSON answer at the given concurrency; prints the
Python and C calls per request of each process and the functions called
most. The counting slows both processes several times over: compare counts,
not timings. Counts show per-request work that profiles spread thin (a
function called a dozen times per request, a cast or a context manager on
every packet).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import tempfile
from pathlib import Path

from bench import load
from bench.nginx import MiB, Nginx
from bench.stack import Relay, start_agent

SITE = Path(__file__).parent / "calls_site"
ROOT = Path(__file__).resolve().parent.parent


def per_request(text: str, requests: int, top: int) -> list[str]:
    """The summary of one process's counts file (``n name`` lines)."""
    rows = [line.split(" ", 1) for line in text.splitlines() if line]
    counted = [(int(n), name) for n, name in rows]
    python = sum(n for n, name in counted if not name.startswith("C "))
    native = sum(n for n, name in counted if name.startswith("C "))
    lines = [
        f"Python calls/request {python / requests:.1f}, C calls/request {native / requests:.1f}"
    ]
    lines += [f"  {n / requests:7.2f}  {name}" for n, name in counted[:top]]
    return lines


async def measure(tree: Path, connections: int, seconds: int, top: int) -> list[str]:
    root = Path(tempfile.mkdtemp(prefix="sluice-calls-", dir="/dev/shm"))
    path = f"{SITE}:{tree}"
    nginx = await Nginx.start(root / "nginx", {}, upload_size=MiB, real={})
    relay: Relay | None = None
    try:
        relay = await Relay.create(
            root / "relay",
            PYTHONPATH=path,
            SLUICE_BENCH_CALLS="relay",
            SLUICE_BENCH_CALLS_DIR=str(root),
        )
        agent_id, token = await relay.create_agent("calls")
        agent = await start_agent(
            relay,
            agent_id,
            token,
            f"127.0.0.1:{nginx.port}",
            root / "agent.log",
            PYTHONPATH=path,
            SLUICE_BENCH_CALLS="agent",
            SLUICE_BENCH_CALLS_DIR=str(root),
        )
        try:
            conn = await relay.create_connection("calls", nginx.base, agent_id)
            url = relay.proxy_base(conn) + "/small.json"
            lua = load.write_lua(root)
            # Warm: pools, caches, memos.
            await load.wrk(url, lua=lua, connections=connections, seconds=1, headers=relay.auth)
            pids = {"relay": relay.pid, "agent": agent.pid}
            for pid in pids.values():
                os.kill(pid, signal.SIGUSR1)
            got = await load.wrk(
                url, lua=lua, connections=connections, seconds=seconds, headers=relay.auth
            )
            for pid in pids.values():
                os.kill(pid, signal.SIGUSR2)
            out = [f"c={connections}: {got.requests} requests, {got.errors} errors"]
            for role in pids:
                counts = root / f"calls-{role}.txt"
                async with asyncio.timeout(10):
                    while not counts.exists():
                        await asyncio.sleep(0.05)  # the process writes it from its handler
                out.append(
                    f"{role}: " + "\n".join(per_request(counts.read_text(), got.requests, top))
                )
            return out
        finally:
            await agent.stop()
    finally:
        if relay is not None:
            await relay.close()
        await nginx.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--top", type=int, default=40, help="functions listed per process")
    args = parser.parse_args()
    lines = asyncio.run(measure(args.tree.resolve(), args.connections, args.seconds, args.top))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
