"""``sluice-server``: run the relay, print its fingerprint, manage agents."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog

from server.hostkey import host_key_fingerprint
from server.relay import Relay
from server.settings import ServerSettings
from server.store import Store
from sluice import __version__
from sluice.config import SettingsError, load_settings
from sluice.logs import SecretMasker, configure_logging
from sluice.runtime import install_uvloop

log = structlog.get_logger("sluice.relay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice-server", description="The Sluice relay: API, SSH endpoint for agents."
    )
    parser.add_argument("--version", action="version", version=f"sluice-server {__version__}")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.add_argument("--data-dir", type=Path, default=None, help="overrides data_dir")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve the API and accept agents until stopped")
    sub.add_parser("fingerprint", help="print the SSH host key fingerprint (SHA256:…)")
    sub.add_parser("demo", help="run relay, agent and a sample API on loopback, end to end")
    agents = sub.add_parser("agents", help="manage agents").add_subparsers(
        dest="agents_command", required=True
    )
    create = agents.add_parser("create", help="create an agent; prints its id and token")
    create.add_argument("name")
    agents.add_parser("list", help="list agents")
    delete = agents.add_parser("delete", help="delete an agent")
    delete.add_argument("agent_id")
    rotate = agents.add_parser("rotate-token", help="issue a new token; the old one stops")
    rotate.add_argument("agent_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        settings = load_settings(ServerSettings, args.config, **overrides)
    except SettingsError as exc:
        print(f"sluice-server: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo":
        from server.demo import run_demo

        install_uvloop()
        return asyncio.run(run_demo())
    if args.command == "fingerprint":
        print(host_key_fingerprint(settings.host_key_path))
        return 0
    masker = SecretMasker()
    configure_logging(settings.log_format, settings.log_level, masker=masker)
    install_uvloop()
    if args.command == "agents":
        return asyncio.run(_agents(settings, args))
    return asyncio.run(_run(settings))


async def _agents(settings: ServerSettings, args: argparse.Namespace) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.resolved_database_url())
    try:
        if args.agents_command == "create":
            agent, token = await store.create_agent(args.name)
            print(f"agent_id: {agent.id}")
            print(f"token: {token}")
            return 0
        if args.agents_command == "list":
            for a in await store.list_agents():
                print(f"{a.id}\t{a.name}\t{a.created_at.isoformat()}")
            return 0
        if args.agents_command == "delete":
            if await store.delete_agent(args.agent_id):
                print(f"deleted {args.agent_id}")
                return 0
            print(f"no agent {args.agent_id}", file=sys.stderr)
            return 1
        new = await store.rotate_agent_token(args.agent_id)
        if new is None:
            print(f"no agent {args.agent_id}", file=sys.stderr)
            return 1
        print(f"token: {new}")
        return 0
    finally:
        await store.close()


async def _run(settings: ServerSettings) -> int:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    relay = await Relay.start(settings)
    log.info("relay_started", version=__version__)
    try:
        await shutdown.wait()
    finally:
        await relay.close()
    log.info("relay_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
