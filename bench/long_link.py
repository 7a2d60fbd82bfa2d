"""Long links: the same three ways to nginx when the far side is 10-100 ms away.

An agent sits in a private network and its relay in a cloud region, so the
tunnel crosses a WAN. Each path's long hop goes through a delay line
(``bench/delay_line.py``, one process per line) holding every byte half the
round trip in each direction:

- **direct**: client → line → nginx (the link itself, with TCP's own windows
  out of the way: the line reads as fast as it is written to);
- **openssh**: client → sshd's forwarded port → line → ``ssh -R`` → nginx;
- **sluice-onprem**: client → relay proxy route → line → agent → nginx.

Points per round trip: a download and an upload of a file of random bytes
(curl), c=1 keep-alive GETs of /small.json beside a download of a sparse file
on the same path, large enough (``LinkPlan.beside_size``) to run for as long
as the GETs do (it is cut off once they are done; ``overlapped`` says whether
it still ran when they ended), and a fresh caller's GET (wrk, one new
connection per request).

The line accepts a connection at once, so a new TCP connection through it
costs no round trip (a real link's handshake costs one): the direct path's
fresh GET is one round trip here, two on a real link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import load
from bench.delay_line import line_cpu_seconds, spawn_line
from bench.line_clock import DEFAULT_TIMER, TIMERS
from bench.load import write_lua
from bench.nginx import GiB, MiB, Nginx
from bench.openssh import OpenSSH
from bench.perf import BenchPath, Row, measure
from bench.proc import Child, run_tool
from bench.stack import Relay, start_agent

PATHS = ("direct", "openssh", "sluice-onprem")
FILE = "link.bin"


POINTS = ("down", "up", "beside", "fresh")
# Not in the default run: the GETs beside a download one by one, each with its
# time since the download began (where the slow ones fall); c=1 GETs beside a
# 1 GiB upload (the relay's side of the tunnel sends the bulk).
EXTRA_POINTS = ("beside_trace", "beside_up")
# The large transfers: one repetition (at 100 ms OpenSSH moves ~19 MB/s, so
# 1 GiB takes about a minute on that path alone).
LARGE_POINTS = ("down_1g", "up_1g")


@dataclass(frozen=True)
class LinkPlan:
    rtts_ms: tuple[int, ...]
    repetitions: int
    size: int  # bytes downloaded and uploaded
    get_seconds: int  # the GETs beside a download, and the fresh GETs
    large: int = 0  # bytes of the large download and upload (first repetition only); 0: none
    points: tuple[str, ...] = POINTS
    paths: tuple[str, ...] = PATHS
    mb_per_s: float | None = None  # a bandwidth limit on each line, each way; None: none
    # The limited lines' bottleneck queue, ms (None: the line's default; not
    # OpenSSH's line): how much of GET latency is the line's own queue.
    line_queue_ms: float | None = None
    # The lines' clocks; several: each path through a line of each, side by
    # side (an A/B of the instrument; "spin" is the old line).
    line_timers: tuple[str, ...] = (DEFAULT_TIMER,)
    # The GETs' companion download (a sparse file, cut off after the GETs):
    # large enough that it still runs when they end on the fastest path.
    beside_size: int = 8 * GiB


FULL_LINKS = LinkPlan(
    rtts_ms=(10, 50, 100), repetitions=3, size=64 * MiB, get_seconds=3, large=1024 * MiB
)
QUICK_LINKS = LinkPlan(
    rtts_ms=(50,), repetitions=1, size=8 * MiB, get_seconds=1, beside_size=3 * GiB
)
LARGE_FILE = "1g.bin"
# Until 2026-12-06 the companion was the 1 GiB file: at 10 ms the direct path
# moved it in 0.7 s and Sluice in 1.8, so most of the 3 s of GETs ran after
# it had ended (Sluice's GETs during it: p50 19-25 ms; all of them: 11 ms).
BESIDE_FILE = "beside.bin"
LARGE_UPLOAD = "upload-large.bin"
BESIDE_UPLOAD = "upload-beside.bin"  # sparse, 1 GiB: the companion of beside_up


async def _partial_download(url: str, headers: dict[str, str], seconds: float) -> load.Transfer:
    """GET *url* for at most *seconds* (curl --max-time); what arrived, and how fast."""
    args = [
        shutil.which("curl") or "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        f"{seconds:g}",
        "-w",
        "%{http_code} %{size_download} %{size_upload} %{time_total}",
    ]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    rc, out, err = await run_tool([*args, url], seconds + 30)
    if rc not in (0, 28):  # 28: the time limit, as intended
        raise RuntimeError(f"curl GET {url} failed ({rc}): {err}")
    code, down, _, total = out.split()
    return load.Transfer(int(code), int(float(down)), float(total))


async def _partial_upload(
    url: str, source: Path, headers: dict[str, str], seconds: float
) -> load.Transfer:
    """PUT *source* to *url* for at most *seconds* (curl --max-time); what went, and how fast."""
    args = [shutil.which("curl") or "curl", "-s", "-o", "/dev/null", "--max-time", f"{seconds:g}"]
    args += ["-w", "%{http_code} %{size_download} %{size_upload} %{time_total}", "-H", "Expect:"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    rc, out, err = await run_tool([*args, "-T", str(source), url], seconds + 30)
    if rc not in (0, 28):  # 28: the time limit, as intended
        raise RuntimeError(f"curl PUT {url} failed ({rc}): {err}")
    code, _, up, total = out.split()
    return load.Transfer(int(code), int(float(up)), float(total))


async def _get_trace(
    url: str, headers: dict[str, str], seconds: float, began: float
) -> list[tuple[float, float]]:
    """Keep-alive GETs of *url* one after another for *seconds*, on one
    connection: (seconds since *began*, milliseconds) for each."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n").encode()
    loop = asyncio.get_running_loop()
    trace: list[tuple[float, float]] = []
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            sent = loop.time()
            writer.write(request)
            status = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in status.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            done = loop.time()
            trace.append((round(sent - began, 4), round((done - sent) * 1000, 2)))
    finally:
        writer.close()
    return trace


@dataclass
class _LinkPath(BenchPath):
    """A path, the file its uploads send, and its delay line."""

    upload_source: Path = Path("/dev/null")
    line: str = DEFAULT_TIMER  # the line's clock (bench/line_clock.py)
    line_pids: list[int] = field(default_factory=list)


def _points(plan: LinkPlan, lua: Path) -> list[tuple[str, Callable[[_LinkPath], Any]]]:
    def down(p: _LinkPath) -> Callable[[], Awaitable[Row]]:
        async def work() -> Row:
            got = await load.download(p.url(f"/files/{FILE}"), p.headers)
            ok = got.status == 200 and got.bytes == plan.size
            return {"bytes": got.bytes, "mb_s": got.mb_per_s, "errors": 0 if ok else 1}

        return work

    def up(p: _LinkPath) -> Callable[[], Awaitable[Row]]:
        async def work() -> Row:
            got = await load.upload(p.url("/upload/link"), p.upload_source, p.headers)
            ok = got.status in (201, 204) and got.bytes == plan.size
            return {"bytes": got.bytes, "mb_s": got.mb_per_s, "errors": 0 if ok else 1}

        return work

    def down_large(p: _LinkPath) -> Callable[[], Awaitable[Row]]:
        async def work() -> Row:
            got = await load.download(p.url(f"/files/{LARGE_FILE}"), p.headers)
            ok = got.status == 200 and got.bytes == plan.large
            return {"bytes": got.bytes, "mb_s": got.mb_per_s, "errors": 0 if ok else 1}

        return work

    def up_large(p: _LinkPath) -> Callable[[], Awaitable[Row]]:
        async def work() -> Row:
            source = p.upload_source.with_name(LARGE_UPLOAD)
            got = await load.upload(p.url("/upload/link-large"), source, p.headers)
            ok = got.status in (201, 204) and got.bytes == plan.large
            return {"bytes": got.bytes, "mb_s": got.mb_per_s, "errors": 0 if ok else 1}

        return work

    def beside(p: _LinkPath, upload: bool = False) -> Callable[[], Awaitable[Row]]:
        async def work() -> Row:
            seconds = plan.get_seconds
            if upload:  # a 1 GiB PUT: the relay's side of the tunnel sends the bulk
                source = p.upload_source.with_name(BESIDE_UPLOAD)
                with source.open("wb") as f:
                    f.truncate(1024 * MiB)
                companion = _partial_upload(
                    p.url("/upload/beside"), source, p.headers, seconds + 1.5
                )
            else:
                companion = _partial_download(
                    p.url(f"/files/{BESIDE_FILE}"), p.headers, seconds + 1.5
                )
            big = asyncio.ensure_future(companion)
            try:
                await asyncio.sleep(0.5)  # the download under way first
                small = await load.wrk(
                    p.url("/small.json"),
                    lua=lua,
                    connections=1,
                    seconds=seconds,
                    headers=p.headers,
                )
                overlapped = not big.done()
                got = await big
            finally:
                if not big.done():
                    big.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                        await big
            return {
                "requests": small.requests,
                "rps": small.rps,
                "p50_ms": small.p50_ms,
                "p99_ms": small.p99_ms,
                "max_ms": small.max_ms,
                "errors": small.errors,
                "big_mb_s": got.mb_per_s,
                "overlapped": overlapped,
            }

        return work

    def beside_trace(p: _LinkPath) -> Callable[[], Awaitable[Row]]:
        async def work() -> Row:
            seconds = plan.get_seconds
            loop = asyncio.get_running_loop()
            began = loop.time()
            big = asyncio.ensure_future(
                _partial_download(p.url(f"/files/{BESIDE_FILE}"), p.headers, seconds + 1.5)
            )
            try:
                await asyncio.sleep(0.5)  # the download under way first
                trace = await _get_trace(p.url("/small.json"), p.headers, seconds, began)
                got = await big
            finally:
                if not big.done():
                    big.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                        await big
            ms = sorted(t for _, t in trace)
            return {
                "requests": len(ms),
                "p50_ms": ms[len(ms) // 2] if ms else 0.0,
                "p99_ms": ms[int(0.99 * (len(ms) - 1))] if ms else 0.0,
                "max_ms": ms[-1] if ms else 0.0,
                "errors": 0 if ms else 1,
                "big_mb_s": got.mb_per_s,
                "trace": trace,
                "trace_began": began,  # time.monotonic() of the download's start
            }

        return work

    def fresh(p: _LinkPath) -> Callable[[], Awaitable[Row]]:
        async def work() -> Row:
            got = await load.wrk(
                p.url("/small.json"),
                lua=lua,
                connections=1,
                seconds=plan.get_seconds,
                headers=p.headers,
                new_connection=True,
            )
            return {
                "requests": got.requests,
                "p50_ms": got.p50_ms,
                "p99_ms": got.p99_ms,
                "errors": got.errors,
            }

        return work

    every = {
        "down": down,
        "up": up,
        "beside": beside,
        "beside_up": lambda p: beside(p, upload=True),
        "fresh": fresh,
        "beside_trace": beside_trace,
        "down_1g": down_large,
        "up_1g": up_large,
    }
    # Large points named among the points: those alone (e.g. only down_1g).
    named = tuple(name for name in plan.points if name in LARGE_POINTS)
    names = tuple(name for name in plan.points if name not in LARGE_POINTS) + (
        (named or LARGE_POINTS) if plan.large else ()
    )
    return [(name, every[name]) for name in names]


async def long_links(
    root: Path,
    plan: LinkPlan,
    say: Callable[[str], None],
    relay_env: dict[str, str] | None = None,
    agent_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Measure every path at every round trip of *plan*; the rows and the plan.
    *relay_env*, *agent_env*: extra SLUICE_* settings (A/B runs)."""
    root.mkdir(parents=True)
    rows: list[Row] = []
    real = {FILE: plan.size} | ({LARGE_FILE: plan.large} if plan.large else {})
    sparse = {BESIDE_FILE: plan.beside_size}  # the GETs' companion download
    nginx = await Nginx.start(root / "nginx", sparse, upload_size=plan.size, real=real)
    if plan.large:
        with (nginx.upload_source.with_name(LARGE_UPLOAD)).open("wb") as f:
            f.truncate(plan.large)
    relay: Relay | None = None
    try:
        relay = await Relay.create(root / "relay", **(relay_env or {}))
        lua = write_lua(root)
        for rtt in plan.rtts_ms:
            rows += await _one_rtt(
                root / f"rtt-{rtt}", rtt, plan, nginx, relay, lua, say, agent_env or {}
            )
    finally:
        if relay is not None:
            await relay.close()
        await nginx.stop()
    return {"plan": asdict(plan), "rows": rows}


async def _one_rtt(
    root: Path,
    rtt: int,
    plan: LinkPlan,
    nginx: Nginx,
    relay: Relay,
    lua: Path,
    say: Callable[[str], None],
    agent_env: dict[str, str],
) -> list[Row]:
    root.mkdir(parents=True)
    children: list[Child] = []
    sshs: list[OpenSSH] = []
    rows: list[Row] = []
    try:
        # With several line timers (an A/B of the instrument), each path once
        # through a line of each, side by side: direct, direct, openssh, ...
        every: list[_LinkPath] = []
        for timer in plan.line_timers:
            every += await _paths(
                root / timer, rtt, plan, nginx, relay, agent_env, timer, children, sshs
            )
        paths = sorted(every, key=lambda p: PATHS.index(p.name))
        say(f"long link, {rtt} ms round trip ...")
        for p in paths:  # a first request on each path (connections, pools); not recorded
            await load.wrk(
                p.url("/small.json"), lua=lua, connections=1, seconds=1, headers=p.headers
            )
        for rep in range(1, plan.repetitions + 1):
            for name, factory in _points(plan, lua):
                if name in LARGE_POINTS and rep > 1:
                    continue
                for p in paths:
                    line0 = line_cpu_seconds(p.line_pids)
                    row = await measure(p, rep, name, factory(p))
                    line_cpu = line_cpu_seconds(p.line_pids) - line0
                    row.update(rtt_ms=rtt, line=p.line, line_cpu_s=line_cpu)
                    if row.get("bytes"):
                        row["line_cpu_s_per_gib"] = line_cpu / (row["bytes"] / GiB)
                    rows.append(row)
                    say(_describe(row))
    finally:
        for child in reversed(children):
            await child.stop()
        for openssh in sshs:
            await openssh.stop()
    return rows


async def _paths(
    root: Path,
    rtt: int,
    plan: LinkPlan,
    nginx: Nginx,
    relay: Relay,
    agent_env: dict[str, str],
    timer: str,
    children: list[Child],
    sshs: list[OpenSSH],
) -> list[_LinkPath]:
    """The paths of *plan* at *rtt*, each through a line whose clock is
    *timer*; what it starts is added to *children* and *sshs*."""
    root.mkdir(parents=True)
    source = nginx.upload_source
    paths: list[_LinkPath] = []
    if "direct" in plan.paths:
        line, direct_port = await spawn_line(
            nginx.port, rtt, root / "direct-line.log", plan.mb_per_s, plan.line_queue_ms, timer
        )
        children.append(line)
        paths.append(
            _LinkPath(
                "direct",
                f"http://127.0.0.1:{direct_port}",
                upload_source=source,
                line=timer,
                line_pids=[line.pid],
            )
        )
    if "openssh" in plan.paths:
        openssh = await OpenSSH.start(
            root / "openssh", nginx.port, rtt_ms=rtt, mb_per_s=plan.mb_per_s, line_timer=timer
        )
        sshs.append(openssh)
        assert openssh.line is not None
        paths.append(
            _LinkPath(
                "openssh",
                openssh.base,
                cpu_pids=openssh.pids,
                rss_pids={"ssh": openssh.ssh.pid, "sshd": openssh.sshd.pid},
                upload_source=source,
                line=timer,
                line_pids=[openssh.line.pid],
            )
        )
    if "sluice-onprem" in plan.paths:
        line, relay_port = await spawn_line(
            relay.ssh_port, rtt, root / "relay-line.log", plan.mb_per_s, plan.line_queue_ms, timer
        )
        children.append(line)
        agent_id, token = await relay.create_agent(f"link-{rtt}ms-{timer}")
        agent = await start_agent(
            relay,
            agent_id,
            token,
            f"127.0.0.1:{nginx.port}",
            root / "agent.log",
            relay_address=f"127.0.0.1:{relay_port}",
            **agent_env,
        )
        children.append(agent)
        conn = await relay.create_connection(f"link {rtt} ms {timer}", nginx.base, agent_id)
        paths.append(
            _LinkPath(
                "sluice-onprem",
                relay.proxy_base(conn),
                relay.auth,
                cpu_pids=[relay.pid, agent.pid],
                rss_pids={"relay": relay.pid, "agent": agent.pid},
                upload_source=source,
                line=timer,
                line_pids=[line.pid],
            )
        )
    return paths


def _describe(row: Row) -> str:
    path = row["path"] if row["line"] == DEFAULT_TIMER else f"{row['path']}[{row['line']}]"
    head = f"  {row['rtt_ms']:3d} ms rep {row['rep']} {row['point']:7} {path:20}"
    if row["point"] in ("down", "up", *LARGE_POINTS):
        line = f"  line {row['line_cpu_s_per_gib']:.2f} CPU s/GiB" if row.get("bytes") else ""
        return head + f" {row['mb_s']:8.1f} MB/s" + line
    text = head + f" p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms"
    if "trace" in row:
        slow = [(at, ms) for at, ms in row["trace"] if ms > 2 * row["rtt_ms"] + 10]
        text += "\n    slow GETs (s since the download began, ms): " + " ".join(
            f"{at:.2f}:{ms:.0f}" for at, ms in slow
        )
    if "big_mb_s" in row:
        text += f"  download beside {row['big_mb_s']:.1f} MB/s"
    return text + (f"  errors {row['errors']}" if row.get("errors") else "")


def main() -> None:
    """Only the long-link points: ``python -m bench.long_link --rtt 50 --points down``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rtt", type=int, action="append", help="round trip, ms (repeatable)")
    parser.add_argument("--repetitions", type=int, default=FULL_LINKS.repetitions)
    parser.add_argument("--size-mib", type=int, default=FULL_LINKS.size // MiB)
    parser.add_argument("--large-mib", type=int, default=0, help="1 GiB points: 1024")
    parser.add_argument(
        "--points",
        default=",".join(POINTS),
        help="of "
        + ",".join(POINTS + EXTRA_POINTS + LARGE_POINTS)
        + " (with --large-mib: both large points unless some are named)",
    )
    parser.add_argument("--paths", default=",".join(PATHS), help="of " + ",".join(PATHS))
    parser.add_argument(
        "--mbps", type=float, default=None, help="bandwidth limit of the delay lines, MB/s each way"
    )
    parser.add_argument(
        "--line-queue-ms",
        type=float,
        default=None,
        help="the limited lines' bottleneck queue, ms (not OpenSSH's line)",
    )
    parser.add_argument(
        "--line-timer",
        action="append",
        choices=TIMERS,
        default=None,
        help="the delay lines' clock (default timerfd); repeated: an A/B of the line, "
        "each path through a line of each (spin: the old, spinning line)",
    )
    parser.add_argument("--get-seconds", type=int, default=FULL_LINKS.get_seconds)
    parser.add_argument("--out", type=Path, default=None, help="raw rows as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    parser.add_argument(
        "--relay-env", action="append", default=[], metavar="NAME=VALUE", help="relay setting"
    )
    parser.add_argument(
        "--agent-env", action="append", default=[], metavar="NAME=VALUE", help="agent setting"
    )
    args = parser.parse_args()
    plan = LinkPlan(
        rtts_ms=tuple(args.rtt or FULL_LINKS.rtts_ms),
        repetitions=args.repetitions,
        size=args.size_mib * MiB,
        get_seconds=args.get_seconds,
        large=args.large_mib * MiB,
        points=tuple(p for p in args.points.split(",") if p),
        paths=tuple(p for p in args.paths.split(",") if p),
        mb_per_s=args.mbps,
        line_queue_ms=args.line_queue_ms,
        line_timers=tuple(args.line_timer or (DEFAULT_TIMER,)),
    )
    relay_env = dict(item.split("=", 1) for item in args.relay_env)
    agent_env = dict(item.split("=", 1) for item in args.agent_env)
    root = Path(tempfile.mkdtemp(prefix="sluice-links-"))
    try:
        results = asyncio.run(long_links(root / "links", plan, print, relay_env, agent_env))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
