"""The relay's SSH endpoint: agents log in with their token and register a tunnel."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh
import structlog

from server.storage.store import AgentRecord, Store
from server.tunnel.auth_limit import FailedLoginLimiter
from server.tunnel.link_window import answer_window
from server.tunnel.preauth_gate import PreAuthGate
from server.tunnel.registry import Tunnel, TunnelRegistry
from sluice import queue_probe, send_coalescing, send_scheduler, sshconfig
from sluice.addresses import LISTEN_BACKLOG
from sluice.ssh_reads import ReadBuffer, read_whole_packets
from sluice.ssh_tuning import tune_asyncssh
from sluice.tasks import TaskSet
from sluice.tokens import AgentToken, InvalidTokenFormat
from sluice.window_tuning import short_link

log = structlog.get_logger("sluice.relay.ssh")


@dataclass(frozen=True)
class SSHContext:
    store: Store
    registry: TunnelRegistry
    limiter: FailedLoginLimiter
    tasks: TaskSet
    preauth: PreAuthGate
    # Each stream's starting window of answers; None: by the link
    # (link_window.answer_window).
    window: int | None = None
    max_pktsize: int = sshconfig.CHANNEL_MAX_PKTSIZE
    max_inflight: int = sshconfig.MAX_INFLIGHT
    # The cluster's relays, as agents should dial them (JSON bytes), for
    # agents that ask (sshconfig.CLUSTER_RELAYS_HOST); None: not offered.
    cluster_relays: Callable[[], Awaitable[bytes]] | None = None
    # What every agent's SSH connection reads into (sluice.ssh_reads).
    reads: ReadBuffer = field(default_factory=ReadBuffer)
    # The relay is stopping: logins still on their way (asyncssh keeps
    # connections that began before the listener closed) are refused
    # without asking the store, which is about to close.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Every SSH connection the listener accepted and that has not ended
    # (agents online, logins under way): the relay's stop closes them all.
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)

    def close_connections(self) -> None:
        """Close every accepted SSH connection (tunnels' included)."""
        for ssh in list(self.connections):  # each close may end one at once
            ssh.close()


class _OneAnswer(asyncssh.SSHTCPSession[bytes]):
    """Writes one answer on a channel the agent opened, then closes it."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        chan.write(self._answer)
        chan.write_eof()
        chan.close()


class TunnelListener(asyncssh.SSHListener):
    """What the relay returns for an agent's listen request: it binds nothing.

    The relay opens forwarded channels itself on the (host, port) the agent
    registered; closing the listener (the agent draining) stops new streams.
    """

    def __init__(self, tunnel: Tunnel, registry: TunnelRegistry) -> None:
        super().__init__()
        self._relay_tunnel = tunnel  # not '_tunnel': SSHListener uses that name
        self._registry = registry

    def get_port(self) -> int:
        return self._relay_tunnel.listen[1]

    def close(self) -> None:
        tunnel = self._relay_tunnel
        if not tunnel.draining:
            log.info("tunnel_draining", agent_id=tunnel.agent_id, tunnel=tunnel.id)
            self._registry.mark_draining(tunnel)

    async def wait_closed(self) -> None:
        return None


class RelaySSHServer(asyncssh.SSHServer):
    """One instance per incoming SSH connection."""

    def __init__(self, ctx: SSHContext) -> None:
        self._ctx = ctx
        self._ssh: asyncssh.SSHServerConnection | None = None
        self._peer = "?"
        self._agent: AgentRecord | None = None
        self._tunnel: Tunnel | None = None
        self._registered = False
        self._instance = ""
        self._expiry: asyncio.TimerHandle | None = None
        self._waiting = False  # holds a place in the pre-auth gate
        self._credential = ""
        # The agent's login round trip (link_window): when its first
        # authentication request came, and the time to its password.
        self._auth_began: float | None = None
        self._login_rtt: float | None = None

    def __repr__(self) -> str:
        agent = self._agent.id if self._agent else None
        return f"<RelaySSHServer peer={self._peer} agent={agent}>"

    def connection_made(self, ssh: asyncssh.SSHServerConnection) -> None:
        self._ssh = ssh
        self._ctx.connections.add(ssh)
        read_whole_packets(ssh, self._ctx.reads)
        send_scheduler.start(ssh)  # uploads' and requests' packets interleaved, short queues
        send_coalescing.start(ssh)  # a loop turn's requests in one write
        queue_probe.start(ssh, "relay")  # bench only: off unless SLUICE_QUEUE_PROBE is set
        peer = ssh.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._address = peer[0] if peer else "?"
        if self._ctx.stopping.is_set():
            # Accepted just before the listener closed, made just after the
            # stop closed the connections it knew of.
            ssh.close()
            return
        if self._ctx.limiter.is_banned(self._address):
            log.warning("ssh_refused_banned_address", peer=self._peer)
            ssh.close()
            return
        refused = self._ctx.preauth.admit(self._address)
        if refused is not None:
            # Debug only: a flood would otherwise flood the log as well.
            log.debug("ssh_refused_preauth_full", peer=self._peer, reason=refused)
            ssh.close()
            return
        self._waiting = True

    def _leave_gate(self) -> None:
        if self._waiting:
            self._waiting = False
            self._ctx.preauth.release(self._address)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ssh is not None:
            self._ctx.connections.discard(self._ssh)
        self._leave_gate()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._tunnel is not None and self._registered:
            self._ctx.registry.remove(self._tunnel)
            self._ctx.tasks.spawn(self._ctx.store.touch_agent(self._tunnel.agent_id))
            log.info(
                "tunnel_down",
                agent_id=self._tunnel.agent_id,
                tunnel=self._tunnel.id,
                peer=self._peer,
                reason=str(exc) if exc else "closed",
            )
            self._tunnel = None

    # -- authentication: the agent's token as the password, nothing else ---
    def begin_auth(self, username: str) -> bool:
        # Agents log in as 'sluice-agent/<instance>': the instance id names one
        # agent process across its reconnects (see TunnelRegistry.add).
        _, _, instance = username.partition("/")
        self._instance = instance[:64] if instance.isalnum() else ""
        if self._auth_began is None:
            self._auth_began = time.monotonic()
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def gss_host_based_auth_supported(self) -> bool:
        return False

    def gss_kex_auth_supported(self) -> bool:
        return False

    def gss_mic_auth_supported(self) -> bool:
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        if self._login_rtt is None and self._auth_began is not None:
            self._login_rtt = time.monotonic() - self._auth_began
        limiter = self._ctx.limiter
        if limiter.is_banned(self._address):
            log.warning("ssh_auth_refused_banned", peer=self._peer)
            if self._ssh is not None:
                self._ssh.close()
            return False
        try:
            token = AgentToken.parse(password)
        except InvalidTokenFormat:
            agent = None
        else:
            if self._ctx.stopping.is_set():
                return False
            # The lookup is one of the relay's tasks, which its stop waits
            # for before the store closes: a query that outlived the store
            # would open a connection of a disposed engine, left to the
            # garbage collector after the event loop ended. asyncssh cancels
            # a login whose connection ends: the lookup goes with it, except
            # when the relay's stop closed the connection (it then ends
            # before the store closes).
            lookup = self._ctx.tasks.spawn(
                self._ctx.store.authenticate_agent(token), name="agent_login"
            )
            try:
                agent = await asyncio.shield(lookup)
            except asyncio.CancelledError:
                if not self._ctx.stopping.is_set():
                    lookup.cancel()
                raise
        if agent is None:
            banned = limiter.record_failure(self._address)
            log.warning("ssh_auth_failed", peer=self._peer, banned=banned)
            return False
        limiter.record_success(self._address)
        self._leave_gate()
        self._agent = agent
        self._credential = token.secret_hash()
        log.info("ssh_auth_ok", peer=self._peer, agent_id=agent.id)
        if agent.token_expires_at is not None:
            # The previous token, in a rotation's grace: the session ends with it.
            delay = (agent.token_expires_at - dt.datetime.now(dt.UTC)).total_seconds()
            self._expiry = asyncio.get_running_loop().call_later(
                max(delay, 0.0), self._token_expired
            )
        return True

    def _token_expired(self) -> None:
        agent = self._agent.id if self._agent else None
        log.info("tunnel_token_expired", agent_id=agent, peer=self._peer)
        if self._ssh is not None:
            self._ssh.close()

    # -- the one thing an agent may ask for: its tunnel listener -----------
    def server_requested(self, listen_host: str, listen_port: int) -> bool | TunnelListener:
        if self._agent is None or self._ssh is None or self._tunnel is not None:
            return False
        if listen_host != sshconfig.TUNNEL_LISTEN_HOST:
            log.warning("listen_request_refused", agent_id=self._agent.id, host=listen_host[:64])
            return False
        version = str(self._ssh.get_extra_info("client_version") or "")
        tunnel = Tunnel(
            agent_id=self._agent.id,
            ssh=self._ssh,
            listen=(listen_host, listen_port or sshconfig.TUNNEL_LISTEN_PORT),
            peer=self._peer,
            agent_version=version.removeprefix("SSH-2.0-")[:64],
            connected_at=dt.datetime.now(dt.UTC),
            window=answer_window(
                self._ctx.window, self._login_rtt, self._ssh.get_extra_info("socket")
            ),
            max_pktsize=self._ctx.max_pktsize,
            max_inflight=self._ctx.max_inflight,
            login_rtt=self._login_rtt or 0.0,
            short_link=short_link(
                self._login_rtt, send_scheduler.kernel_rtt(self._ssh.get_extra_info("socket"))
            ),
            instance=self._instance,
            credential=self._credential,
        )
        self._tunnel = tunnel
        return TunnelListener(tunnel, self._ctx.registry)

    def _tunnel_ready(self) -> None:
        """The agent has its listener in place: streams may flow now."""
        tunnel = self._tunnel
        if tunnel is None or self._registered:
            return
        self._registered = True
        for stale in self._ctx.registry.add(tunnel):
            log.info(
                "tunnel_replaced",
                agent_id=stale.agent_id,
                tunnel=stale.id,
                peer=stale.peer,
                by=tunnel.id,
            )
            stale.close()
        self._ctx.tasks.spawn(self._ctx.store.touch_agent(tunnel.agent_id))
        log.info(
            "tunnel_up",
            agent_id=tunnel.agent_id,
            tunnel=tunnel.id,
            peer=self._peer,
            agent_version=tunnel.agent_version,
            window=tunnel.window,
            login_rtt_ms=None if self._login_rtt is None else round(self._login_rtt * 1000, 2),
        )

    # Everything else an SSH client might ask for is refused.
    def session_requested(self) -> bool:
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool | Awaitable[_OneAnswer]:
        # Never a connection; the reserved name is the agent's "ready" signal.
        if dest_host == sshconfig.TUNNEL_READY_HOST:
            self._tunnel_ready()
        elif (
            dest_host == sshconfig.CLUSTER_RELAYS_HOST
            and self._agent is not None
            and self._ctx.cluster_relays is not None
        ):
            return self._relays_answer(self._ctx.cluster_relays)
        return False

    async def _relays_answer(self, relays: Callable[[], Awaitable[bytes]]) -> _OneAnswer:
        return _OneAnswer(await relays())

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


async def start_ssh_server(
    ctx: SSHContext,
    host: str,
    port: int,
    host_key: asyncssh.SSHKey,
    *,
    keepalive_interval: float,
    keepalive_count: int,
    login_timeout: float,
    rekey_bytes: int = sshconfig.REKEY_BYTES,
) -> asyncssh.SSHAcceptor:
    """Listen for agents. Returns the acceptor (close() it to stop)."""
    tune_asyncssh()
    return await asyncssh.create_server(
        lambda: RelaySSHServer(ctx),
        host,
        port,
        server_host_keys=[host_key],
        encryption_algs=list(sshconfig.ENCRYPTION_ALGS),
        mac_algs=list(sshconfig.MAC_ALGS),
        compression_algs=list(sshconfig.COMPRESSION_ALGS),
        keepalive_interval=keepalive_interval,
        keepalive_count_max=keepalive_count,
        login_timeout=login_timeout,
        rekey_bytes=rekey_bytes,
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
        server_version="sluice-relay",
        reuse_address=True,
        backlog=LISTEN_BACKLOG,
    )
