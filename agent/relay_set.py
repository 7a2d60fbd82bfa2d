"""Tunnels to every relay of a cluster, learnt from the relay the agent dialled.

The relay the settings name (with failover, as before) is the seed. Through
any live tunnel the agent asks its relay for the cluster's relays (a channel
to ``sshconfig.CLUSTER_RELAYS_HOST``) every ``discovery_interval`` seconds
and keeps one more supervisor per relay, up to ``max_relays`` (a subset
stable per agent when there are more), each with its own backoff. A relay
that leaves the list has its supervisor drained and stopped. A relay that
does not answer the question (an older version) leaves the agent with its
one tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field

import asyncssh
import structlog

from agent.proxy import ProxyContext
from agent.settings import AgentSettings
from agent.state import TunnelStatus
from agent.supervisor import Supervisor, connect_opener
from agent.tunnel import TunnelSession
from sluice import sshconfig
from sluice.addresses import HostPort
from sluice.tokens import AgentToken

log = structlog.get_logger("sluice.agent.relays")


@dataclass(frozen=True)
class Cluster:
    """What a relay answered: itself and the relays to keep tunnels to."""

    relay: str
    relays: list[str]


async def ask_relays(ssh: asyncssh.SSHClientConnection, timeout: float = 5.0) -> Cluster | None:
    """The cluster as the relay at the other end of *ssh* sees it; None when it
    does not say (an older relay refuses the channel)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await ssh.open_connection(sshconfig.CLUSTER_RELAYS_HOST, 0)
            data = await reader.read(65536)
            writer.close()
    except (asyncssh.Error, OSError, TimeoutError):
        return None
    try:
        answer = json.loads(data)
        relay = answer["relay"]
        relays = answer["relays"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(relay, str) or not isinstance(relays, list):
        return None
    return Cluster(relay, [r for r in relays if isinstance(r, str)][:64])


def stable_subset(relays: list[str], count: int, agent_id: str) -> list[str]:
    """*count* of *relays*, the same ones for this agent whatever their order,
    so that agents spread over a large cluster instead of all taking the first."""
    ranked = sorted(set(relays), key=lambda r: hashlib.sha256(f"{agent_id}|{r}".encode()).digest())
    return ranked[:count]


@dataclass
class _Member:
    supervisor: Supervisor
    shutdown: asyncio.Event
    task: asyncio.Task[None]
    since: float = field(default=0.0)


class RelaySet:
    """The seed supervisor plus one per other relay of the cluster."""

    def __init__(
        self,
        settings: AgentSettings,
        token: AgentToken,
        ctx: ProxyContext,
        status: TunnelStatus,
    ) -> None:
        self._settings = settings
        self._token = token
        self._ctx = ctx
        self.seed = Supervisor(settings, connect_opener(settings, token, ctx), ctx, status)
        self.members: dict[str, _Member] = {}
        self._seed_relay: str | None = None

    def __repr__(self) -> str:
        return f"<RelaySet seed={self._seed_relay} members={sorted(self.members)}>"

    async def run(self, shutdown: asyncio.Event) -> None:
        seed = asyncio.ensure_future(self.seed.run(shutdown))
        discovery = asyncio.ensure_future(self._discover(shutdown))
        stop = asyncio.ensure_future(shutdown.wait())
        try:
            await asyncio.wait([seed, stop], return_when=asyncio.FIRST_COMPLETED)
            # Every tunnel stops taking streams at once: the drain waits for
            # the streams of all of them (one shared count).
            for member in self.members.values():
                member.shutdown.set()
            await seed
        finally:
            stop.cancel()
            seed.cancel()
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
            for member in self.members.values():
                member.shutdown.set()
            await asyncio.gather(*(m.task for m in self.members.values()), return_exceptions=True)

    async def _discover(self, shutdown: asyncio.Event) -> None:
        while not shutdown.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.discovery_interval):
                    await shutdown.wait()
            if shutdown.is_set():
                return
            cluster = await self._ask()
            if cluster is not None:
                self._reconcile(cluster)

    async def _ask(self) -> Cluster | None:
        seed = self.seed.tunnel
        if not isinstance(seed, TunnelSession):
            self._seed_relay = None
        else:
            cluster = await ask_relays(seed.ssh)
            if cluster is not None:
                self._seed_relay = cluster.relay
                return cluster
        for member in list(self.members.values()):
            tunnel = member.supervisor.tunnel
            if isinstance(tunnel, TunnelSession):
                cluster = await ask_relays(tunnel.ssh)
                if cluster is not None:
                    return cluster
        return None

    def _reconcile(self, cluster: Cluster) -> None:
        wanted = set(stable_subset(cluster.relays, self._settings.max_relays, self._token.agent_id))
        wanted.discard(self._seed_relay or "")
        for relay in sorted(set(self.members) - wanted):
            member = self.members.pop(relay)
            log.info("relay_left", relay=relay)
            member.shutdown.set()
        for relay in sorted(wanted - set(self.members)):
            try:
                address = HostPort.parse(relay)
            except ValueError:
                log.warning("relay_address_invalid", relay=relay[:100])
                continue
            self._start_member(relay, address)

    def _start_member(self, relay: str, address: HostPort) -> None:
        settings = self._settings.model_copy(update={"relay": [address]})
        supervisor = Supervisor(
            settings, connect_opener(settings, self._token, self._ctx), self._ctx, TunnelStatus()
        )
        shutdown = asyncio.Event()
        task = asyncio.ensure_future(supervisor.run(shutdown))
        self.members[relay] = _Member(supervisor, shutdown, task)
        log.info("relay_joined", relay=relay)
