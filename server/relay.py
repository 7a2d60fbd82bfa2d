"""The relay process: storage, the SSH endpoint and the tunnel registry, started and
stopped together."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncssh
import structlog

from server.auth_limit import FailedLoginLimiter
from server.hostkey import load_or_create_host_key
from server.settings import ServerSettings
from server.ssh import SSHContext, start_ssh_server
from server.store import Store
from server.tunnel_http import TunnelHTTP
from server.tunnels import TunnelRegistry
from sluice.sshconfig import fingerprint

log = structlog.get_logger("sluice.relay")


@dataclass
class Relay:
    settings: ServerSettings
    store: Store
    registry: TunnelRegistry
    tunnel_http: TunnelHTTP
    host_key: asyncssh.SSHKey
    ssh: asyncssh.SSHAcceptor | None = None
    ssh_context: SSHContext | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:
        return f"<Relay ssh={self.ssh_address} {self.registry!r}>"

    @classmethod
    async def start(cls, settings: ServerSettings) -> Relay:
        """Open the store (migrating it), load the host key, listen for agents."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        host_key = load_or_create_host_key(settings.host_key_path)
        store = await Store.open(settings.resolved_database_url())
        registry = TunnelRegistry()
        relay = cls(
            settings=settings,
            store=store,
            registry=registry,
            tunnel_http=TunnelHTTP(registry, connect_timeout=settings.connect_timeout),
            host_key=host_key,
        )
        try:
            ctx = SSHContext(
                store=store,
                registry=registry,
                limiter=FailedLoginLimiter(
                    settings.auth_failures_per_address, settings.auth_ban_seconds
                ),
            )
            relay.ssh_context = ctx
            relay.ssh = await start_ssh_server(
                ctx,
                settings.ssh_listen.host,
                settings.ssh_listen.port,
                host_key,
                keepalive_interval=settings.keepalive_interval,
                keepalive_count=settings.keepalive_count,
                login_timeout=settings.login_timeout,
            )
        except BaseException:
            await store.close()
            raise
        log.info(
            "ssh_listening",
            address=relay.ssh_address,
            fingerprint=fingerprint(host_key),
        )
        return relay

    @property
    def ssh_address(self) -> tuple[str, int]:
        assert self.ssh is not None
        sockname = self.ssh.sockets[0].getsockname()
        return sockname[0], sockname[1]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.host_key)

    async def close(self) -> None:
        """Stop accepting agents, close their tunnels, release the store."""
        if self.closed.is_set():
            return
        self.closed.set()
        if self.ssh is not None:
            self.ssh.close()
            await self.ssh.wait_closed()
        for tunnel in list(self.registry):
            tunnel.close()
        await self.tunnel_http.close()
        await self.store.close()
