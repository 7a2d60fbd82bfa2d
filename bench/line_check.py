"""The delay line as an instrument: what it costs and how exactly it delays.

``python -m bench.line_check --rtt 10 --rtt 50 --rtt 100`` runs, per round
trip, the line in a process of its own (as ``bench.long_link`` does) and
measures:

- its CPU (/proc/<pid>/task/*/schedstat) per GiB carried by a download
  from nginx through it with curl, and that download's MB/s;
- one-way delays of one-byte pings through it to an echo server (in this
  process): never below half the round trip, and how late (the echo server's
  own turn is in the figure, as a real peer's would be);
- keep-alive GETs of nginx's /small.json through it: the round trip a small
  request takes.

``--timer`` picks the line's timer (``timerfd``, the default, or ``spin``,
the old one kept for A/B runs only); several give an interleaved A/B.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import load
from bench.delay_line import TimedEcho, line_cpu_seconds, spawn_line
from bench.line_clock import TIMERS
from bench.nginx import MiB, Nginx

GiB = 1024 * MiB
FILE = "line.bin"


class _Pinger(asyncio.Protocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[float] = asyncio.Queue()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        for _ in data:
            self.answers.put_nowait(now)


async def pings(rtt_ms: float, timer: str, count: int, root: Path) -> dict[str, Any]:
    """One-byte pings through a line of *rtt_ms*: each way's delay beyond half
    the round trip, ms (negative: early)."""
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    server = await loop.create_server(lambda: TimedEcho(arrivals), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    child, line_port = await spawn_line(port, rtt_ms, root / f"ping-{timer}.log", timer=timer)
    half = rtt_ms / 2000
    there: list[float] = []
    back: list[float] = []
    try:
        pinger = _Pinger()
        transport, _ = await loop.create_connection(lambda: pinger, "127.0.0.1", line_port)
        for _ in range(count):
            # A random pause first: pings fall at every phase of the clock's ticks.
            await asyncio.sleep(random.uniform(0, 0.002))
            arrivals.clear()
            sent = time.monotonic()
            transport.write(b"x")
            answered = await asyncio.wait_for(pinger.answers.get(), 10)
            there.append((arrivals[0] - sent - half) * 1000)
            back.append((answered - arrivals[0] - half) * 1000)
        transport.close()
    finally:
        await child.stop()
        server.close()
    return {"there": _summary(there), "back": _summary(back)}


def _summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "min": round(ms[0], 3),
        "p50": round(statistics.median(ms), 3),
        "p90": round(ms[int(0.9 * (len(ms) - 1))], 3),
        "p99": round(ms[int(0.99 * (len(ms) - 1))], 3),
        "max": round(ms[-1], 3),
    }


async def gets(base: str, count: int) -> dict[str, float]:
    """*count* keep-alive GETs of /small.json, one after another: ms each."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /small.json HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    times: list[float] = []
    try:
        for _ in range(count):
            await asyncio.sleep(random.uniform(0, 0.002))
            sent = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            times.append((time.monotonic() - sent) * 1000)
    finally:
        writer.close()
    return _summary(times)


async def download_cost(
    nginx: Nginx, rtt_ms: float, timer: str, size: int, root: Path
) -> dict[str, Any]:
    """A download of *size* bytes through a line: MB/s and the line's CPU s/GiB."""
    child, port = await spawn_line(nginx.port, rtt_ms, root / f"down-{timer}.log", timer=timer)
    try:
        base = f"http://127.0.0.1:{port}"
        small = await gets(base, 50)
        cpu0 = line_cpu_seconds([child.pid])
        got = await load.download(f"{base}/files/{FILE}", {})
        cpu = line_cpu_seconds([child.pid]) - cpu0
    finally:
        await child.stop()
    if got.bytes != size:
        raise RuntimeError(f"download through the line: {got.bytes} of {size} bytes")
    return {
        "mb_s": round(got.mb_per_s, 1),
        "line_cpu_s": round(cpu, 2),
        "line_cpu_s_per_gib": round(cpu / (size / GiB), 3),
        "get_ms": small,
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="sluice-line-"))
    size = args.size_mib * MiB
    rows: list[dict[str, Any]] = []
    nginx = await Nginx.start(root / "nginx", {FILE: size}, upload_size=0)
    try:
        for rep in range(1, args.repetitions + 1):
            for rtt in args.rtt or [10, 50, 100]:
                for timer in args.timer or ["timerfd"]:
                    row: dict[str, Any] = {"rep": rep, "rtt_ms": rtt, "timer": timer}
                    row.update(await download_cost(nginx, rtt, timer, size, root))
                    row["ping_late_ms"] = await pings(rtt, timer, args.pings, root)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        await nginx.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rtt", type=float, action="append", help="ms (repeatable)")
    parser.add_argument("--timer", action="append", choices=TIMERS, help="(repeatable: A/B)")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="rows as JSON")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
