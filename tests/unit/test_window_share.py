"""Which streams of an agent connection get the shared window, and when.

The decisions alone: WindowShare's resize callback is recorded here. What
the relay then sends on the wire (its window adjusts) is checked by
tests/integration/test_window_share.py.
"""

from __future__ import annotations

from typing import Any, cast

from asyncssh.channel import SSHChannel

from server.tunnel.window_share import BULK_PACKET, RECENT, StreamClass, WindowShare

FULL = 256 * 1024
SHARED = 128 * 1024


def _Chan() -> SSHChannel[Any]:
    # Only passed back to the resize callback: a stand-in, typed as the real thing.
    return cast(SSHChannel[Any], object())


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Windows:
    """The window each channel was last given (FULL when never resized)."""

    def __init__(self) -> None:
        self.given: dict[int, int] = {}

    def __call__(self, chan: SSHChannel[Any], size: int) -> None:
        self.given[id(chan)] = size

    def of(self, chan: SSHChannel[Any]) -> int:
        return self.given.get(id(chan), FULL)


def _setup() -> tuple[WindowShare, _Clock, _Windows]:
    clock, windows = _Clock(), _Windows()
    return WindowShare(FULL, SHARED, clock=clock, resize=windows), clock, windows


def test_a_bulk_stream_alone_keeps_the_whole_window() -> None:
    share, _, windows = _setup()
    bulk, chan = StreamClass(), _Chan()
    for _ in range(3):
        share.received(bulk, chan, 256 * 1024)
    assert windows.given == {id(chan): FULL}


def test_small_answers_on_another_stream_shrink_it_until_they_stop() -> None:
    share, clock, windows = _setup()
    bulk, chan = StreamClass(), _Chan()
    small, small_chan = StreamClass(), _Chan()
    share.received(bulk, chan, 256 * 1024)
    share.received(small, small_chan, 300)
    share.received(bulk, chan, 64 * 1024)
    assert windows.of(chan) == SHARED
    assert id(small_chan) not in windows.given  # small streams are never touched
    clock.now += RECENT / 2
    share.received(bulk, chan, 96 * 1024)
    assert windows.of(chan) == SHARED
    clock.now += RECENT * 2  # no small answer since
    share.received(bulk, chan, 96 * 1024)
    assert windows.of(chan) == FULL


def test_the_tail_of_a_bulk_answer_is_not_small_traffic() -> None:
    share, clock, windows = _setup()
    bulk, chan = StreamClass(), _Chan()
    other, other_chan = StreamClass(), _Chan()
    share.received(bulk, chan, 256 * 1024)
    share.received(bulk, chan, 1000)  # its own last, short packet
    share.received(other, other_chan, BULK_PACKET)
    assert windows.of(other_chan) == FULL
    clock.now += RECENT * 2
    share.received(bulk, chan, 1000)  # a later small answer on that stream counts
    share.received(other, other_chan, BULK_PACKET)
    assert windows.of(other_chan) == SHARED


def test_a_stream_does_not_shrink_its_own_window() -> None:
    share, _, windows = _setup()
    stream, chan = StreamClass(), _Chan()
    share.received(stream, chan, 500)
    share.received(stream, chan, 200 * 1024)
    assert windows.of(chan) == FULL
