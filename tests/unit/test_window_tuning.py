"""WindowTuner on a simulated link: it grows a window-limited stream toward
the link's round trip worth, stops where more window no longer helps, never
grows on a short round trip, and stays within the per-agent budget."""

from __future__ import annotations

from typing import Any, cast

from asyncssh.channel import SSHChannel

from sluice.window_tuning import WindowBudget, WindowTuner

KiB = 1024
MiB = 1024 * KiB
PACKET = 64 * KiB


class _Chan:
    """The part of an asyncssh channel the tuner uses, with asyncssh's own rule
    for top-ups (more credit once less than half the window is left)."""

    def __init__(self, window: int) -> None:
        self._init_recv_window = window
        self._recv_window = window
        self.granted = 0  # credit sent to the peer since it was last collected

    def send_packet(self, pkttype: int, *args: bytes) -> None:
        self.granted += int.from_bytes(args[0], "big")

    def accept(self, size: int) -> None:
        self._recv_window -= size
        assert self._recv_window >= 0, "the peer sent beyond its credit"
        if self._recv_window < self._init_recv_window / 2:
            self.granted += self._init_recv_window - self._recv_window
            self._recv_window = self._init_recv_window


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(
    rtt: float, rate: float, seconds: float, budget: WindowBudget, base: int = 256 * KiB
) -> tuple[WindowTuner, float]:
    """A sender with endless data on a link of round trip *rtt* that carries at
    most *rate* bytes/s; every round trip it sends what its credit (and the
    link) allow. Returns the tuner and the bytes/s the stream achieved."""
    clock = _Clock()
    chan = _Chan(base)
    tuner = WindowTuner(budget, base, clock=clock)
    credit = base  # the sender's
    moved = 0
    began = clock.now
    while clock.now - began < seconds:
        burst = min(credit, int(rate * rtt))
        credit -= burst
        sent = 0
        while sent < burst:  # arrives as the link carries it
            size = min(PACKET, burst - sent)
            clock.now += size / rate
            chan.accept(size)
            tuner.received(cast(SSHChannel[Any], chan), size)
            sent += size
        moved += burst
        clock.now += max(rtt - burst / rate, 0.0)  # the top-ups' round trip
        credit += chan.granted
        chan.granted = 0
    return tuner, moved / (clock.now - began)


def test_a_window_limited_stream_grows_toward_the_round_trip_and_stops() -> None:
    rtt, rate = 0.05, 100e6  # 5 MB in flight fills the link
    tuner, achieved = _run(rtt, rate, seconds=10, budget=WindowBudget(32 * MiB))
    fixed = 256 * KiB / rtt
    assert achieved > 10 * fixed  # far beyond one starting window per round trip
    assert rate * rtt <= tuner.window <= 2.5 * rate * rtt  # near the link's worth, not the cap


def test_a_short_round_trip_never_grows_the_window() -> None:
    budget = WindowBudget(32 * MiB)
    tuner, _ = _run(rtt=0.0005, rate=500e6, seconds=2, budget=budget)
    assert tuner.window == tuner.base
    assert budget.granted == 0


def test_growth_stays_within_the_budget_and_is_given_back() -> None:
    budget = WindowBudget(2 * MiB)
    first, _ = _run(0.1, 200e6, seconds=5, budget=budget)
    second, _ = _run(0.1, 200e6, seconds=5, budget=budget)
    assert budget.granted == 2 * MiB
    assert (first.window - first.base) + (second.window - second.base) == 2 * MiB
    first.release()
    second.release()
    assert budget.granted == 0
