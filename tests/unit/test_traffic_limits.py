"""The concurrency cap's slots, the rate-limit gate and retry-header parsing."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest
from pydantic import ValidationError

from server.connections.model import HTTPSettings, RateLimit
from server.proxy.limit_gate import LimitGate
from server.proxy.limits import ConcurrencyLimited, ConcurrencyLimits, Slots
from server.proxy.retry import RateLimits, retry_after_seconds


class _Metrics:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.waits: list[float] = []

    def slots(self, conn_id: str, in_flight: int, queued: int) -> None:
        self.seen.append((in_flight, queued))

    def queue_wait(self, conn_id: str, seconds: float) -> None:
        self.waits.append(seconds)


async def test_slots_are_handed_over_in_arrival_order() -> None:
    slots = Slots(1)
    assert slots.try_take()
    first, second = slots.enqueue(), slots.enqueue()
    assert not slots.try_take()
    slots.release()
    assert first.done()
    assert not second.done()
    assert slots.in_flight == 1
    assert slots.queued == 1
    slots.release()
    assert second.done()


async def test_a_waiter_that_leaves_passes_its_slot_on() -> None:
    slots = Slots(1)
    assert slots.try_take()
    leaving, staying = slots.enqueue(), slots.enqueue()
    slots.release()  # handed to `leaving`, which gives up at the same moment
    slots.leave(leaving)
    assert staying.done()
    assert slots.in_flight == 1


async def test_queue_timeout_is_concurrency_limited() -> None:
    metrics = _Metrics()
    limits = ConcurrencyLimits(metrics)
    async with limits.slot("con_a", 1, 5):
        with pytest.raises(ConcurrencyLimited, match="concurrency_level"):
            async with limits.slot("con_a", 1, 0.01):
                pass
    assert metrics.seen[-1] == (0, 0)


async def test_no_level_means_no_cap() -> None:
    limits = ConcurrencyLimits(_Metrics())
    async with limits.slot("con_a", None, 0.01), limits.slot("con_a", None, 0.01):
        assert limits.state("con_a") is None


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000) == 10.0
    assert retry_after_seconds(date, now=1_000_020) == 0.0


async def test_gate_lets_one_probe_out_after_the_deadline() -> None:
    gate = LimitGate()
    assert await gate.pass_through() is False  # never limited: open
    gate.limited(0.05)
    waiters = {asyncio.ensure_future(gate.pass_through()) for _ in range(2)}
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    assert [task.result() for task in done] == [True]  # one probe, the other waits
    await asyncio.sleep(0.01)
    assert not next(iter(pending)).done()
    gate.probed()
    gate.end_probe()
    assert await next(iter(pending)) is False


def test_rate_limit_settings_name_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        RateLimit.model_validate({"fail_values": ["x"]})
    assert caught.value.errors()[0]["loc"] == ("fail_values",)
    with pytest.raises(ValidationError) as caught:
        HTTPSettings.model_validate({"base_uri": "https://a.example", "concurrency_level": 101})
    assert caught.value.errors()[0]["loc"] == ("concurrency_level",)


async def test_a_limit_seen_by_another_relay_closes_the_gate() -> None:
    """The cluster's seam: a deadline from elsewhere holds this relay's callers too."""
    limits = RateLimits()
    limits.limited_elsewhere("con_a", time.time() + 0.05)
    gate = limits.gate("con_a")
    assert gate.needs_probe
    began = time.monotonic()
    assert await gate.pass_through() is True  # the first one out probes
    assert time.monotonic() - began >= 0.04
