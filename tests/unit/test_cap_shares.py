"""The cluster's concurrency cap: shares per live relay, rebalanced; the
cluster's traffic series merged; the hop's signed purpose."""

from __future__ import annotations

import asyncio
import datetime as dt

from server.cluster.forward import SLOT, TRAFFIC, HopAuth
from server.cluster.shares import CapShares, share_of
from server.proxy.limits import ConcurrencyLimits
from server.proxy.traffic_stats import TrafficStats, merged_hour
from server.secrets.crypto import MasterKey, SecretBox
from server.storage.cluster import RelayRow
from tests.support.waiting import wait_until

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _row(relay_id: str, minute: int) -> RelayRow:
    at = T0 + dt.timedelta(minutes=minute)
    return RelayRow(relay_id, f"ssh-{relay_id}", f"http://{relay_id}", at, at, False)


class _Metrics:
    def slots(self, conn_id: str, in_flight: int, queued: int) -> None:
        pass

    def queue_wait(self, conn_id: str, seconds: float) -> None:
        pass


def test_shares_add_up_to_the_level_and_the_oldest_relays_hold_the_rest() -> None:
    for level in range(1, 12):
        for count in range(1, 6):
            shares = [share_of(level, p, count) for p in range(count)]
            assert sum(shares) == level
            assert max(shares) - min(shares) <= 1
            assert shares == sorted(shares, reverse=True)
    assert [share_of(4, p, 3) for p in range(3)] == [2, 1, 1]
    assert [share_of(2, p, 3) for p in range(3)] == [1, 1, 0]


def test_a_relay_finds_its_place_and_the_holders_of_a_share() -> None:
    shares = CapShares("rly_c")
    changes: list[int] = []
    shares.on_change(lambda: changes.append(shares.count))
    # Starting, not registered yet: it counts itself as the newest.
    assert shares.update([_row("rly_a", 0), _row("rly_b", 1)])
    assert (shares.position, shares.count) == (2, 3)
    assert shares.share(3) == 1
    assert shares.share(2) == 0
    assert shares.share(4) == 1
    assert [r.id for r in shares.holders(2)] == ["rly_a", "rly_b"]
    assert not shares.update([_row("rly_a", 0), _row("rly_b", 1), _row("rly_c", 2)])
    # The oldest dies: the others move up and take its extra slot.
    assert shares.update([_row("rly_b", 1), _row("rly_c", 2)])
    assert (shares.position, shares.count) == (1, 2)
    assert shares.share(4) == 2
    assert shares.share(3) == 1
    assert shares.share(1) == 0
    assert [r.id for r in shares.holders(1)] == ["rly_b"]
    assert changes == [3, 2]


async def test_a_rebalance_hands_new_room_to_queued_requests_at_once() -> None:
    shares = CapShares("rly_b")
    shares.update([_row("rly_a", 0), _row("rly_b", 1)])
    limits = ConcurrencyLimits(_Metrics(), share=shares.share)
    shares.on_change(limits.rebalance)
    entered: list[int] = []
    release = asyncio.Event()

    async def caller(i: int) -> None:
        async with limits.slot("con_1", 4, 5.0):
            entered.append(i)
            await release.wait()

    tasks = [asyncio.create_task(caller(i)) for i in range(4)]
    await wait_until(lambda: len(entered) >= 2, timeout=5, what="two callers in")
    assert entered == [0, 1]  # this relay's share of 4 over two relays
    shares.update([_row("rly_b", 1)])  # rly_a died: the whole level is ours
    await wait_until(lambda: len(entered) == 4, timeout=5, what="the queued callers let in")
    assert entered == [0, 1, 2, 3]
    state = limits.state("con_1")
    assert state is not None
    assert state.cap == 4
    release.set()
    await asyncio.gather(*tasks)


def test_the_clusters_minutes_sum_counts_and_weigh_each_relays_samples() -> None:
    now = 600_000.0
    busy, quiet = TrafficStats(lambda: now), TrafficStats(lambda: now)
    for _i in range(2000):  # more than the reservoir keeps: weighted by what it stands for
        busy.record("con", 200, 0.010)
    for _i in range(30):
        quiet.record("con", 503, 1.0)
    minute = merged_hour([busy.export("con"), quiet.export("con")], now)[-1]
    assert minute["requests"] == 2030
    assert minute["errors"] == 30
    assert minute["p50_ms"] == 10.0
    assert minute["p99_ms"] == 1000.0  # 30 of 2,030 took a second: over 1%
    few_slow = TrafficStats(lambda: now)
    for _i in range(10):
        few_slow.record("con", 200, 1.0)
    # 10 slow of 2,010 (0.5%): p99 stays fast, though 10 of the 522 kept samples
    # (1.9%) are slow: each of the busy relay's samples stands for ~4 requests.
    assert merged_hour([busy.export("con"), few_slow.export("con")], now)[-1]["p99_ms"] == 10.0
    # One relay alone: the same minutes as its own last hour.
    assert merged_hour([quiet.export("con")], now) == quiet.last_hour("con")


def test_a_hops_purpose_is_signed() -> None:
    key = SecretBox(MasterKey.generate()).derive("sluice/relay-hop/v1")
    sender, receiver = HopAuth(key, "rly_a"), HopAuth(key, "rly_b")
    plain = sender.sign("GET", "con_1", "/x")
    slot = sender.sign("GET", "con_1", "/x", SLOT)
    assert receiver.check(plain, "GET", "con_1", "/x") == ("rly_a", "")
    assert receiver.check(slot, "GET", "con_1", "/x") == ("rly_a", SLOT)
    # The purpose cannot be swapped or dropped without the key.
    assert receiver.check(slot.rsplit(".", 1)[0], "GET", "con_1", "/x") is None
    assert receiver.check(slot.rsplit(".", 1)[0] + "." + TRAFFIC, "GET", "con_1", "/x") is None
    assert receiver.check(plain + ".bogus", "GET", "con_1", "/x") is None
