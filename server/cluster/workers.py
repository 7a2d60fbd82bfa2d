"""``sluice-server run --workers N``: N relay processes on one host, one cluster.

Each worker is a whole relay and a member of the cluster on the shared
PostgreSQL database. They share the API port (SO_REUSEPORT: the kernel
spreads callers over them) and each listens for agents on its own SSH port
(the configured one plus the worker's index), which it advertises; agents
learn all of them and keep a tunnel to each. The parent only starts them,
passes SIGTERM/SIGINT on, and starts again a worker that died.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import structlog
from sqlalchemy.engine import make_url

from server.cluster.identity import check_master_key, cluster_host_key
from server.secrets.admin_token import load_or_create_admin_token
from server.secrets.keyring import load_secret_box
from server.settings import ServerSettings
from server.storage.cluster import ClusterStore
from server.storage.store import Store
from sluice.addresses import HostPort

log = structlog.get_logger("sluice.relay.workers")

RESTART_DELAY = 1.0


def _shifted(address: HostPort, index: int) -> str:
    return str(HostPort(address.host, address.port + index if address.port else 0))


def worker_env(settings: ServerSettings, index: int) -> dict[str, str]:
    """The environment of worker *index*: its own SSH port, the shared API port."""
    env = {
        "SLUICE_SERVER_SSH_LISTEN": _shifted(settings.ssh_listen, index),
        "SLUICE_SERVER_REUSE_PORT": "true",
        "SLUICE_SERVER_DATA_DIR": str(settings.data_dir),
    }
    if settings.advertise_ssh is not None:
        env["SLUICE_SERVER_ADVERTISE_SSH"] = _shifted(settings.advertise_ssh, index)
    if settings.cluster_listen is not None and settings.cluster_listen.port:
        env["SLUICE_SERVER_CLUSTER_LISTEN"] = _shifted(settings.cluster_listen, index)
    if settings.advertise_cluster is not None and settings.advertise_cluster.port:
        env["SLUICE_SERVER_ADVERTISE_CLUSTER"] = _shifted(settings.advertise_cluster, index)
    return env


async def prepare(settings: ServerSettings) -> None:
    """Do once, before the workers start, what they would otherwise race for:
    key files, the admin token file, migrations, the cluster's identity."""
    url = settings.resolved_database_url()
    if make_url(url).get_backend_name() != "postgresql":
        raise ValueError(
            "--workers needs PostgreSQL (SLUICE_SERVER_DATABASE_URL=postgresql+asyncpg://…): "
            "workers are members of a cluster, and SQLite serves one relay"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    box = load_secret_box(settings)
    load_or_create_admin_token(
        settings.data_dir,
        settings.admin_token.get_secret_value() if settings.admin_token else None,
        settings.admin_token_file,
    )
    store = await Store.open(url, timeout=settings.database_timeout)
    try:
        cluster = ClusterStore(store)
        await check_master_key(cluster, store, box)
        await cluster_host_key(cluster, box, settings.host_key_path)
    finally:
        await store.close()


async def run_workers(settings: ServerSettings, count: int, argv: list[str]) -> int:
    """Run *count* workers until SIGTERM/SIGINT; returns the exit code."""
    try:
        await prepare(settings)
    except ValueError as exc:
        log.error("relay_start_failed", error=str(exc))
        return 1
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    procs: dict[int, asyncio.subprocess.Process] = {}

    def forward(sig: int) -> None:
        stopping.set()
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)

    async def keep(index: int) -> None:
        while not stopping.is_set():
            env = {**os.environ, **worker_env(settings, index)}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server.cli", *argv, env=env, cwd=Path.cwd()
            )
            procs[index] = proc
            log.info("worker_started", worker=index, pid=proc.pid)
            code = await proc.wait()
            if stopping.is_set():
                return
            log.warning("worker_exited", worker=index, code=code, restart_in_s=RESTART_DELAY)
            try:
                async with asyncio.timeout(RESTART_DELAY):
                    await stopping.wait()
            except TimeoutError:
                continue

    await asyncio.gather(*(keep(i) for i in range(count)))
    log.info("workers_stopped")
    return 0
