"""The OpenSSH baseline: a private sshd on loopback and ``ssh -N -R`` to it.

sshd runs from a temp dir with its own host key, config and authorized_keys
(no PAM, ``StrictModes no``), cipher ``aes128-gcm@openssh.com`` only. The
client asks sshd to listen on a loopback port and forward it to nginx, the
way an on-premise host would expose an internal API with plain OpenSSH.
"""

from __future__ import annotations

import getpass
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.delay_line import spawn_line
from bench.line_clock import DEFAULT_TIMER
from bench.proc import Child, free_port, port_open, run_tool, spawn, wait_until

CIPHER = "aes128-gcm@openssh.com"


def _sshd_config(root: Path, port: int) -> str:
    return f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root}/ssh_host_ed25519_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding remote
GatewayPorts no
X11Forwarding no
PrintMotd no
Ciphers {CIPHER}
Compression no
UseDNS no
LogLevel ERROR
"""


HOST_ALIAS = "sluice-bench-sshd"


@dataclass
class OpenSSH:
    sshd: Child
    ssh: Child
    forward_port: int
    line: Child | None = None  # the delay line between ssh and sshd, if any

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.forward_port}"

    @property
    def pids(self) -> list[int]:
        """sshd's listener (its per-connection children are counted with it) and ssh."""
        return [self.sshd.pid, self.ssh.pid]

    @classmethod
    async def start(
        cls,
        root: Path,
        target_port: int,
        rtt_ms: float = 0,
        mb_per_s: float | None = None,
        line_timer: str = DEFAULT_TIMER,
    ) -> OpenSSH:
        """sshd, and ``ssh -R`` to it (through a delay line of *rtt_ms* if not 0,
        limited to *mb_per_s* each way if given; *line_timer*: its clock)."""
        root.mkdir(parents=True)
        for name in ("ssh_host_ed25519_key", "id_ed25519"):
            rc, _, err = await run_tool(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], 30
            )
            if rc:
                raise RuntimeError(f"ssh-keygen failed: {err}")
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        host_pub = (root / "ssh_host_ed25519_key.pub").read_text().split()
        port = free_port()
        (root / "known_hosts").write_text(f"{HOST_ALIAS} {host_pub[0]} {host_pub[1]}\n")
        (root / "sshd_config").write_text(_sshd_config(root, port))
        if os.geteuid() == 0:
            # sshd insists on its privilege-separation directory.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
        sshd = await spawn(
            "sshd", [sshd_bin, "-D", "-e", "-f", str(root / "sshd_config")], log=root / "sshd.log"
        )
        ssh: Child | None = None
        line: Child | None = None
        try:
            await wait_until("sshd", lambda: port_open(port), timeout=10, child=sshd)
            ssh_port = port
            if rtt_ms:
                line, ssh_port = await spawn_line(
                    port, rtt_ms, root / "line.log", mb_per_s, timer=line_timer
                )
            forward = free_port()
            ssh = await spawn(
                "ssh",
                [
                    "ssh",
                    "-N",
                    "-T",
                    "-F",
                    "/dev/null",
                    "-p",
                    str(ssh_port),
                    "-i",
                    str(root / "id_ed25519"),
                    "-c",
                    CIPHER,
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    f"HostKeyAlias={HOST_ALIAS}",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    f"UserKnownHostsFile={root / 'known_hosts'}",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-o",
                    "Compression=no",
                    "-o",
                    "ServerAliveInterval=10",
                    "-R",
                    f"127.0.0.1:{forward}:127.0.0.1:{target_port}",
                    f"{getpass.getuser()}@127.0.0.1",
                ],
                log=root / "ssh.log",
            )
            await wait_until(
                "the ssh -R forward", lambda: port_open(forward), timeout=15, child=ssh
            )
        except BaseException:
            if ssh is not None:
                await ssh.stop()
            if line is not None:
                await line.stop()
            await sshd.stop()
            raise
        return cls(sshd, ssh, forward, line)

    async def stop(self) -> None:
        await self.ssh.stop()
        if self.line is not None:
            await self.line.stop()
        await self.sshd.stop()
