"""Process setup shared by the relay and the agent."""

from __future__ import annotations

import gc

from sluice.runtime import settle_gc


def test_settle_gc_takes_startup_objects_out_of_every_collection() -> None:
    before = len(gc.get_objects())  # what a full collection walks
    assert before > 10_000  # this test process has imported plenty
    try:
        settle_gc()
        assert gc.get_freeze_count() >= before // 2
        assert len(gc.get_objects()) < before // 10
    finally:
        gc.unfreeze()
