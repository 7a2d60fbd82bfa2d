"""bench.calls --mixed: the calls and counts of GETs beside a download beyond
each alone, and the per-process counts its site module adds (issue 28d)."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from types import ModuleType

import bench
from bench.calls import mixed_extra

SITE = Path(bench.__file__).parent / "calls_site" / "sitecustomize.py"


def _site() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_calls_site", SITE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # (no SLUICE_BENCH_CALLS: installs nothing)
    return module


def test_extra_is_the_mixed_count_beyond_the_download_and_its_gets_alone() -> None:
    mixed = {"a": 100, "b": 10, "proc run_us": 5000}
    solo = {"a": 40, "proc run_us": 3000}
    alone = {"a": 20, "b": 10, "c": 4, "proc run_us": 1000}
    # Twice the GETs beside the download as alone.
    got = mixed_extra(mixed, solo, alone, 2.0)
    assert got == {"a": 20.0, "b": -10.0, "c": -8.0, "proc run_us": 0.0}


def test_proc_counts_take_this_process_cpu_and_system_calls() -> None:
    counts = _site().proc_counts
    before = counts()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # on a CPU for 50 ms
        pass
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        for _ in range(20):
            os.write(fd, b"x")
    finally:
        os.close(fd)
    after = counts()
    assert after["proc run_us"] - before["proc run_us"] >= 40_000, (before, after)
    assert after["proc writes"] - before["proc writes"] >= 20, (before, after)
    assert after["proc context_switches"] >= before["proc context_switches"]
