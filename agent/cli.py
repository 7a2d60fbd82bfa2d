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
from agent.proxy import ProxyContext, ProxyStats
from agent.settings import DEFAULT_CONFIG_FILE, AgentSettings
from agent.supervisor import Supervisor, connect_opener
from agent.tunnel import check_relay
from sluice import __version__
from sluice.config import SettingsError, load_settings
from sluice.logs import SecretMasker, configure_logging
from sluice.runtime import install_uvloop
from sluice.tokens import AgentToken

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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings, token = _load(args.config)
    except SettingsError as exc:
        print(f"sluice-agent: {exc}", file=sys.stderr)
        return 2
    masker = SecretMasker()
    masker.add(str(token), token.secret)
    configure_logging(settings.log_format, settings.log_level, masker=masker)
    install_uvloop()
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
    )
    supervisor = Supervisor(settings, connect_opener(settings, token, ctx), ctx)
    log.info(
        "agent_starting",
        version=__version__,
        agent_id=token.agent_id,
        relays=[str(r) for r in settings.relay],
        allow=[str(r) for r in ctx.allowlist],
        pid=os.getpid(),
    )
    await supervisor.run(shutdown)
    log.info("agent_stopped")
    return 0


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
