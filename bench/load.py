"""Load generators: wrk for small requests, curl for bulk transfers.

wrk runs with ``--latency``; a Lua ``done`` hook prints its exact numbers
(microsecond percentiles, error counts) as one JSON line, which is what we
parse, rather than the rounded text table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.proc import run_tool

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%.1f,"p99_us":%.1f,"max_us":%.1f,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    raw: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_lua(directory: Path) -> Path:
    path = directory / "report.lua"
    path.write_text(WRK_LUA)
    return path


async def wrk(
    url: str,
    *,
    lua: Path,
    connections: int,
    seconds: int,
    headers: dict[str, str],
    new_connection: bool = False,
) -> WrkResult:
    """Keep-alive (or, with *new_connection*, one connection per request) GETs."""
    threads = max(1, min(2, connections))
    args = [
        shutil.which("wrk") or "wrk",
        "--latency",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
    ]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if new_connection:
        args += ["-H", "Connection: close"]
    args.append(url)
    rc, out, err = await run_tool(args, timeout=seconds + 60)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
    if rc or line is None:
        raise RuntimeError(f"wrk failed ({rc}): {err.strip()}\n{out}")
    data = json.loads(line[6:])
    errors = sum(
        data[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        raw=" ".join(args[1:-1]) + " URL",
    )


@dataclass(frozen=True)
class Transfer:
    status: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def _curl_args(headers: dict[str, str]) -> list[str]:
    args = [
        shutil.which("curl") or "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "600",
        "-w",
        "%{http_code} %{size_download} %{size_upload} %{time_total}",
    ]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    return args


def _transfer(out: str, upload: bool) -> Transfer:
    code, down, up, total = out.split()
    return Transfer(int(code), int(float(up if upload else down)), float(total))


async def download(url: str, headers: dict[str, str], timeout: float = 600) -> Transfer:
    rc, out, err = await run_tool([*_curl_args(headers), url], timeout)
    if rc:
        raise RuntimeError(f"curl GET {url} failed ({rc}): {err}")
    return _transfer(out, upload=False)


async def upload(url: str, source: Path, headers: dict[str, str], timeout: float = 600) -> Transfer:
    # 'Expect:' off: no 100-continue round trip on any path.
    args = [*_curl_args(headers), "-H", "Expect:", "-T", str(source), url]
    rc, out, err = await run_tool(args, timeout)
    if rc:
        raise RuntimeError(f"curl PUT {url} failed ({rc}): {err}")
    return _transfer(out, upload=True)


async def download_beside_small_gets(
    big_url: str,
    small_url: str,
    headers: dict[str, str],
    *,
    lua: Path,
    expect_seconds: float,
) -> tuple[Transfer, WrkResult, bool]:
    """Start a bulk download, run c=1 small GETs while it runs, then let it finish.

    Returns the download, the small GETs, and whether the download was still
    running when the small GETs ended (so they really overlapped).
    """
    task = asyncio.ensure_future(download(big_url, headers))
    try:
        await asyncio.sleep(min(0.3, expect_seconds / 10))
        # wrk takes whole seconds; aim to finish well before the download does.
        seconds = max(1, math.ceil(expect_seconds * 0.6))
        small = await wrk(small_url, lua=lua, connections=1, seconds=seconds, headers=headers)
        overlapped = not task.done()
        big = await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
    return big, small, overlapped
