"""httpbin (an API we did not write) under gunicorn, on a loopback port.

The listening socket is made here (port 0) and handed to gunicorn as
``fd://N``, so no other process can take the port in between; the server is
ready once it answers ``/status/200``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

GUNICORN = Path(sys.executable).parent / "gunicorn"


def missing() -> str | None:
    """Why httpbin cannot run here, or None."""
    if importlib.util.find_spec("httpbin") is None:
        return "httpbin is not installed (make install puts it in the venv)"
    if not GUNICORN.exists():
        return "gunicorn is not installed (make install puts it in the venv)"
    return None


async def _answers(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET /status/200 HTTP/1.1\r\nHost: ready\r\nConnection: close\r\n\r\n")
        return (await reader.read(12)).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        writer.close()


async def httpbin(log_path: Path) -> AsyncIterator[int]:
    """Run httpbin; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            str(GUNICORN),
            "--bind",
            f"fd://{sock.fileno()}",
            "--workers",
            "2",
            "--log-level",
            "warning",
            "httpbin:app",
            pass_fds=(sock.fileno(),),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
    sock.close()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not await _answers(port):
            if proc.returncode is not None or loop.time() > deadline:
                raise AssertionError(f"httpbin did not start:\n{log_path.read_text()}")
            await asyncio.sleep(0.05)  # polling a condition with a deadline
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
