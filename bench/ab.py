"""A/B of Sluice code versions on the loopback proxy path: ``python -m bench.ab``.

Each version is a source tree (``--tree NAME=DIR``; e.g. ``git archive
<commit> | tar -x -C DIR``) run as its own relay and agent, the tree put
first on PYTHONPATH, all in front of one nginx; OpenSSH (``ssh -R``) runs
beside them as the reference. Points run interleaved, version by version
within each repetition, so drift of the shared machine hits all alike; the
summary gives the median of each number per version.

Downloads: ``down`` is 64 MiB of random bytes from nginx with its defaults
(no sendfile), ``downsf`` the same file with ``sendfile on; tcp_nopush on``,
``down1g`` a sparse 1 GiB file (sendfile); run both 64 MiB points to see
both backend configurations. ``mixed``: c=1 small GETs beside a download of
that 1 GiB file (their p50/p99, and the download's MB/s).

CPU per request is relay + agent ``utime+stime`` (``/proc/<pid>/stat``,
child processes included) over the requests wrk made: less sensitive to
other load on the machine than req/s; ``writes`` the write system calls
per request of the same processes (``syscw`` of ``/proc/<pid>/io``), also
per role (``writes_relay``, ``writes_agent``), as is the CPU per request
(``cpu_us_relay``, ``cpu_us_agent``). With
``--workers N`` each tree's relay is ``sluice-server run --workers N`` on a
fresh PostgreSQL database (SLUICE_BENCH_POSTGRES_URL or
SLUICE_TEST_POSTGRES_URL), its agent tunnelled to every worker. With
``--profile DIR`` every version's relay and agent are sampled by py-spy
during the first repetition of each point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load
from bench.cluster import worker_stack
from bench.nginx import GiB, MiB, Nginx
from bench.openssh import OpenSSH
from bench.postgres import fresh_database, server_url, unavailable
from bench.proc import (
    Child,
    ForeignLoad,
    Sched,
    cpu_seconds,
    raise_fd_limit,
    sched,
    spawn,
    write_calls,
)
from bench.profile import py_spy, sampling
from bench.stack import Relay, start_agent

POINTS = ("c1", "c32", "down", "downsf", "up", "down1g", "mixed")
# What each download point fetches from bench.nginx: 64 MiB of random bytes
# with nginx's defaults (no sendfile; the worse case for Sluice), the same
# file with sendfile on and tcp_nopush, and a sparse 1 GiB file (sendfile).
DOWNLOADS = {
    "down": "plain/64m-real.bin",
    "downsf": "files/64m-real.bin",
    "down1g": "files/1g.bin",
}
# ``mixed``: c=1 GETs of /small.json for about 60 % of this many seconds,
# beside a download of the sparse 1 GiB file through the same path (the
# download was still running when they ended: ``overlapped`` 1).
MIXED_SECONDS = 3.0


@dataclass
class Version:
    """One path through the bench: a Sluice tree, or OpenSSH."""

    name: str
    base: str
    headers: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    # The path's own processes by role (relay, agent; ssh, sshd), for --sched.
    roles: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def _tree(text: str) -> tuple[str, Path]:
    name, sep, where = text.partition("=")
    if not sep or not name or not Path(where).is_dir():
        raise argparse.ArgumentTypeError(f"--tree {text!r}: write NAME=DIR (an existing directory)")
    return name, Path(where).resolve()


async def _point(
    point: str,
    version: Version,
    seconds: int,
    lua: Path,
    size: int,
    upload: Path,
    roles: dict[str, int] | None = None,
    with_sched: bool = False,
) -> dict[str, float]:
    foreign = ForeignLoad()
    cpu0 = cpu_seconds(version.pids)
    writes0 = write_calls(version.pids)
    role_writes0 = {role: write_calls([pid]) for role, pid in (roles or {}).items()}
    role_cpu0 = {role: cpu_seconds([pid]) for role, pid in (roles or {}).items()}
    began = time.monotonic()
    transfer = point not in ("c1", "c32")
    sched0 = {r: sched(pid) for r, pid in version.roles.items()} if with_sched and transfer else {}
    row: dict[str, float]
    if point in ("c1", "c32"):
        got = await load.wrk(
            version.base + "/small.json",
            lua=lua,
            connections=1 if point == "c1" else 32,
            seconds=seconds,
            headers=version.headers,
        )
        if got.errors:
            raise RuntimeError(f"{version.name} {point}: {got.errors} errors")
        row = {"rps": got.rps, "p50_ms": got.p50_ms, "p99_ms": got.p99_ms}
        count = got.requests
    elif point == "mixed":
        big, small, overlapped = await load.download_beside_small_gets(
            f"{version.base}/{DOWNLOADS['down1g']}",
            version.base + "/small.json",
            version.headers,
            lua=lua,
            expect_seconds=MIXED_SECONDS,
        )
        if big.status != 200 or big.bytes != GiB or small.errors:
            raise RuntimeError(f"{version.name} mixed: {big}, {small.errors} GET errors")
        row = {"p50_ms": small.p50_ms, "p99_ms": small.p99_ms, "rps": small.rps}
        row |= {"big_mb_s": big.mb_per_s, "overlapped": float(overlapped)}
        count = 0  # the download's CPU: cpu_s, not per request
    elif point in DOWNLOADS:
        size = GiB if point == "down1g" else size
        moved = await load.download(f"{version.base}/{DOWNLOADS[point]}", version.headers)
        if moved.status != 200 or moved.bytes != size:
            raise RuntimeError(f"{version.name} {point}: {moved}")
        row = {"mb_s": moved.mb_per_s}
        count = 0
    else:
        moved = await load.upload(version.base + "/upload/blob", upload, version.headers)
        if moved.status not in (201, 204) or moved.bytes != size:
            raise RuntimeError(f"{version.name} up: {moved}")
        row = {"mb_s": moved.mb_per_s}
        count = 0
    cpu = cpu_seconds(version.pids) - cpu0
    wall = time.monotonic() - began
    moved_mib = (GiB if point in ("down1g", "mixed") else size) / MiB
    for role, counted in sched0.items():
        row |= _sched_cells(role, sched(version.roles[role]) - counted, wall, moved_mib)
    if count:
        row["cpu_us"] = cpu / count * 1e6
        row["writes"] = (write_calls(version.pids) - writes0) / count
        for role, before in role_writes0.items():
            row[f"writes_{role}"] = (write_calls([(roles or {})[role]]) - before) / count
        for role, before_s in role_cpu0.items():
            row[f"cpu_us_{role}"] = (cpu_seconds([(roles or {})[role]]) - before_s) / count * 1e6
    else:
        row["cpu_s"] = cpu
    row["foreign"] = foreign.cores()
    return row


def _sched_cells(role: str, got: Sched, wall: float, mib: float) -> dict[str, float]:
    """Per role: CPU ms per MiB moved; shares of the point's wall time on a
    CPU and runnable but waiting for one (the rest it slept: waiting for
    input, credit or room); read/write system calls and context switches per
    MiB."""
    return {
        f"{role}_ms_mib": got.run * 1000 / mib,
        f"{role}_run": got.run / wall,
        f"{role}_wait": got.wait / wall,
        f"{role}_sys_mib": (got.reads + got.writes) / mib,
        f"{role}_cs_mib": (got.voluntary + got.involuntary) / mib,
    }


@contextlib.asynccontextmanager
async def _profiled(
    directory: Path | None, version: Version, point: str, roles: dict[str, int], perf: bool
) -> AsyncIterator[None]:
    binary = shutil.which("perf") if perf else py_spy()
    if directory is None or binary is None or not roles:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    children: list[tuple[Child, Path]] = []
    for role, pid in roles.items():
        out = directory / f"{version.name}-{point}-{role}.{'data' if perf else 'txt'}"
        if perf:
            args = [binary, "record", "-F", "999", "-g", "-p", str(pid), "-o", str(out)]
        else:
            args = [binary, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
            args += ["--nonblocking", "--output", str(out)]
        children.append((await spawn(f"profile {role}", args, log=directory / "profile.log"), out))
    async with sampling(children, summarise_output=not perf):
        yield


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows if key in r)


def summary(versions: list[Version]) -> list[str]:
    lines = []
    for point in POINTS:
        for v in versions:
            rows = v.rows.get(point)
            if not rows:
                continue
            keys = [k for k in rows[0] if k != "foreign"]
            cells = "  ".join(f"{k} {_median(rows, k):.3f}" for k in keys)
            lines.append(
                f"{point:5} {v.name:10} {cells}  (n={len(rows)}, foreign cores "
                f"max {max(r['foreign'] for r in rows):.2f})"
            )
    return lines


async def run(
    trees: list[tuple[str, Path]],
    points: list[str],
    reps: int,
    seconds: int,
    openssh: bool,
    profile: Path | None,
    say: Callable[[str], None],
    perf: bool = False,
    workers: int = 1,
    with_sched: bool = False,
) -> list[Version]:
    raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="sluice-ab-", dir="/dev/shm"))
    stops: list[Callable[[], Awaitable[Any]]] = []
    stacks = contextlib.AsyncExitStack()
    stops.append(stacks.aclose)
    try:
        nginx = await Nginx.start(
            root / "nginx",
            {"1g.bin": GiB} if {"down1g", "mixed"} & set(points) else {},
            upload_size=64 * MiB,
            real={"64m-real.bin": 64 * MiB},
        )
        stops.append(nginx.stop)
        versions: list[Version] = []
        if openssh:
            ssh = await OpenSSH.start(root / "openssh", nginx.port)
            stops.append(ssh.stop)
            roles = {"ssh": ssh.ssh.pid, "sshd": ssh.sshd.pid}
            versions.append(Version("openssh", ssh.base, pids=ssh.pids, roles=roles))
        for name, tree in trees:
            env = {"PYTHONPATH": str(tree)}
            if workers > 1:
                server = server_url()
                if reason := await unavailable(server):
                    raise RuntimeError(f"--workers {workers}: {reason}")
                assert server is not None
                database = await stacks.enter_async_context(fresh_database(server))
                relay, agent, conn = await stacks.enter_async_context(
                    worker_stack(root, database, nginx, workers, name, **env)
                )
                versions.append(
                    Version(
                        name,
                        relay.proxy_base(conn),
                        relay.auth,
                        [relay.pid, agent.pid],
                        {"relay": relay.pid, "agent": agent.pid},
                    )
                )
                say(f"{name}: {tree}, {workers} relay workers under pid {relay.pid}")
                continue
            relay = await Relay.create(root / f"relay-{name}", **env)
            stops.append(relay.close)
            agent_id, token = await relay.create_agent(name)
            agent = await start_agent(
                relay,
                agent_id,
                token,
                f"127.0.0.1:{nginx.port}",
                root / f"agent-{name}.log",
                **env,
            )
            stops.append(agent.stop)
            conn = await relay.create_connection(name, nginx.base, agent_id)
            versions.append(
                Version(
                    name,
                    relay.proxy_base(conn),
                    relay.auth,
                    [relay.pid, agent.pid],
                    {"relay": relay.pid, "agent": agent.pid},
                )
            )
            say(f"{name}: {tree}, relay pid {relay.pid}, agent pid {agent.pid}")
        lua = load.write_lua(root)
        for v in versions:  # warm pools and caches
            await load.wrk(
                v.base + "/small.json", lua=lua, connections=32, seconds=1, headers=v.headers
            )
        for rep in range(1, reps + 1):
            for point in points:
                for v in versions:
                    directory = profile if rep == 1 else None
                    sluice_roles = v.roles if v.name != "openssh" else {}
                    async with _profiled(directory, v, point, sluice_roles, perf):
                        row = await _point(
                            point,
                            v,
                            seconds,
                            lua,
                            64 * MiB,
                            nginx.upload_source,
                            sluice_roles or None,
                            with_sched,
                        )
                    v.rows.setdefault(point, []).append(row)
                    cells = "  ".join(f"{k} {x:.3f}" for k, x in row.items())
                    say(f"rep {rep} {point:5} {v.name:10} {cells}")
        return versions
    finally:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                await stop()
        shutil.rmtree(root, ignore_errors=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=_tree, action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--points", default="c1,c32", help=f"comma-separated, of {POINTS}")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk point")
    parser.add_argument("--openssh", action="store_true", help="OpenSSH beside the trees")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR")
    parser.add_argument("--perf", action="store_true", help="profile with perf, not py-spy")
    parser.add_argument(
        "--workers", type=int, default=1, help="relay processes per tree (PostgreSQL needed)"
    )
    parser.add_argument(
        "--sched",
        action="store_true",
        help="per process of each path: CPU ms/MiB, shares of the time on a CPU and "
        "waiting for one, system calls and context switches per MiB (transfer points)",
    )
    args = parser.parse_args()
    points = [p for p in args.points.split(",") if p]
    if unknown := set(points) - set(POINTS):
        parser.error(f"--points: unknown {sorted(unknown)}; choose from {POINTS}")

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"uptime: {os.getloadavg()}")
    versions = asyncio.run(
        run(
            args.tree,
            points,
            args.reps,
            args.seconds,
            args.openssh,
            args.profile,
            say,
            args.perf,
            args.workers,
            args.sched,
        )
    )
    say(f"uptime: {os.getloadavg()}")
    for line in summary(versions):
        say(line)


if __name__ == "__main__":
    cli()
