"""One SSH connection to the relay, with its reverse listener registered."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import asyncssh

from agent.errors import (
    AuthRejected,
    HostKeyMismatch,
    ListenerRefused,
    RelayUnreachable,
    TunnelError,
)
from agent.outbound_proxy import connect_via_proxy, proxy_for
from agent.proxy import ChannelProxy, ProxyContext
from agent.settings import AgentSettings
from agent.ssh_identity import EXPLICIT_CLIENT_OPTIONS, provide_account_defaults
from sluice import __version__, queue_probe, send_coalescing, send_scheduler, sshconfig
from sluice.addresses import HostPort
from sluice.ssh_reads import read_whole_packets
from sluice.ssh_tuning import tune_asyncssh
from sluice.tokens import AgentToken
from sluice.window_tuning import short_link


class _PinnedHostKeyClient(asyncssh.SSHClient):
    """Accepts exactly the relay host key whose fingerprint the settings pin."""

    def __init__(self, expected: str | None) -> None:
        self.expected = expected
        self.presented: str | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.presented = sshconfig.fingerprint(key)
        return self.expected is None or self.presented == self.expected


@dataclass
class TunnelSession:
    """A live tunnel: the SSH connection and the listener the relay accepted."""

    relay: HostPort
    ssh: asyncssh.SSHClientConnection
    listener: asyncssh.SSHListener
    # Its setup showed the link short (sluice.window_tuning.short_link).
    short_link: bool = False

    def __repr__(self) -> str:
        return f"<TunnelSession relay={self.relay}>"

    async def wait_closed(self) -> None:
        await self.ssh.wait_closed()

    def stop_accepting(self) -> None:
        """Cancel the listener: the relay marks this replica draining."""
        self.listener.close()

    def close(self) -> None:
        self.ssh.close()


async def open_tunnel(
    settings: AgentSettings,
    token: AgentToken,
    relay: HostPort,
    ctx: ProxyContext | None,
    instance: str = "",
) -> TunnelSession:
    """Connect, authenticate, pin the host key and register the listener.

    With *ctx* None (the ``check`` command) no channel is ever accepted.
    Raises a TunnelError subclass that says what went wrong and what to fix.
    """
    tune_asyncssh()
    provide_account_defaults()
    expected = None if settings.insecure_skip_host_key_check else settings.relay_fingerprint
    client = _PinnedHostKeyClient(expected)
    # Outside the try below: a proxy's own error message says more than
    # "cannot reach relay".
    proxy = proxy_for(relay.host, relay.port, settings.proxy_setting(), os.environ)
    sock = None
    if proxy is not None:
        sock = await connect_via_proxy(
            proxy, relay.host, relay.port, timeout=settings.connect_timeout
        )
    try:
        ssh, _ = await asyncssh.create_connection(
            lambda: client,
            relay.host,
            relay.port,
            username=f"{sshconfig.AGENT_USERNAME}/{instance}"
            if instance
            else sshconfig.AGENT_USERNAME,
            password=str(token),
            known_hosts=None if expected is None else ([], [], []),
            server_host_key_algs=["ssh-ed25519"],
            preferred_auth=["password"],
            encryption_algs=list(sshconfig.ENCRYPTION_ALGS),
            mac_algs=list(sshconfig.MAC_ALGS),
            compression_algs=list(sshconfig.COMPRESSION_ALGS),
            keepalive_interval=settings.keepalive_interval,
            keepalive_count_max=settings.keepalive_count,
            login_timeout=settings.login_timeout,
            connect_timeout=settings.connect_timeout,
            rekey_bytes=settings.rekey_bytes,
            client_version=f"sluice-agent/{__version__}",
            sock=sock,
            **EXPLICIT_CLIENT_OPTIONS,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyMismatch(
            f"relay {relay} presented host key {client.presented}, but relay_fingerprint is "
            f"{expected}; if the relay's key really changed, set SLUICE_AGENT_RELAY_FINGERPRINT "
            "to the output of 'sluice-server fingerprint' on the relay"
        ) from None
    except asyncssh.PermissionDenied:
        raise AuthRejected(
            f"relay {relay} refused the access token: the agent may have been deleted or its "
            "token rotated; create or rotate it on the relay and update the agent's token"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise RelayUnreachable(f"cannot reach relay {relay}: {_describe(exc)}") from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise

    if ctx is not None:
        read_whole_packets(ssh, ctx.ssh_reads)
    # Whether this connection's link is short, known once the relay has
    # answered the ready request below: its channels' windows stay as they
    # start (streams it opens before then are tuned).
    link = _Link()
    try:
        # A relay that stops answering after the login must not leave the
        # agent "connecting" forever: the setup shares the login's deadline.
        async with asyncio.timeout(settings.login_timeout):
            if ctx is None:
                listener: asyncssh.SSHListener = asyncssh.SSHListener()
            else:
                proxy_ctx = ctx
                listener = await ssh.create_server(
                    lambda _host, _port: ChannelProxy(proxy_ctx, link.short),
                    sshconfig.TUNNEL_LISTEN_HOST,
                    sshconfig.TUNNEL_LISTEN_PORT,
                    window=sshconfig.AGENT_RECEIVE_WINDOW,
                    max_pktsize=sshconfig.CHANNEL_MAX_PKTSIZE,
                )
                began = time.monotonic()
                await _signal_ready(ssh)
                # One round trip (the relay refuses at once), plus both ends'
                # work: before any upload's round is timed, whether the link
                # looks long (WindowBudget.setup_rtt). The shortest of the
                # agent's tunnels, as its budget's round trip is.
                took = time.monotonic() - began
                budget = proxy_ctx.window_budget
                budget.setup_rtt = min(budget.setup_rtt or took, took)
                link.short = short_link(
                    took, send_scheduler.kernel_rtt(ssh.get_extra_info("socket"))
                )
                send_scheduler.start(ssh)  # downloads' and answers' packets interleaved
                send_coalescing.start(ssh)  # a loop turn's answers in one write
                queue_probe.start(ssh, "agent")
    except TimeoutError:
        ssh.close()
        raise RelayUnreachable(
            f"relay {relay} accepted the login but did not set up the tunnel within "
            f"{settings.login_timeout:g} s (login_timeout)"
        ) from None
    except asyncssh.ChannelListenError as exc:
        ssh.close()
        raise ListenerRefused(f"relay {relay} refused the tunnel listener: {exc}") from None
    except (OSError, asyncssh.Error) as exc:
        ssh.close()
        raise RelayUnreachable(f"relay {relay} dropped the connection: {_describe(exc)}") from None
    return TunnelSession(relay=relay, ssh=ssh, listener=listener, short_link=link.short)


class _Link:
    """What one relay connection's setup showed of its link."""

    __slots__ = ("short",)

    def __init__(self) -> None:
        self.short = False  # sluice.window_tuning.short_link


async def _signal_ready(ssh: asyncssh.SSHClientConnection) -> None:
    """Tell the relay our listener is registered (see TUNNEL_READY_HOST)."""
    try:
        chan, _ = await ssh.create_connection(
            asyncssh.SSHTCPSession, sshconfig.TUNNEL_READY_HOST, 0
        )
    except asyncssh.ChannelOpenError:
        return  # the expected answer: the relay refuses, having noted it
    chan.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def check_relay(settings: AgentSettings, token: AgentToken, relay: HostPort) -> str:
    """Reach the relay, verify its key and our token; return the key fingerprint."""
    session = await open_tunnel(settings, token, relay, None)
    presented = session.ssh.get_server_host_key()
    session.close()
    async with asyncio.timeout(settings.connect_timeout):
        await session.wait_closed()
    return sshconfig.fingerprint(presented) if presented else "?"


__all__ = ["TunnelError", "TunnelSession", "check_relay", "open_tunnel"]
