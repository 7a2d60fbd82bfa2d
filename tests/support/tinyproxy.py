"""A real HTTP proxy for tests: Debian's tinyproxy (package tinyproxy-bin), on loopback."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port

TINYPROXY = shutil.which("tinyproxy")

_ATTEMPTS = 5  # tinyproxy needs a fixed port; another process may take the one we picked
_PORT_TAKEN = "Could not create listening sockets"


@dataclass
class Tinyproxy:
    """A running tinyproxy; *log_path* holds its output for failure messages."""

    host: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _config(port: int, users: dict[str, str], connect_ports: Iterable[int]) -> str:
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "MaxClients 20",
        "LogLevel Info",
        "Allow 127.0.0.1",
    ]
    lines += [f"BasicAuth {user} {password}" for user, password in users.items()]
    # With no ConnectPort line tinyproxy allows CONNECT to every port; list them all.
    lines += [f"ConnectPort {p}" for p in connect_ports]
    return "\n".join(lines) + "\n"


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def _wait_listening(proxy: Tinyproxy, deadline: float) -> bool:
    """True once the port accepts a connection; False if tinyproxy exited first."""
    while True:
        if proxy.process.returncode is not None:
            return False
        try:
            _, writer = await asyncio.open_connection(proxy.host, proxy.port)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"tinyproxy did not listen on {proxy.port} in time:\n{proxy.log()}"
                ) from None
            await asyncio.sleep(0.02)  # polling with a deadline, not a wait for time
        else:
            writer.close()
            await writer.wait_closed()
            return True


@asynccontextmanager
async def run_tinyproxy(
    workdir: Path,
    *,
    users: dict[str, str],
    connect_ports: Iterable[int],
    timeout: float = 10.0,
) -> AsyncIterator[Tinyproxy]:
    """Run tinyproxy in the foreground on 127.0.0.1 with Basic auth for *users*,
    allowing CONNECT only to *connect_ports*; stop it on exit.

    tinyproxy 1.11 accepts only letters, digits and ``-._`` in BasicAuth names
    and passwords, and answers a wrong password with 401 (not 407).
    """
    assert TINYPROXY is not None, "tinyproxy is not installed (apt-get install tinyproxy-bin)"
    ports = list(connect_ports)
    deadline = time.monotonic() + timeout
    log_path = workdir / "tinyproxy.log"
    for attempt in range(_ATTEMPTS):
        conf = workdir / "tinyproxy.conf"
        port = free_port()
        conf.write_text(_config(port, users, ports))
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                TINYPROXY,
                "-d",
                "-c",
                str(conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        proxy = Tinyproxy("127.0.0.1", port, process, log_path)
        try:
            listening = await _wait_listening(proxy, deadline)
        except BaseException:
            await _stop(process)
            raise
        if not listening:
            await _stop(process)
            if _PORT_TAKEN not in proxy.log() or attempt == _ATTEMPTS - 1:
                raise AssertionError(f"tinyproxy exited at start:\n{proxy.log()}")
            log_path.write_text("")  # only the attempt that runs matters now
            continue
        try:
            yield proxy
        finally:
            await _stop(process)
        return
