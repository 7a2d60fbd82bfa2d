"""What a relay sends an agent on one tunnel, recorded at asyncssh's
``send_packet`` (the packets as they go to the wire, before encryption)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asyncssh.constants import MSG_CHANNEL_OPEN, MSG_CHANNEL_WINDOW_ADJUST

T = TypeVar("T")


def _record(tunnel: Any, pkttype: int, parse: Callable[[bytes], T]) -> list[T]:
    """*parse* of every *pkttype* packet's payload the relay sends on *tunnel*
    from now on, in a list that grows as they go."""
    got: list[T] = []
    send_packet = tunnel.ssh.send_packet

    def recording(kind: int, *args: bytes, handler: Any = None) -> None:
        if kind == pkttype:
            got.append(parse(b"".join(args)))
        send_packet(kind, *args, handler=handler)

    tunnel.ssh.send_packet = recording
    return got


def _uint32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big")


def window_adjusts(tunnel: Any) -> list[tuple[int, int]]:
    """Every window adjust the relay sends on *tunnel*: (agent's channel, bytes)."""
    return _record(tunnel, MSG_CHANNEL_WINDOW_ADJUST, lambda p: (_uint32(p, 0), _uint32(p, 4)))


def window_adjusts_at(tunnel: Any, probe: Callable[[], T]) -> list[tuple[int, int, T]]:
    """Every window adjust the relay sends on *tunnel*: (agent's channel,
    bytes, *probe()* as it is sent), e.g. the bytes the link had carried to
    the relay by then."""
    return _record(
        tunnel,
        MSG_CHANNEL_WINDOW_ADJUST,
        lambda p: (_uint32(p, 0), _uint32(p, 4), probe()),
    )


def channel_open_windows(tunnel: Any) -> list[int]:
    """The initial window of every channel the relay opens on *tunnel*
    (CHANNEL_OPEN: string type, uint32 sender channel, uint32 window, ...)."""
    return _record(tunnel, MSG_CHANNEL_OPEN, lambda p: _uint32(p, 4 + _uint32(p, 0) + 4))
