"""``sluice-server``: run the relay, print its fingerprint, manage agents."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import structlog
from sqlalchemy.exc import SQLAlchemyError

from server.cluster.identity import check_master_key, cluster_host_key
from server.connections.service import ConnectionService
from server.relay import Relay
from server.secrets.admin_token import FILE_NAME as ADMIN_TOKEN_FILE
from server.secrets.hostkey import host_key_fingerprint
from server.secrets.keyring import RotationPlan, load_secret_box
from server.settings import ServerSettings
from server.storage.cluster import ClusterStore
from server.storage.private_files import private_dir
from server.storage.store import SchemaMismatch, Store
from sluice import __version__, systemd
from sluice.config import SettingsError, load_settings
from sluice.logs import SecretMasker, configure_logging
from sluice.runtime import install_uvloop, keep_buffers_on_heap, settle_gc
from sluice.sshconfig import fingerprint
from sluice.tasks import cancel_until_done

log = structlog.get_logger("sluice.relay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice-server", description="The Sluice relay: API, SSH endpoint for agents."
    )
    parser.add_argument("--version", action="version", version=f"sluice-server {__version__}")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.add_argument("--data-dir", type=Path, default=None, help="overrides data_dir")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the API and accept agents until stopped")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="relay processes on this host, one cluster (PostgreSQL only): the API port "
        "shared, an SSH port each (ssh_listen's port + 0, 1, …)",
    )
    sub.add_parser("fingerprint", help="print the SSH host key fingerprint (SHA256:…)")
    sub.add_parser(
        "migrate",
        help="bring the database schema to this version's (only this and 'run' change it)",
    )
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
    sub.add_parser(
        "rotate-master-key",
        help="generate a new master key and re-encrypt every stored secret under it",
    )
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
        keep_buffers_on_heap()
        return asyncio.run(run_demo())
    if args.command == "fingerprint":
        if settings.database_url:
            # A cluster: the key every relay of it uses, from the database.
            return asyncio.run(_cluster_fingerprint(settings))
        print(host_key_fingerprint(settings.host_key_path))
        return 0
    masker = SecretMasker()
    configure_logging(settings.log_format, settings.log_level, masker=masker)
    install_uvloop()
    keep_buffers_on_heap()
    try:
        if args.command == "agents":
            return asyncio.run(_agents(settings, args))
        if args.command == "rotate-master-key":
            return asyncio.run(_rotate_master_key(settings))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
    except SchemaMismatch as exc:
        print(f"sluice-server: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("sluice-server: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        from server.cluster.workers import run_workers

        child = ["--config", str(args.config)] if args.config else []
        return asyncio.run(run_workers(settings, args.workers, [*child, "run"]))
    return asyncio.run(_run(settings, masker))


async def _migrate(settings: ServerSettings) -> int:
    private_dir(settings.data_dir)
    store, change = await Store.open_reporting(
        settings.resolved_database_url(), migrate=True, timeout=settings.database_timeout
    )
    await store.close()
    if change.before == change.after:
        print(f"schema already at revision {change.after}")
    else:
        print(f"schema migrated: {change.before or 'empty'} -> {change.after}")
    return 0


async def _agents(settings: ServerSettings, args: argparse.Namespace) -> int:
    private_dir(settings.data_dir)
    store = await Store.open(settings.resolved_database_url(), migrate=False)
    try:
        if args.agents_command == "create":
            agent, token = await store.create_agent(args.name)
            await store.audit("cli", "agent.created", agent.id, None, {"name": agent.name})
            print(f"agent_id: {agent.id}")
            print(f"token: {token}")
            return 0
        if args.agents_command == "list":
            for a in await store.list_agents():
                print(f"{a.id}\t{a.name}\t{a.created_at.isoformat()}")
            return 0
        if args.agents_command == "delete":
            if await store.delete_agent(args.agent_id):
                await store.audit("cli", "agent.deleted", args.agent_id)
                print(f"deleted {args.agent_id}")
                return 0
            print(f"no agent {args.agent_id}", file=sys.stderr)
            return 1
        new = await store.rotate_agent_token(args.agent_id)
        if new is None:
            print(f"no agent {args.agent_id}", file=sys.stderr)
            return 1
        await store.audit("cli", "agent.token_rotated", args.agent_id, None, {"grace_seconds": 0})
        print(f"token: {new}")
        return 0
    finally:
        await store.close()


async def _cluster_fingerprint(settings: ServerSettings) -> int:
    box = load_secret_box(settings)
    try:
        store = await Store.open(settings.resolved_database_url(), migrate=False)
    except SchemaMismatch as exc:
        print(f"sluice-server: {exc}", file=sys.stderr)
        return 2
    try:
        cluster = ClusterStore(store)
        await check_master_key(cluster, store, box)
        key = await cluster_host_key(cluster, box, settings.host_key_path)
    except ValueError as exc:
        print(f"sluice-server: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
    print(fingerprint(key))
    return 0


async def _rotate_master_key(settings: ServerSettings) -> int:
    try:
        plan = RotationPlan(settings)
    except ValueError as exc:
        print(f"sluice-server: {exc}", file=sys.stderr)
        return 2
    # Checked before the new key is written: a refused command changes nothing.
    store = await Store.open(settings.resolved_database_url(), migrate=False)
    try:
        plan.begin()
        count = await ConnectionService(store, plan.box).reseal_all(plan.box)
        box = plan.box
        await ClusterStore(store).rewrite_secrets(
            lambda name, value: box.rotate(value, context=f"cluster:{name}")
        )
        await store.audit(
            "cli",
            "master_key.rotated",
            plan.new_key.key_id,
            None,
            {"connections": count, "previous_key": plan.old_key_id},
        )
    finally:
        await store.close()
    plan.commit()
    print(
        f"re-encrypted the secrets of {count} connection(s) under master key "
        f"{plan.new_key.key_id}; the previous key {plan.old_key_id} is kept beside it"
    )
    return 0


def _announce_admin_token(path: Path, token: str) -> None:
    """Called once, when the relay has generated its admin token on first start.

    The value goes to stdout only when it is a terminal: under systemd stdout
    is the journal (readable by the adm group), under Docker ``docker logs``.
    """
    if sys.stdout.isatty():
        print(f"Generated the admin API token (kept in {path}):\n  {token}", flush=True)
        return
    log.info(
        "admin_token_generated",
        kept_in=str(path),
        mode="0600",
        read_with=f"cat {path}",
        detail="the value is never logged; read the file as root or as the relay's user",
    )


async def _run(settings: ServerSettings, masker: SecretMasker) -> int:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    try:
        # Startup objects leave the GC before any agent or caller is accepted
        # (a connection frozen with them would never be collected).
        relay = await Relay.start(settings, before_listening=settle_gc, masker=masker)
    except SchemaMismatch as exc:
        # Exit status 2: restarting cannot fix it (systemd's RestartPreventExitStatus=).
        log.error("relay_start_failed", error=str(exc))
        return 2
    except (OSError, ValueError) as exc:
        log.error("relay_start_failed", error=str(exc))
        return 1
    except SQLAlchemyError as exc:
        # The driver's own error says what the server said; the wrapper's text
        # would also quote the statement and its parameters, so it is not used.
        orig = getattr(exc, "orig", None)
        reason = str(orig).splitlines()[0] if orig is not None else type(exc).__name__
        log.error("relay_start_failed", error=f"database: {reason}")
        return 1
    if relay.admin_token_created:
        _announce_admin_token(settings.data_dir / ADMIN_TOKEN_FILE, relay.admin_token)
    ssh_host, ssh_port = relay.ssh_address
    http_host, http_port = relay.http_address
    log.info("relay_started", version=__version__)
    systemd.ready(f"SSH {ssh_host}:{ssh_port}, API {http_host}:{http_port}")
    watchdog = asyncio.ensure_future(systemd.watchdog_loop(shutdown, lambda: True))
    try:
        await shutdown.wait()
    finally:
        systemd.stopping("draining")
        await relay.close()
        watchdog.cancel()
    # What the close cancelled and gave up waiting for is cancelled until it
    # ends: asyncio.run would otherwise wait for it, for ever if it goes on.
    others = asyncio.all_tasks() - {asyncio.current_task()}
    left = await cancel_until_done(others, settings.database_timeout)
    if left:
        log.warning("relay_tasks_left", tasks=sorted(task.get_name() for task in left))
    log.info("relay_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
