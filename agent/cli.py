"""``sluice-agent``: run the tunnel, check the settings, show the version."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import socket
import sys
from pathlib import Path

import structlog

from agent.allowlist import Allowlist
from agent.errors import TunnelError
from agent.health import HealthListenError, HealthServer
from agent.outbound_proxy import proxy_for
from agent.proxy import ProxyContext
from agent.relay_set import RelaySet
from agent.settings import DEFAULT_CONFIG_FILE, DEFAULT_HEALTH_LISTEN, AgentSettings
from agent.state import TunnelState, TunnelStatus
from agent.stats import ProxyStats
from agent.supervisor import Supervisor, connect_opener
from agent.tunnel import check_relay
from sluice import __version__, systemd
from sluice.config import SettingsError, load_settings
from sluice.logs import SecretMasker, configure_logging
from sluice.ratelimit import TokenBucket
from sluice.runtime import install_uvloop, keep_buffers_on_heap, settle_gc
from sluice.tokens import AgentToken
from sluice.window_tuning import WindowBudget

log = structlog.get_logger("sluice.agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice-agent",
        description="Dial out to a Sluice relay and let it reach allowed internal hosts.",
    )
    parser.add_argument("--version", action="version", version=f"sluice-agent {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML settings file (default: {DEFAULT_CONFIG_FILE} when it exists)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="keep the tunnel open until stopped")
    sub.add_parser("check", help="validate settings, reach the relay, test each allow rule")
    status = sub.add_parser("status", help="ask the running agent how its tunnel is doing")
    status.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        default=None,
        help="the agent's health endpoint (default: health_listen from the settings)",
    )
    return parser


def _load(config: Path | None) -> tuple[AgentSettings, AgentToken]:
    if config is None and DEFAULT_CONFIG_FILE.is_file():
        config = DEFAULT_CONFIG_FILE
    settings = load_settings(AgentSettings, config)
    try:
        token = settings.load_token()
    except ValueError as exc:
        raise SettingsError([str(exc)]) from None
    return settings, token


def _health_listen(config: Path | None) -> str:
    """health_listen from the settings, or the default when they do not load."""
    if config is None and DEFAULT_CONFIG_FILE.is_file():
        config = DEFAULT_CONFIG_FILE
    try:
        settings = load_settings(AgentSettings, config)
    except SettingsError:
        print(
            f"sluice-agent status: settings did not load; trying {DEFAULT_HEALTH_LISTEN} "
            "(pass --health-listen HOST:PORT to choose)",
            file=sys.stderr,
        )
        return str(DEFAULT_HEALTH_LISTEN)
    return str(settings.health_listen or "off")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        # Needs neither the token nor a relay: only where the agent listens.
        # Imported here: its HTTP client (aiohttp) has no place in the running agent.
        from agent.status_cli import status_main

        return status_main(args.health_listen or _health_listen(args.config))
    try:
        settings, token = _load(args.config)
    except SettingsError as exc:
        print(f"sluice-agent: {exc}", file=sys.stderr)
        return 2
    masker = SecretMasker()
    masker.add(str(token), token.secret)
    for relay in settings.relay:
        try:
            proxy = proxy_for(relay.host, relay.port, settings.proxy_setting(), os.environ)
        except ValueError as exc:
            print(f"sluice-agent: invalid settings:\n  - {exc}", file=sys.stderr)
            return 2
        if proxy is not None and proxy.password:
            masker.add(proxy.password)
    configure_logging(settings.log_format, settings.log_level, masker=masker)
    install_uvloop()
    keep_buffers_on_heap()
    if settings.insecure_skip_host_key_check:
        log.warning(
            "host_key_check_off",
            detail="insecure_skip_host_key_check is set: any relay host key is accepted, so "
            "anyone on the path can pose as the relay; set relay_fingerprint instead",
        )
    if args.command == "check":
        return asyncio.run(_check(settings, token))
    return asyncio.run(_run(settings, token))


async def _run(settings: AgentSettings, token: AgentToken) -> int:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    ctx = ProxyContext(
        allowlist=settings.allowlist(),
        connect_timeout=settings.connect_timeout,
        stats=ProxyStats(),
        max_streams=settings.max_streams,
        new_streams=TokenBucket(settings.max_new_streams_per_second),
        idle_timeout=settings.stream_idle_timeout,
        window_budget=WindowBudget(settings.max_inflight),
    )
    status = TunnelStatus()
    status.subscribe(lambda state: _tell_systemd(state, status))
    runner: Supervisor | RelaySet
    if settings.max_relays > 1:
        runner = RelaySet(settings, token, ctx, status)
    else:
        runner = Supervisor(settings, connect_opener(settings, token, ctx), ctx, status)
    # The loop answering this task is what the watchdog checks; a tunnel that
    # is down is not a hang (the supervisor reconnects by itself).
    settle_gc()  # before anything is accepted: a connection frozen now would never be freed
    health: HealthServer | None = None
    if settings.health_listen is not None:
        health = HealthServer(
            status,
            ctx.stats,
            settings.health_listen.host,
            settings.health_listen.port,
            __version__,
            secrets=(str(token), token.secret),
        )
        try:
            await health.start()
        except HealthListenError as exc:
            log.error("health_listen_failed", error=str(exc))
            return 2
    watchdog = asyncio.ensure_future(systemd.watchdog_loop(shutdown, lambda: True))
    log.info(
        "agent_starting",
        version=__version__,
        agent_id=token.agent_id,
        relays=[str(r) for r in settings.relay],
        allow=[str(r) for r in ctx.allowlist],
        pid=os.getpid(),
        health=str(health.address) if health else "off",
    )
    try:
        await runner.run(shutdown)
    finally:
        watchdog.cancel()
        if health is not None:
            await health.close()
    log.info("agent_stopped")
    return 0


def _tell_systemd(state: TunnelState, status: TunnelStatus) -> None:
    """READY=1 once the tunnel is first up; STATUS= on every change; STOPPING=1."""
    if state is TunnelState.UP:
        systemd.ready(f"tunnel up to {status.relay}")
    elif state is TunnelState.DRAINING:
        systemd.stopping("draining open streams")
    elif state is TunnelState.BACKING_OFF:
        systemd.status(f"reconnecting: {status.last_error or 'tunnel down'}")
    else:
        systemd.status(state.value)


async def _check(settings: AgentSettings, token: AgentToken) -> int:
    ok = True
    print(f"settings: ok (agent {token.agent_id})")
    for relay in settings.relay:
        try:
            fp = await check_relay(settings, token, relay)
        except TunnelError as exc:
            ok = False
            print(f"relay {relay}: FAILED: {exc}")
        else:
            print(f"relay {relay}: ok (host key {fp}, token accepted)")
    allow = settings.allowlist()
    if not len(allow):
        ok = False
        print("allow: no rules; the relay can reach nothing (set SLUICE_AGENT_ALLOW)")
    for rule in allow:
        print(f"allow {rule}: {await _describe_rule(allow, str(rule))}")
    return 0 if ok else 1


async def _describe_rule(allow: Allowlist, rule: str) -> str:
    host = rule.rsplit(":", 1)[0].strip("[]")
    if host.startswith("*.") or "/" in host:
        return "ok (pattern; matched per request)"
    try:
        ipaddress.ip_address(host)
        return "ok (address)"
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=5
        )
    except (OSError, TimeoutError) as exc:
        return f"does not resolve here ({getattr(exc, 'strerror', None) or 'timed out'})"
    addresses = sorted({str(info[4][0]) for info in infos})
    return "resolves to " + ", ".join(addresses)


if __name__ == "__main__":
    sys.exit(main())
