"""Run the real sluice-server as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.support.ports import free_port

BIN = Path(sys.executable).parent


class RelayProcess:
    def __init__(
        self, data_dir: Path, log_path: Path, *, prefix: list[str] | None = None, **settings: str
    ) -> None:
        """*prefix*: a command the relay runs under (``prlimit --nofile=…``)."""
        self.prefix = prefix or []
        self.ssh_port = free_port()
        self.http_port = free_port()
        self.admin_token = "slcadm_test_" + os.urandom(12).hex()
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        self.env.update(
            {
                "SLUICE_SERVER_DATA_DIR": str(data_dir),
                "SLUICE_SERVER_SSH_LISTEN": f"127.0.0.1:{self.ssh_port}",
                "SLUICE_SERVER_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
                "SLUICE_SERVER_ADMIN_TOKEN": self.admin_token,
                "SLUICE_SERVER_LOG_FORMAT": "json",
                **{f"SLUICE_SERVER_{k.upper()}": v for k, v in settings.items()},
            }
        )
        self.proc: asyncio.subprocess.Process | None = None

    def fingerprint(self) -> str:
        out = subprocess.run(
            [str(BIN / "sluice-server"), "fingerprint"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()

    async def start(self, timeout: float = 20) -> RelayProcess:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.prefix,
                str(BIN / "sluice-server"),
                "run",
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(self.base + "/healthz") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or self.proc.returncode is not None:
                    raise AssertionError(f"relay did not start:\n{self.log_path.read_text()}")
                await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            return await self.proc.wait()
