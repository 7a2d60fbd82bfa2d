"""What the numbers were measured on: machine, kernel, tool and library versions."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from bench.proc import run_tool


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


async def _tool(args: list[str]) -> str:
    try:
        rc, out, err = await run_tool(args, 10)
    except (OSError, TimeoutError) as exc:
        return f"unavailable ({exc})"
    text = (out + err).strip().splitlines()
    return text[0] if text else f"exit {rc}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


async def describe() -> dict[str, str]:
    if os.environ.get("SLUICE_BENCH_REVISION"):  # a clean export without .git
        commit, changed = os.environ["SLUICE_BENCH_REVISION"], ""
    else:
        commit = await _tool(["git", "rev-parse", "--short", "HEAD"])
        dirty = await _tool(["git", "status", "--porcelain", "--untracked-files=no"])
        changed = " + local changes" if dirty and not dirty.startswith("exit") else ""
    return {
        "cpu": f"{_cpu_model()} x {os.cpu_count()} cores",
        "memory": f"{_memory_gib():.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "os": await _tool(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0],
        "sluice": f"{_version('sluice')} (git {commit}{changed})",
        "asyncssh": _version("asyncssh"),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "cryptography": _version("cryptography"),
        "nginx": await _tool(["nginx", "-v"]),
        "openssh": await _tool(["ssh", "-V"]),
        "wrk": await _tool(["wrk", "-v"]),
        "curl": await _tool(["curl", "--version"]),
    }
