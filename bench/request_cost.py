"""Rough cost of one request: direct vs through the tunnel (aiohttp client, c=1).

Run: .venv/bin/python -m bench.request_cost [N]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from server.relay import Relay
from server.settings import ServerSettings
from sluice.addresses import HostPort
from sluice.logs import configure_logging
from sluice.runtime import install_uvloop


async def _timed(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _summary(name: str, ms: list[float]) -> str:
    ms = sorted(ms)

    def p(q: float) -> float:
        return ms[min(len(ms) - 1, int(q * len(ms)))]

    return (
        f"{name:8} n={len(ms)} p50={p(0.5):.3f} ms p90={p(0.9):.3f} ms "
        f"p99={p(0.99):.3f} ms mean={statistics.fmean(ms):.3f} ms"
    )


async def main(n: int) -> None:
    configure_logging("console", "warning")
    api = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.api_server", stdout=asyncio.subprocess.PIPE
    )
    assert api.stdout
    port = int((await api.stdout.readline()).split()[1])
    with tempfile.TemporaryDirectory() as tmp:
        relay = await Relay.start(
            ServerSettings(
                data_dir=Path(tmp), ssh_listen=HostPort("127.0.0.1", 0), log_level="warning"
            )
        )
        _, token = await relay.store.create_agent("bench")
        env = dict(
            os.environ,
            SLUICE_AGENT_RELAY=f"127.0.0.1:{relay.ssh_address[1]}",
            SLUICE_AGENT_TOKEN=str(token),
            SLUICE_AGENT_RELAY_FINGERPRINT=relay.fingerprint,
            SLUICE_AGENT_ALLOW=f"127.0.0.1:{port}",
            SLUICE_AGENT_LOG_LEVEL="warning",
            SLUICE_AGENT_HEALTH_LISTEN="off",
        )
        agent = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "sluice-agent"), "run", env=env
        )
        async with asyncio.timeout(20):
            while not relay.registry.is_online(token.agent_id):
                await relay.registry.wait_changed()
        url = f"http://127.0.0.1:{port}/hello"
        async with aiohttp.ClientSession() as direct:
            tunnel = relay.tunnel_http.session(token.agent_id)
            await _timed(direct, url, 200)
            await _timed(tunnel, url, 200)
            d = await _timed(direct, url, n)
            t = await _timed(tunnel, url, n)
        print(_summary("direct", d))
        print(_summary("tunnel", t))
        print(f"added p50: {statistics.median(t) - statistics.median(d):.3f} ms")
        await relay.tunnel_http.close()
        agent.terminate()
        await agent.wait()
        await relay.close()
    api.terminate()
    await api.wait()


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
