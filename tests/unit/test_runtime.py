"""Process setup shared by the relay and the agent."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys

import pytest

from sluice.runtime import keep_buffers_on_heap, settle_gc


def test_settle_gc_takes_startup_objects_out_of_every_collection() -> None:
    before = len(gc.get_objects())  # what a full collection walks
    assert before > 10_000  # this test process has imported plenty
    try:
        settle_gc()
        assert gc.get_freeze_count() >= before // 2
        assert len(gc.get_objects()) < before // 10
    finally:
        gc.unfreeze()


_NEW_MAPPINGS = """
import sys
from sluice.runtime import keep_buffers_on_heap
if sys.argv[1] == "tuned":
    assert keep_buffers_on_heap()
def mappings():  # the start of every mapping but the heap's (brk moves its end)
    with open("/proc/self/maps") as maps:
        return {line.split("-")[0] for line in maps if "[heap]" not in line}
before = mappings()
buffer = bytearray(1_500_000)  # a few packets' worth
print(len(mappings() - before))
"""


def _new_mappings(mode: str, **env: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _NEW_MAPPINGS, mode],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env,
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
def test_buffers_of_a_few_packets_come_from_the_heap_not_from_mmap() -> None:
    assert _new_mappings("default") >= 1  # glibc maps a 1.5 MB block on its own
    assert _new_mappings("tuned") == 0


def test_an_operators_malloc_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_buffers_on_heap() is False
