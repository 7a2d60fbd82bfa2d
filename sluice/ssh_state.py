"""Sluice's own state beside asyncssh's, shared by the tuned send and
receive paths (``sluice.ssh_tuning``): which tweaks are in place in this
process (``_Applied``), and per connection the packets of the flush under way
and a packet that spans reads (``_ConnState``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection

# Sluice's own per-object state, kept in the instance's __dict__ under these
# names (not as class attributes: nothing is added to asyncssh's classes).
_CONN_STATE: Final = "_sluice_state"
_VIEWS: Final = "_sluice_views"


def channel_classes_where(stock: Callable[[type[SSHChannel[Any]]], bool]) -> frozenset[type]:
    """SSHChannel and each of its subclasses (asyncssh's, or any loaded
    since) for which *stock* holds: the classes a tuned path may take
    over, where they left asyncssh's own method in place."""
    found: set[type] = set()
    todo: list[type[SSHChannel[Any]]] = [SSHChannel]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if stock(cls):
            found.add(cls)
    return frozenset(found)


class _ConnState:
    """Per connection: the packets of the flush under way, and a packet that
    spans reads (what has arrived of it, and the whole packet's length)."""

    __slots__ = ("batch", "need", "pending")

    def __init__(self) -> None:
        self.batch: list[bytes] | None = None
        self.pending: bytearray | None = None
        self.need = 0


def _state(ssh: SSHConnection) -> _ConnState:
    # Annotated, not typing.cast: a cast is a Python call, on every packet.
    state: _ConnState | None = ssh.__dict__.get(_CONN_STATE)
    if state is None:
        state = ssh.__dict__[_CONN_STATE] = _ConnState()
    return state


class _Applied:
    """Which tweaks are in place in this process (each is applied once)."""

    checked: bool | None = None  # None: not yet; False: asyncssh differs, run stock
    names: set[str] = set()
    told = False  # the state was logged
    # asyncssh's channel classes that receive data with SSHChannel's own
    # methods (not the TUN/TAP channel's): their data may be handed on inline.
    plain_channels: frozenset[type] = frozenset()
    # Those that take a window adjust with SSHChannel's own handler.
    adjusting_channels: frozenset[type] = frozenset()
    # Those that send a packet with SSHChannel's own send_packet and log it
    # with asyncssh's own logger method: their window adjusts may be framed
    # here (sluice.ssh_send.send_window_adjust).
    adjust_senders: frozenset[type] = frozenset()
    # The tuned SSHConnection.send_packet (sluice.ssh_send), once in place:
    # a connection class of its own (one that overrides it) sends its top-ups itself.
    tuned_send_packet: Callable[..., None] | None = None
