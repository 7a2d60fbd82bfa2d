"""Throughput and latency points, one path after another, repeated.

Each point resets the peak RSS of the path's processes, reads their CPU
before and after, runs the load, and records one flat row of numbers.
Repetitions interleave the paths point by point (direct, openssh,
sluice-onprem, sluice-cloud, then the next point), so slow drift of the
machine hits every path alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load
from bench.proc import ForeignLoad, cpu_seconds, memory_kib, process_tree, reset_peak
from bench.profile import Profiler

GiB = 1024**3


@dataclass
class BenchPath:
    """One way from the client to nginx, and the processes that carry it."""

    name: str
    base: str  # nginx paths ("/small.json") are appended to this
    headers: dict[str, str] = field(default_factory=dict)
    cpu_pids: list[int] = field(default_factory=list)  # (and their descendants)
    rss_pids: dict[str, int] = field(default_factory=dict)  # role -> pid

    def url(self, path: str) -> str:
        return self.base + path

    def reset_peaks(self) -> None:
        for pid in self.rss_pids.values():
            for p in process_tree(pid):
                reset_peak(p)

    def peaks_mb(self) -> dict[str, float]:
        return {
            role: sum(memory_kib(p)["VmHWM"] for p in process_tree(pid)) / 1024
            for role, pid in self.rss_pids.items()
        }


@dataclass(frozen=True)
class Plan:
    """How long and how big: the full run, or the quick check."""

    repetitions: int
    seconds: int  # per wrk point
    medium: int  # the "64 MiB" transfer, bytes
    large: int  # the "1 GiB" transfer, bytes
    medium_name: str = "64m.bin"
    large_name: str = "1g.bin"

    @property
    def real_medium_name(self) -> str:
        """The medium file with random bytes (the other files are sparse)."""
        return self.medium_name.replace(".bin", "-real.bin")


Row = dict[str, Any]


async def measure(
    path: BenchPath,
    rep: int,
    point: str,
    work: Callable[[], Awaitable[Row]],
    profiler: Profiler | None = None,
) -> Row:
    profiling = (
        profiler.around(path.name, point, rep, path.rss_pids)
        if profiler
        else contextlib.nullcontext()
    )
    async with profiling:
        path.reset_peaks()
        foreign = ForeignLoad()
        cpu0 = cpu_seconds(path.cpu_pids)
        began = time.perf_counter()
        row = await work()
        wall = time.perf_counter() - began
        cpu = cpu_seconds(path.cpu_pids) - cpu0
        row_foreign = foreign.cores()
    row.update(
        path=path.name, point=point, rep=rep, wall_s=wall, cpu_s=cpu, foreign_cores=row_foreign
    )
    if path.cpu_pids:
        row["cpu_util"] = cpu / wall if wall else 0.0
        if row.get("requests"):
            row["cpu_us_per_req"] = cpu / row["requests"] * 1e6
        if row.get("bytes"):
            row["cpu_s_per_gib"] = cpu / (row["bytes"] / GiB)
    for role, mb in path.peaks_mb().items():
        row[f"peak_rss_{role}_mb"] = mb
    return row


def _wrk_row(result: load.WrkResult) -> Row:
    return {
        "requests": result.requests,
        "rps": result.rps,
        "errors": result.errors,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
    }


def _transfer_row(result: load.Transfer, expected: int, ok_status: tuple[int, ...]) -> Row:
    good = result.status in ok_status and result.bytes == expected
    return {
        "bytes": result.bytes,
        "mb_s": result.mb_per_s,
        "errors": 0 if good else 1,
        "status": result.status,
    }


def points(plan: Plan, lua: Path, upload_source: Path) -> list[tuple[str, Any]]:
    """(name, factory) pairs; a factory takes a path and returns the point's work."""

    def small(conns: int, new: bool) -> Any:
        def make(p: BenchPath) -> Callable[[], Awaitable[Row]]:
            async def work() -> Row:
                return _wrk_row(
                    await load.wrk(
                        p.url("/small.json"),
                        lua=lua,
                        connections=conns,
                        seconds=plan.seconds,
                        headers=p.headers,
                        new_connection=new,
                    )
                )

            return work

        return make

    def down(name: str, size: int, where: str = "files") -> Any:
        def make(p: BenchPath) -> Callable[[], Awaitable[Row]]:
            async def work() -> Row:
                got = await load.download(p.url(f"/{where}/{name}"), p.headers)
                return _transfer_row(got, size, (200,))

            return work

        return make

    def up(p: BenchPath) -> Callable[[], Awaitable[Row]]:
        async def work() -> Row:
            got = await load.upload(p.url("/upload/blob"), upload_source, p.headers)
            return _transfer_row(got, plan.medium, (201, 204))

        return work

    return [
        ("get_c1", small(1, False)),
        ("get_c32", small(32, False)),
        ("get_c256", small(256, False)),
        ("new_c1", small(1, True)),
        ("new_c32", small(32, True)),
        ("down_medium", down(plan.medium_name, plan.medium)),
        # The backend's side of a download (see bench/nginx.py): random bytes
        # instead of a sparse file, then nginx's defaults (no sendfile).
        ("down_medium_real", down(plan.real_medium_name, plan.medium)),
        ("down_medium_plain", down(plan.real_medium_name, plan.medium, "plain")),
        ("down_medium_plain_sparse", down(plan.medium_name, plan.medium, "plain")),
        ("up_medium", up),
        ("down_large", down(plan.large_name, plan.large)),
    ]


async def mixed(path: BenchPath, rep: int, plan: Plan, lua: Path, solo_s: float) -> Row:
    """Small GETs at c=1 while the large download runs through the same path."""

    async def work() -> Row:
        big, small, overlapped = await load.download_beside_small_gets(
            path.url(f"/files/{plan.large_name}"),
            path.url("/small.json"),
            path.headers,
            lua=lua,
            expect_seconds=solo_s,
        )
        row = _wrk_row(small)
        row.update(
            big_mb_s=big.mb_per_s,
            big_bytes=big.bytes,
            overlapped=overlapped,
            big_ok=big.status == 200 and big.bytes == plan.large,
        )
        return row

    return await measure(path, rep, "mixed", work)


async def run_reps(
    paths: list[BenchPath],
    plan: Plan,
    lua: Path,
    upload_source: Path,
    say: Callable[[str], None],
    profiler: Profiler | None = None,
) -> list[Row]:
    rows: list[Row] = []
    for p in paths:  # warm pools and caches; not recorded
        await load.wrk(p.url("/small.json"), lua=lua, connections=32, seconds=1, headers=p.headers)
    for rep in range(1, plan.repetitions + 1):
        for name, factory in points(plan, lua, upload_source):
            for p in paths:
                row = await measure(p, rep, name, factory(p), profiler)
                rows.append(row)
                say(_describe(row))
        for p in paths:
            if p.name == "direct":
                continue  # nothing shares a path with a loopback socket
            solo = next(
                r for r in reversed(rows) if r["path"] == p.name and r["point"] == "down_large"
            )
            row = await mixed(p, rep, plan, lua, solo["wall_s"])
            rows.append(row)
            say(_describe(row))
    return rows


def _describe(row: Row) -> str:
    head = f"  rep {row['rep']} {row['point']:12} {row['path']:14}"
    if "mb_s" in row:
        return head + f" {row['mb_s']:8.1f} MB/s  cpu {row.get('cpu_s_per_gib', 0):.2f} s/GiB"
    text = (
        head + f" {row['rps']:9.0f} req/s  p50 {row['p50_ms']:.3f} ms  "
        f"p99 {row['p99_ms']:.3f} ms  errors {row['errors']}"
    )
    if "big_mb_s" in row:
        text += f"  download {row['big_mb_s']:.1f} MB/s"
    return text
