"""The relay's persistent Ed25519 SSH host key."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

from sluice.sshconfig import fingerprint


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """Read the host key at *path*, generating it (mode 0600) on first start."""
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    write_host_key(path, key)
    return key


def write_host_key(path: Path, key: asyncssh.SSHKey) -> None:
    """Write *key* to *path* (mode 0600, atomically) and its public half beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key())
    os.replace(tmp, path)
    public = os.open(path.with_suffix(".pub"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(public, "wb") as out:
        out.write(key.export_public_key())


def host_key_fingerprint(path: Path) -> str:
    return fingerprint(load_or_create_host_key(path))
