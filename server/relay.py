"""The relay process: storage, SSH endpoint, tunnel registry and HTTP API,
started and stopped together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncssh
import structlog
from aiohttp import web

from server.connections.health import HealthMonitor
from server.connections.service import ConnectionService
from server.proxy.cloud_http import CloudHTTP
from server.proxy.debug_log import DebugLog
from server.proxy.engine import Engine
from server.proxy.front import Front, FrontSite
from server.proxy.limits import ConcurrencyLimits
from server.proxy.raw_head import raw_heads_supported
from server.proxy.retry import RateLimits
from server.proxy.traffic_stats import TrafficStats
from server.secrets.admin_token import AdminTokens, load_or_create_admin_token
from server.secrets.hostkey import load_or_create_host_key
from server.secrets.keyring import load_secret_box
from server.settings import ServerSettings
from server.storage.private_files import private_dir
from server.storage.store import Store
from server.tunnel.auth_limit import FailedLoginLimiter
from server.tunnel.http_client import TunnelHTTP
from server.tunnel.preauth_gate import PreAuthGate
from server.tunnel.registry import TunnelRegistry
from server.tunnel.ssh import SSHContext, start_ssh_server
from server.web.api import build_app
from server.web.metrics import RelayMetrics
from server.web.services import Services
from sluice.logs import SecretMasker
from sluice.sshconfig import fingerprint
from sluice.tasks import TaskSet

log = structlog.get_logger("sluice.relay")


# Request bodies are read from callers in pieces of up to this size.
READ_BUFSIZE = 256 * 1024


@dataclass
class Relay:
    settings: ServerSettings
    store: Store
    registry: TunnelRegistry
    tunnel_http: TunnelHTTP
    cloud_http: CloudHTTP
    connections: ConnectionService
    engine: Engine
    metrics: RelayMetrics
    limits: ConcurrencyLimits
    rate_limits: RateLimits
    health: HealthMonitor
    debug: DebugLog
    host_key: asyncssh.SSHKey
    admin: AdminTokens
    admin_token_created: bool = False
    stats: TrafficStats = field(default_factory=TrafficStats)
    ssh: asyncssh.SSHAcceptor | None = None
    ssh_context: SSHContext | None = None
    web_runner: web.AppRunner | None = None
    front: Front | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: TaskSet = field(default_factory=TaskSet)

    def __repr__(self) -> str:
        return f"<Relay ssh={self.ssh_address} {self.registry!r}>"

    @classmethod
    async def start(
        cls,
        settings: ServerSettings,
        *,
        serve_http: bool = True,
        before_listening: Callable[[], None] | None = None,
        masker: SecretMasker | None = None,
    ) -> Relay:
        """Open the store (migrating it), load keys, listen for agents and API calls.

        *before_listening* runs once everything is set up and nothing is
        accepted yet (the CLI freezes startup objects out of the GC there).
        *masker* (the log's) learns the admin token and every connection
        secret the relay decrypts or refreshes.
        """
        private_dir(settings.data_dir)
        host_key = load_or_create_host_key(settings.host_key_path)
        box = load_secret_box(settings)
        admin_token, created = load_or_create_admin_token(
            settings.data_dir,
            settings.admin_token.get_secret_value() if settings.admin_token is not None else None,
            settings.admin_token_file,
        )
        store = await Store.open(settings.resolved_database_url())
        registry = TunnelRegistry()
        metrics = RelayMetrics(registry)
        remember = masker.add if masker is not None else None
        if masker is not None:
            masker.add(admin_token)
        connections = ConnectionService(
            store,
            box,
            lambda: load_secret_box(settings),
            remember_secrets=remember,
            agent_online=registry.is_online,
            min_health_interval=settings.health_min_interval_seconds,
        )
        tunnel_http = TunnelHTTP(
            registry,
            connect_timeout=settings.connect_timeout,
            max_streams=settings.max_streams_per_agent,
            streams_per_second=settings.max_new_streams_per_second,
        )
        cloud_http = CloudHTTP(allow_private=settings.allow_private_destinations)
        engine = Engine(
            registry,
            tunnel_http,
            cloud_http,
            connections.save_secrets,
            on_refresh=lambda outcome: metrics.refreshes.labels(outcome).inc(),
            remember_secrets=remember,
        )
        health = HealthMonitor(
            store,
            connections,
            engine,
            registry.is_online,
            min_interval=settings.health_min_interval_seconds,
        )
        metrics.registry.register(health.collector())
        relay = cls(
            settings=settings,
            store=store,
            registry=registry,
            tunnel_http=tunnel_http,
            cloud_http=cloud_http,
            connections=connections,
            engine=engine,
            metrics=metrics,
            limits=ConcurrencyLimits(metrics),
            rate_limits=RateLimits(count=metrics.limited),
            health=health,
            debug=DebugLog(
                store,
                keep=settings.debug_log_entries,
                retention=settings.debug_log_retention_seconds,
            ),
            host_key=host_key,
            admin_token_created=created,
            admin=AdminTokens(
                admin_token,
                data_dir=settings.data_dir,
                token_file=settings.admin_token_file,
                configured=settings.admin_token is not None,
            ),
        )
        try:
            ctx = SSHContext(
                store=store,
                registry=registry,
                limiter=FailedLoginLimiter(
                    settings.auth_failures_per_address,
                    settings.auth_ban_seconds,
                    max_network_failures=settings.auth_failures_per_network,
                    exempt_networks=settings.auth_network_exempt,
                ),
                tasks=relay.tasks,
                preauth=PreAuthGate(settings.max_preauth_ssh, settings.max_preauth_ssh_per_address),
                max_inflight=settings.max_inflight_per_agent,
            )
            relay.ssh_context = ctx
            if before_listening is not None:
                before_listening()
            relay.ssh = await start_ssh_server(
                ctx,
                settings.ssh_listen.host,
                settings.ssh_listen.port,
                host_key,
                keepalive_interval=settings.keepalive_interval,
                keepalive_count=settings.keepalive_count,
                login_timeout=settings.login_timeout,
                rekey_bytes=settings.ssh_rekey_bytes,
            )
            if serve_http:
                await relay._start_http()
            health.start()
            relay.debug.start_purging()
        except BaseException:
            await relay.close()
            raise
        log.info("ssh_listening", address=relay.ssh_address, fingerprint=fingerprint(host_key))
        if relay.web_runner is not None:
            log.info("http_listening", address=relay.http_address)
        return relay

    async def _start_http(self) -> None:
        services = Services(
            store=self.store,
            registry=self.registry,
            tunnel_http=self.tunnel_http,
            connections=self.connections,
            engine=self.engine,
            metrics=self.metrics,
            admin=self.admin,
            ssh_listening=lambda: not self.closed.is_set(),
            limits=self.limits,
            rate_limits=self.rate_limits,
            health=self.health,
            debug=self.debug,
            stats=self.stats,
            max_body_bytes=self.settings.max_body_bytes,
            ssh_fingerprint=self.fingerprint,
            stalled_reader_timeout=self.settings.http_idle_timeout,
            raw_heads=raw_heads_supported(),
        )
        # On stop, in-flight requests get drain_timeout to finish (aiohttp waits
        # for running handlers) before tunnels are closed.
        s = self.settings
        runner = web.AppRunner(
            build_app(services),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=s.drain_timeout,
            max_line_size=s.max_header_bytes,
            max_field_size=s.max_header_bytes,
            max_headers=s.max_headers,
            keepalive_timeout=s.http_idle_timeout,
            read_bufsize=READ_BUFSIZE,
        )
        await runner.setup()
        self.web_runner = runner
        self.front = Front(
            services,
            max_header_bytes=s.max_header_bytes,
            max_headers=s.max_headers,
            max_head_bytes=s.max_head_bytes,
            idle_timeout=s.http_idle_timeout,
        )
        listen = self.settings.http_listen
        await FrontSite(runner, self.front, listen.host, listen.port).start()

    @property
    def ssh_address(self) -> tuple[str, int]:
        assert self.ssh is not None
        sockname = self.ssh.sockets[0].getsockname()
        return sockname[0], sockname[1]

    @property
    def http_address(self) -> tuple[str, int]:
        assert self.web_runner is not None
        host, port = self.web_runner.addresses[0][:2]
        return host, port

    @property
    def http_base(self) -> str:
        host, port = self.http_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def admin_token(self) -> str:
        return self.admin.current

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.host_key)

    async def close(self) -> None:
        """Stop taking API calls and agents, close tunnels, release the store."""
        if self.closed.is_set():
            return
        self.closed.set()
        await self.health.close()
        await self.debug.close()
        if self.web_runner is not None:
            drain = [self.web_runner.cleanup()]
            if self.front is not None:
                drain.append(self.front.shutdown(self.settings.drain_timeout))
            await asyncio.gather(*drain)
        if self.ssh is not None:
            self.ssh.close()
            await self.ssh.wait_closed()
        for tunnel in list(self.registry):
            tunnel.close()
        await self.tunnel_http.close()
        await self.cloud_http.close()
        await self.tasks.close()
        await self.store.close()
