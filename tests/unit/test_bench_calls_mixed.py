"""bench.calls --mixed: the calls and counts of GETs beside a download beyond
each alone (issue 28d). The per-process counts come from bench.proc.sched
(tests/unit/test_bench_sched.py)."""

from __future__ import annotations

from bench.calls import mixed_extra


def test_extra_is_the_mixed_count_beyond_the_download_and_its_gets_alone() -> None:
    mixed = {"a": 100, "b": 10, "proc run_us": 5000}
    solo = {"a": 40, "proc run_us": 3000}
    alone = {"a": 20, "b": 10, "c": 4, "proc run_us": 1000}
    # Twice the GETs beside the download as alone.
    got = mixed_extra(mixed, solo, alone, 2.0)
    assert got == {"a": 20.0, "b": -10.0, "c": -8.0, "proc run_us": 0.0}
