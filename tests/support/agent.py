"""Run the real sluice-agent as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

AGENT_BIN = Path(sys.executable).parent / "sluice-agent"


class AgentProcess:
    """One sluice-agent process; its output goes to *log_path*."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        command: str = "run",
        prefix: list[str] | None = None,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.command = command
        self.prefix = prefix or []
        self.proc: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<AgentProcess pid={pid} log={self.log_path}>"

    async def start(self) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_AGENT_")}
        env.update(self.env)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.prefix,
                str(AGENT_BIN),
                self.command,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peak_rss_kib(self) -> int:
        """VmHWM: the most resident memory the process has had."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
