"""A private OpenSSH sshd on loopback, for interoperability tests.

Runs from a temp dir with its own host key, config and authorized_keys (no
PAM, ``StrictModes no``), accepting one client key for the current user;
remote forwards allowed. Skips the test when sshd is not installed (.ci/run
installs openssh-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.support.ports import free_port
from tests.support.waiting import wait_until

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


@dataclass
class Sshd:
    port: int
    user: str
    client_key: asyncssh.SSHKey
    host_key: asyncssh.SSHKey
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.asynccontextmanager
async def run_sshd(root: Path, *, rekey_limit: str = "default none") -> AsyncIterator[Sshd]:
    """sshd on 127.0.0.1 (aes128-gcm only) for the duration of a ``with`` block."""
    if SSHD is None:
        pytest.skip("OpenSSH's sshd is not installed (apt-get install openssh-server)")
    root.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(root / "host_key"))
    (root / "host_key").chmod(0o600)
    client_key.write_public_key(str(root / "authorized_keys"))
    port = free_port()
    user = getpass.getuser()
    (root / "sshd_config").write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
Ciphers aes128-gcm@openssh.com
Compression no
UseDNS no
RekeyLimit {rekey_limit}
LogLevel ERROR
"""
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation
    log_path = root / "sshd.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            SSHD,
            "-D",
            "-e",
            "-f",
            str(root / "sshd_config"),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
    try:
        await wait_until(
            lambda: _port_open(port) or proc.returncode is not None, what="sshd listening"
        )
        if proc.returncode is not None:
            raise AssertionError(f"sshd exited:\n{log_path.read_text()}")
        yield Sshd(port, user, client_key, host_key, log_path)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
