"""Many agents in one process, for the scale bench: ``python -m bench.fleet``.

Each token gets the agent's own Supervisor and asyncssh tunnel (the code
``sluice-agent run`` uses), so the relay sees N distinct agents. Every
connection attempt is timed (monotonic clock, shared by all processes on the
machine) and written to ``--events`` on exit, from which the bench works out
how many handshakes were in flight at once.

Backoff for these agents is small on purpose (see BACKOFF) so that a relay
restart measures the relay, not the agents' waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from agent.allowlist import Allowlist
from agent.proxy import ProxyContext
from agent.relay_set import RelaySet
from agent.settings import AgentSettings
from agent.state import TunnelStatus
from agent.stats import ProxyStats
from agent.supervisor import Opener, Supervisor, Tunnel, connect_opener
from sluice.addresses import HostPort
from sluice.logs import configure_logging
from sluice.runtime import install_uvloop

BACKOFF = {
    "backoff_initial": 0.2,
    "backoff_multiplier": 2.0,
    "backoff_max": 2.0,
    "stable_after": 5.0,
}


async def run(
    tokens: list[str],
    relay: str,
    fingerprint: str,
    events_path: Path,
    max_seconds: float,
    max_relays: int = 1,
) -> None:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    ctx = ProxyContext(allowlist=Allowlist.parse([]), connect_timeout=10, stats=ProxyStats())
    events: list[tuple[float, float, bool]] = []
    supervisors: list[Supervisor | RelaySet] = []
    for raw in tokens:
        settings = AgentSettings(
            relay=[relay],
            token=raw,
            relay_fingerprint=fingerprint,
            health_listen=None,
            drain_timeout=0,
            login_timeout=60,
            log_level="warning",
            backoff_initial=BACKOFF["backoff_initial"],
            backoff_multiplier=BACKOFF["backoff_multiplier"],
            backoff_max=BACKOFF["backoff_max"],
            stable_after=BACKOFF["stable_after"],
            max_relays=max_relays,
            discovery_interval=1.0,
        )
        if max_relays > 1:
            # A cluster agent: the seed plus a tunnel to every other relay it
            # learns of, as ``sluice-agent run`` keeps (attempts not timed).
            supervisors.append(RelaySet(settings, settings.load_token(), ctx, TunnelStatus()))
            continue
        opener = connect_opener(settings, settings.load_token(), ctx)

        async def timed(address: HostPort, opener: Opener = opener) -> Tunnel:
            began, ok = time.monotonic(), False
            try:
                tunnel = await opener(address)
                ok = True
                return tunnel
            finally:
                events.append((began, time.monotonic(), ok))

        supervisors.append(Supervisor(settings, timed, ctx))
    tasks = [asyncio.ensure_future(s.run(shutdown)) for s in supervisors]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max_seconds):  # never outlive a crashed bench
            await shutdown.wait()
    shutdown.set()
    await asyncio.wait(tasks, timeout=30)
    events_path.write_text("\n".join(json.dumps(e) for e in events) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--relay", required=True)
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--tokens", type=Path, required=True, help="one token per line")
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--max-relays", type=int, default=1, help="> 1: tunnel to the cluster")
    args = parser.parse_args()
    configure_logging("json", "warning")
    install_uvloop()
    tokens = args.tokens.read_text().split()
    asyncio.run(
        run(tokens, args.relay, args.fingerprint, args.events, args.max_seconds, args.max_relays)
    )


if __name__ == "__main__":
    main()
