"""What makes relays one cluster: one master key, one SSH host key, one admin
token, and (on SQLite) one relay per database file."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

import asyncssh
import structlog
from sqlalchemy.engine import make_url

from server.connections.documents import iter_secrets
from server.secrets.admin_token import AdminTokens
from server.secrets.crypto import DecryptionError, SecretBox
from server.secrets.hostkey import load_or_create_host_key, write_host_key
from server.storage.cluster import ClusterStore
from server.storage.store import Store
from sluice.addresses import HostPort
from sluice.sshconfig import fingerprint
from sluice.tasks import TaskSet

log = structlog.get_logger("sluice.relay.cluster")

KEY_CHECK = "key_check"
HOST_KEY = "host_key"
ADMIN_TOKEN = "admin_token"  # noqa: S105 - the name of a row, not a token
_KEY_CHECK_TEXT = "sluice cluster master key check"


def _context(name: str) -> str:
    return f"cluster:{name}"


class SqliteLock:
    """An exclusive lock beside a SQLite database: one relay per file.

    SQLite serves one relay; two on one file would each believe it holds
    every tunnel. The lock goes with the process (flock), so a relay killed
    with SIGKILL leaves nothing to clean up.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def __repr__(self) -> str:
        return f"<SqliteLock {self.path}>"

    @classmethod
    def acquire(cls, url: str) -> SqliteLock | None:
        """Lock the database of *url* (None when it is not SQLite); ValueError if taken."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or not parsed.database:
            return None
        path = Path(parsed.database).resolve().with_name(Path(parsed.database).name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(
                f"another relay (pid {holder}) already uses the SQLite database "
                f"{parsed.database}: SQLite serves one relay. Give each relay its own "
                "data_dir, or run several relays as a cluster on PostgreSQL "
                "(SLUICE_SERVER_DATABASE_URL=postgresql+asyncpg://…, see docs/CLUSTER.md)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _wrong_key(box: SecretBox, sealed_with: str, url: str) -> ValueError:
    return ValueError(
        f"this relay's master key (id {box.current_key_id}) is not the one the database "
        f"{url} was sealed with (id {sealed_with}). Every relay of a cluster needs the "
        "same master key: set SLUICE_SERVER_MASTER_KEY (or master_key_file) to the "
        "cluster's key"
    )


async def check_master_key(cluster: ClusterStore, store: Store, box: SecretBox) -> None:
    """Refuse to run with a master key that cannot open the cluster's secrets.

    The first relay stores a value sealed with its key; each later start
    opens it. A database from before the cluster is checked against a stored
    connection secret first, so a wrong key never becomes the reference.
    """
    url = repr(store).removeprefix("<Store ").removesuffix(">")
    sealed = await cluster.secret(KEY_CHECK)
    if sealed is None:
        for row in await store.list_connections():
            for path, value in iter_secrets(json.loads(row.document)):
                try:
                    box.decrypt(value, context=f"connection:{row.id}:{path}")
                except DecryptionError:
                    raise _wrong_key(box, value.split(".")[1], url) from None
                break
            else:
                continue
            break
        sealed = await cluster.secret_or_store(
            KEY_CHECK, box.encrypt(_KEY_CHECK_TEXT, context=_context(KEY_CHECK))
        )
    try:
        box.decrypt(sealed, context=_context(KEY_CHECK))
    except DecryptionError:
        key_id = sealed.split(".")[1] if sealed.count(".") == 3 else "?"
        raise _wrong_key(box, key_id, url) from None


async def cluster_host_key(cluster: ClusterStore, box: SecretBox, path: Path) -> asyncssh.SSHKey:
    """The cluster's SSH host key, stored sealed in the database.

    The first relay to start stores its own key (an existing relay's key so
    becomes the cluster's, and agents that pinned it keep working); later
    relays take that one and write it to their data dir.
    """
    local = load_or_create_host_key(path)
    sealed = box.encrypt(local.export_private_key().decode(), context=_context(HOST_KEY))
    stored = await cluster.secret_or_store(HOST_KEY, sealed)
    key = asyncssh.import_private_key(box.decrypt(stored, context=_context(HOST_KEY)))
    if fingerprint(key) != fingerprint(local):
        backup = path.with_name(path.name + ".before-cluster")
        if not backup.exists():
            os.replace(path, backup)
        write_host_key(path, key)
        log.warning(
            "host_key_from_cluster",
            fingerprint=fingerprint(key),
            replaced=fingerprint(local),
            kept_as=str(backup),
        )
    return key


class AdminTokenSync:
    """One admin token for the whole cluster, sealed in the database.

    A token set by configuration (SLUICE_SERVER_ADMIN_TOKEN) stays each
    relay's own business. Otherwise the first relay stores its token; the
    others use it, and a rotation on any relay reaches all through the
    change feed.
    """

    def __init__(self, cluster: ClusterStore, box: SecretBox, admin: AdminTokens) -> None:
        self._cluster = cluster
        self._box = box
        self._admin = admin

    def __repr__(self) -> str:
        return f"<AdminTokenSync {self._admin!r}>"

    def _seal(self) -> str:
        return self._box.encrypt(json.dumps(self._admin.state()), context=_context(ADMIN_TOKEN))

    async def join(self) -> bool:
        """Use the cluster's token (storing ours when there is none). True: it was ours."""
        if self._admin.configured:
            return True
        mine = self._admin.current
        await self._apply(await self._cluster.secret_or_store(ADMIN_TOKEN, self._seal()))
        return self._admin.current == mine

    async def publish(self) -> None:
        """After a local rotation: store it and tell every relay."""
        if not self._admin.configured:
            await self._cluster.set_secret(ADMIN_TOKEN, self._seal(), change="admin")

    def changed(self, tasks: TaskSet) -> None:
        if not self._admin.configured:
            tasks.spawn(self.reload(), name="admin-token-reload")

    async def reload(self) -> None:
        sealed = await self._cluster.secret(ADMIN_TOKEN)
        if sealed is not None:
            await self._apply(sealed)

    async def _apply(self, sealed: str) -> None:
        state = json.loads(self._box.decrypt(sealed, context=_context(ADMIN_TOKEN)))
        self._admin.adopt(state)


def advertised_address(configured: HostPort | None, bound: tuple[str, int]) -> HostPort:
    """Where others should reach a listener of this relay: the setting, else the
    bound address unless it is a wildcard, else this host's name."""
    if configured is not None:
        return configured
    host, port = bound
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return HostPort(host, port)
