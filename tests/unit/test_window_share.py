"""Which streams of an agent connection get the shared window, and when."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from asyncssh.channel import SSHChannel

from server.tunnel.window_share import BULK_PACKET, RECENT, StreamClass, WindowShare

FULL = 256 * 1024
SHARED = 128 * 1024


@dataclass
class _FakeChan:
    _init_recv_window: int = FULL  # the attribute asyncssh tops the window up to


def _Chan() -> SSHChannel[Any]:
    # Only the window attribute is read and set: a stand-in, typed as the real thing.
    return cast(SSHChannel[Any], _FakeChan())


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _setup() -> tuple[WindowShare, _Clock]:
    clock = _Clock()
    return WindowShare(FULL, SHARED, clock=clock), clock


def test_a_bulk_stream_alone_keeps_the_whole_window() -> None:
    share, _ = _setup()
    bulk, chan = StreamClass(), _Chan()
    for _ in range(3):
        share.received(bulk, chan, 256 * 1024)
    assert chan._init_recv_window == FULL


def test_small_answers_on_another_stream_shrink_it_until_they_stop() -> None:
    share, clock = _setup()
    bulk, chan = StreamClass(), _Chan()
    small, small_chan = StreamClass(), _Chan()
    share.received(bulk, chan, 256 * 1024)
    share.received(small, small_chan, 300)
    share.received(bulk, chan, 64 * 1024)
    assert chan._init_recv_window == SHARED
    assert small_chan._init_recv_window == FULL  # small streams are never touched
    clock.now += RECENT / 2
    share.received(bulk, chan, 96 * 1024)
    assert chan._init_recv_window == SHARED
    clock.now += RECENT * 2  # no small answer since
    share.received(bulk, chan, 96 * 1024)
    assert chan._init_recv_window == FULL


def test_the_tail_of_a_bulk_answer_is_not_small_traffic() -> None:
    share, clock = _setup()
    bulk, chan = StreamClass(), _Chan()
    other, other_chan = StreamClass(), _Chan()
    share.received(bulk, chan, 256 * 1024)
    share.received(bulk, chan, 1000)  # its own last, short packet
    share.received(other, other_chan, BULK_PACKET)
    assert other_chan._init_recv_window == FULL
    clock.now += RECENT * 2
    share.received(bulk, chan, 1000)  # a later small answer on that stream counts
    share.received(other, other_chan, BULK_PACKET)
    assert other_chan._init_recv_window == SHARED


def test_a_stream_does_not_shrink_its_own_window() -> None:
    share, _ = _setup()
    stream, chan = StreamClass(), _Chan()
    share.received(stream, chan, 500)
    share.received(stream, chan, 200 * 1024)
    assert chan._init_recv_window == FULL
