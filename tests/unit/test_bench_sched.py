"""bench.proc.sched: the scheduler's and the kernel's counts for a process tree."""

from __future__ import annotations

import os
import time

from bench.proc import sched


def test_counts_cpu_time_and_write_calls_of_this_process() -> None:
    before = sched(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # on a CPU for 50 ms
        pass
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        for _ in range(20):
            os.write(fd, b"x")
    finally:
        os.close(fd)
    got = sched(os.getpid()) - before
    assert got.run >= 0.04, got
    assert got.writes >= 20, got
    assert min(got.wait, got.voluntary, got.involuntary) >= 0, got
