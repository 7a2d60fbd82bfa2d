"""The relay process: storage, SSH endpoint, tunnel registry and HTTP API,
started and stopped together."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh
import structlog
from aiohttp import web

from server.cluster.changes import ChangeFeed, asyncpg_dsn
from server.cluster.charts import ClusterCharts
from server.cluster.forward import HOP_KEY_LABEL, Forwarder, HopAuth
from server.cluster.identity import (
    AdminTokenSync,
    SqliteLock,
    advertised_address,
    check_master_key,
    cluster_host_key,
)
from server.cluster.presence import Presence, new_relay_id
from server.cluster.reactions import ChangeReactions
from server.cluster.shares import CapShares
from server.cluster.traffic import ClusterTraffic
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
from server.secrets.crypto import SecretBox
from server.secrets.keyring import load_secret_box
from server.settings import ServerSettings
from server.storage.cluster import ClusterStore
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
from sluice.addresses import HostPort
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
    cluster: ClusterStore
    box: SecretBox
    admin_token_created: bool = False
    lock: SqliteLock | None = None
    admin_sync: AdminTokenSync | None = None
    presence: Presence | None = None
    forwarder: Forwarder | None = None
    _relays_answer: tuple[float, bytes] | None = None
    feed: ChangeFeed | None = None
    reactions: ChangeReactions | None = None
    traffic: ClusterTraffic | None = None
    shares: CapShares | None = None
    cluster_charts: ClusterCharts | None = None
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
        url = settings.resolved_database_url()
        lock = SqliteLock.acquire(url)
        try:
            box = load_secret_box(settings)
            admin_token, created = load_or_create_admin_token(
                settings.data_dir,
                settings.admin_token.get_secret_value()
                if settings.admin_token is not None
                else None,
                settings.admin_token_file,
            )
            store = await Store.open(url, timeout=settings.database_timeout)
            try:
                cluster = ClusterStore(store)
                await check_master_key(cluster, store, box)
                host_key = await cluster_host_key(cluster, box, settings.host_key_path)
            except BaseException:
                await store.close()
                raise
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        registry = TunnelRegistry()
        metrics = RelayMetrics(registry)
        relay_id = new_relay_id()
        traffic = (
            ClusterTraffic(
                store,
                registry,
                relay_id,
                min_health_interval=settings.health_min_interval_seconds,
                presence_interval=settings.heartbeat_interval,
                dead_after=settings.relay_dead_after,
            )
            if store.dialect != "sqlite"
            else None
        )
        # In a cluster an agent tunnelled to another relay is online too.
        agent_online = traffic.agents.is_online if traffic is not None else registry.is_online
        remember = masker.add if masker is not None else None
        if masker is not None:
            masker.add(admin_token)
        connections = ConnectionService(
            store,
            box,
            lambda: load_secret_box(settings),
            remember_secrets=remember,
            agent_online=agent_online,
            min_health_interval=settings.health_min_interval_seconds,
        )
        tunnel_http = TunnelHTTP(
            registry,
            connect_timeout=settings.connect_timeout,
            max_streams=settings.max_streams_per_agent,
            streams_per_second=settings.max_new_streams_per_second,
        )
        cloud_http = CloudHTTP(allow_private=settings.allow_private_destinations)
        # In a cluster every relay holds a share of each connection's cap.
        shares = CapShares(relay_id) if store.dialect != "sqlite" else None
        limits = ConcurrencyLimits(metrics, share=shares.share if shares is not None else None)
        if shares is not None:
            shares.on_change(limits.rebalance)
            metrics.cap_shares(lambda: shares.count)
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
            agent_online,
            min_interval=settings.health_min_interval_seconds,
            leads=traffic.health_lease.leads if traffic is not None else None,
        )
        metrics.registry.register(health.collector())
        rate_limits = RateLimits(count=metrics.limited)
        metrics.registry.register(rate_limits.collector())
        relay = cls(
            settings=settings,
            store=store,
            registry=registry,
            tunnel_http=tunnel_http,
            cloud_http=cloud_http,
            connections=connections,
            engine=engine,
            metrics=metrics,
            limits=limits,
            rate_limits=rate_limits,
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
            cluster=cluster,
            box=box,
            lock=lock,
            traffic=traffic,
            shares=shares,
        )
        try:
            relay.admin_sync = AdminTokenSync(cluster, box, relay.admin)
            if not await relay.admin_sync.join():
                relay.admin_token_created = False  # the cluster's token, not a new one
            await relay._start_feed()
            if traffic is not None:
                assert relay.reactions is not None
                await traffic.start(rate_limits, relay.reactions)
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
                cluster_relays=relay.relays_json,
                window=settings.stream_window,
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
            relay.presence = Presence(
                cluster,
                registry,
                relay_id=relay_id,
                advertise_ssh=str(advertised_address(settings.advertise_ssh, relay.ssh_address)),
                cluster_url="",
                heartbeat_interval=settings.heartbeat_interval,
                dead_after=settings.relay_dead_after,
                shared=relay.clustered,
            )
            if shares is not None:
                # Before serving: the first requests already get this relay's share.
                await shares.refresh(relay.presence)
            if serve_http:
                await relay._start_http()
            await relay.presence.start()
            if shares is not None and relay.reactions is not None:
                shares.start(relay.presence, settings.heartbeat_interval)
                relay.reactions.on("relays", lambda _target: shares.poke())
            health.start()
            relay.debug.start_purging()
        except BaseException:
            await relay.close()
            raise
        log.info("ssh_listening", address=relay.ssh_address, fingerprint=fingerprint(host_key))
        if relay.web_runner is not None:
            log.info("http_listening", address=relay.http_address)
        return relay

    async def _start_feed(self) -> None:
        """Act on changes other relays and the CLI make (tokens, connections)."""
        self.reactions = ChangeReactions(
            self.store,
            self.registry,
            self.tunnel_http,
            self.connections,
            self.engine,
            self.tasks,
        )
        self.feed = ChangeFeed(
            self.cluster,
            self.reactions,
            poll_interval=self.settings.change_poll_interval,
            listen_dsn=asyncpg_dsn(self.settings.resolved_database_url()),
        )
        if self.admin_sync is not None:
            sync = self.admin_sync
            self.reactions.on("admin", lambda _target: sync.changed(self.tasks))
        await self.feed.start()

    async def relays_json(self) -> bytes:
        """The relays agents should keep tunnels to (asked over SSH), as JSON.

        Read at most once a second however many agents ask: every agent asks
        every few seconds, and a thousand of them must not mean a thousand reads.
        """
        assert self.presence is not None
        now = asyncio.get_running_loop().time()
        cached = self._relays_answer
        if cached is not None and now - cached[0] < 1.0 and not self.presence.draining:
            return cached[1]
        me = self.presence.advertise_ssh
        relays = [r.advertise_ssh for r in await self.presence.relays() if not r.draining]
        if self.presence.draining:
            relays = [r for r in relays if r != me]
        answer = json.dumps({"relay": me, "relays": relays}).encode()
        self._relays_answer = (now, answer)
        return answer

    @property
    def clustered(self) -> bool:
        """Whether other relays may share the database (PostgreSQL, not SQLite)."""
        return self.store.dialect != "sqlite"

    async def _start_http(self) -> None:
        assert self.presence is not None
        hop: HopAuth | None = None
        if self.clustered:
            hop = HopAuth(self.box.derive(HOP_KEY_LABEL), self.presence.relay_id)
            self.forwarder = Forwarder(
                self.presence, hop, connect_timeout=self.settings.connect_timeout
            )
            self.engine.forwarder = self.forwarder
            self.cluster_charts = ClusterCharts(
                self.presence,
                hop,
                self.forwarder.session,
                timeout=self.settings.cluster_query_timeout,
            )
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
            presence=self.presence,
            publish_admin=self.admin_sync.publish if self.admin_sync is not None else None,
            hop=hop,
            forwarder=self.forwarder,
            feed=self.feed,
            raw_heads=raw_heads_supported(),
            shares=self.shares,
            cluster_charts=self.cluster_charts,
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
        await FrontSite(
            runner, self.front, listen.host, listen.port, reuse_port=s.reuse_port
        ).start()
        if self.clustered:
            # Other relays forward here: a port of this process's own, even
            # when workers share the API port.
            inner = s.cluster_listen or HostPort(listen.host, 0)
            await FrontSite(runner, self.front, inner.host, inner.port).start()
            host, port = runner.addresses[-1][:2]
            advertised = s.advertise_cluster or advertised_address(None, (host, port))
            self.presence.cluster_url = f"http://{advertised}"

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
        """Stop taking API calls and agents, close tunnels, release the store.

        Each step runs whatever became of the ones before it: a step that
        fails (the database already gone when compose or a failover stops
        it first) is logged and the rest still run, so the relay drains,
        hands back what it holds and exits with status 0. A database that
        stalls (no answer, connections left open) costs the steps that need
        it database_timeout in all, so a stop takes at most drain_timeout
        plus database_timeout (and a few seconds for the SSH connections to
        end), whatever the database does.
        """
        if self.closed.is_set():
            return
        self.closed.set()
        database = _Budget(self.settings.database_timeout)
        if self.presence is not None:
            # Draining: agents stop asking for this relay, other relays stop
            # forwarding here, while what is in flight finishes.
            self.presence.draining = True
            await database.step("draining", self.presence.beat())
        await database.step("health", self.health.close())
        if self.traffic is not None:
            await database.step("health_lease", self.traffic.stop_leading())
        if self.web_runner is not None:
            drain = [self.web_runner.cleanup()]
            if self.front is not None:
                drain.append(self.front.shutdown(self.settings.drain_timeout))
            await _step("http", asyncio.gather(*drain))
        if self.traffic is not None:
            await database.step("traffic", self.traffic.close())
        await database.step("debug_log", self.debug.close())
        if self.ssh_context is not None:
            self.ssh_context.stopping.set()
        if self.ssh is not None:
            self.ssh.close()  # no new agents
        for tunnel in list(self.registry):
            tunnel.close()
        if self.ssh_context is not None:
            # The rest: logins under way, agents not registered yet.
            self.ssh_context.close_connections()
        if self.ssh is not None:
            # Only now: since Python 3.12 the listener's wait_closed also
            # waits for every connection it accepted to end (3.11's, and
            # uvloop's, return at once), so waiting before closing them
            # waited for ever.
            await _step("ssh", self.ssh.wait_closed(), timeout=_SSH_CLOSE_SECONDS)
        if self.shares is not None:
            await database.step("cap_shares", self.shares.close())
        if self.presence is not None:
            await database.step("presence", self.presence.close())
        if self.feed is not None:
            await database.step("change_feed", self.feed.close())
        if self.reactions is not None:
            self.reactions.close()  # the checks armed for grace periods' ends
        if self.forwarder is not None:
            await _step("forwarder", self.forwarder.close())
        await _step("tunnel_http", self.tunnel_http.close())
        await _step("cloud_http", self.cloud_http.close())
        await database.step("tasks", self.tasks.close())
        await database.step("store", self.store.close())
        if self.lock is not None:
            self.lock.release()


# Each step that needs the database gets at least this long, the budget
# spent or not: enough to cancel its tasks and close what needs no answer.
_LEAST_STEP_SECONDS = 0.2
# What the SSH connections, all closed by then, take to end (a few loop turns).
_SSH_CLOSE_SECONDS = 5.0


class _Budget:
    """The seconds a stop may still wait on the database, for all its steps
    together: one that stalls is waited for once, not once per step."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    def __repr__(self) -> str:
        return f"<_Budget left={self.left:.3f}s>"

    async def step(self, name: str, step: Awaitable[object]) -> None:
        began = time.monotonic()
        try:
            await _step(name, step, timeout=max(self.left, _LEAST_STEP_SECONDS))
        finally:
            self.left -= time.monotonic() - began


async def _step(name: str, step: Awaitable[object], timeout: float | None = None) -> None:
    """One step of shutting down; its failure is logged, not raised.

    After *timeout* seconds the stop goes on without it: the step is
    cancelled and not waited for. Waiting for it to end could be for ever:
    a component's close() cancels its loop and awaits it, and a loop
    cancelled while SQLAlchemy closes a connection on a stalled database
    gets the close's TimeoutError instead of the CancelledError
    (AsyncConnection.__aexit__ holds the cancellation until the close is
    done, then raises the close's error), takes it for a failed round and
    goes on. The CLI cancels what is left until it ends.
    """
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        log.warning("relay_close_step_failed", step=name, error="timeout")
        return
    exc = _retrieve(task)
    if exc is not None:
        log.warning("relay_close_step_failed", step=name, error=type(exc).__name__)


def _retrieve(task: asyncio.Future[object]) -> BaseException | None:
    """How *task* ended: its exception, None for a result or a cancellation."""
    return None if task.cancelled() else task.exception()
