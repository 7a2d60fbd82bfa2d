"""Tweaks to asyncssh's hot path, kept in one place and applied explicitly
(``tune_asyncssh()``, idempotent).

Where each part lives: the send path (IGNORE packets, one write per channel
flush, framing channel data, quiet writes) in ``sluice.ssh_send``; sending a
bulk read as it landed in ``sluice.ssh_framed``; the receive path in
``sluice.ssh_receive``; AES-GCM keys and reused buffers in ``sluice.ssh_gcm``;
the state they share in ``sluice.ssh_state``. This module applies them.

Per packet, less of asyncssh's own work: ``quiet_channel_writes`` drops
``SSHChannel.write``'s debug call and cast (it logs nothing below debug
level 2); the receive path hands channel data to the session inline where
``_accept_data``/``_deliver_data`` would only count it and pass it on, and
both paths count the GCM invocation inline; ``lazy_keepalive``
(``sluice.ssh_keepalive``) notes a read's time instead of making a new
keepalive timer; the padding of the packets framed by ``sluice.ssh_send`` and
``sluice.ssh_framed`` is cut from a pool of random bytes (``sluice.ssh_padding``),
not one ``getrandom`` a packet.

A short sender's queue: ``sluice.send_scheduler`` (its own module; installed
here, after the others, unless ``SLUICE_SEND_SCHEDULER=off``) interleaves
the channels' packets and keeps the transport's and the kernel's queues
short, so a small answer does not wait behind a download's window.

One write per loop turn: ``sluice.send_coalescing`` (installed here too,
unless ``SLUICE_SEND_COALESCING=off``) holds the batches of the channel
flushes of one event-loop turn and writes them together as the turn ends;
any other packet writes what is held first.

Safety: nothing is patched on import. ``tune_asyncssh()`` (called when the
relay starts listening and when the agent opens a tunnel) first checks that
asyncssh still has the shape the tweaks were written for
(``sluice.ssh_shape``; pyproject.toml pins that release); if not, it logs one
warning and leaves asyncssh stock. ``SLUICE_SSH_TUNING=off`` in the
environment leaves it stock too. The patches are typed with asyncssh's own
classes, so mypy sees a renamed attribute.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog
from asyncssh.channel import SSHChannel

from sluice import send_coalescing, send_scheduler, ssh_keepalive, ssh_shape
from sluice.ssh_gcm import _patch_gcm
from sluice.ssh_receive import _patch_data_received
from sluice.ssh_send import _patch_flush, _patch_send_packet, _patch_write
from sluice.ssh_state import _VIEWS, _Applied
from sluice.switches import switched_on

# The environment variable that turns the tweaks off ("off", "0", "false", "no").
SWITCH: Final = "SLUICE_SSH_TUNING"

# The tweaks in place: ``APPLIED.names`` is empty while they are not (a
# test without a call, for paths that run per packet; else ``applied()``).
APPLIED: Final = _Applied


def tuning_enabled(environ: Mapping[str, str]) -> bool:
    """Whether SLUICE_SSH_TUNING in *environ* leaves the tweaks on (the default)."""
    return switched_on(environ, SWITCH)


def _shape_ok() -> bool:
    """Check asyncssh once per process; log one warning if the tweaks do not fit it."""
    if _Applied.checked is None:
        found = ssh_shape.mismatches()
        _Applied.checked = not found
        if found:
            structlog.get_logger("sluice.ssh_tuning").warning(
                "asyncssh differs from what the SSH tweaks were written for; running it stock",
                asyncssh_version=ssh_shape.installed_version(),
                tuned_for=ssh_shape.TUNED_FOR,
                differences=found[:5],
            )
    return _Applied.checked


def _apply(name: str, patch: Callable[[], None]) -> None:
    if name not in _Applied.names and _shape_ok():
        patch()
        _Applied.names.add(name)


def applied() -> frozenset[str]:
    """The tweaks in place in this process."""
    return frozenset(_Applied.names)


def skip_aead_ignore_packets() -> None:
    """Patch asyncssh (once) to drop its automatic IGNORE packets under AEAD."""
    _apply("skip_aead_ignore_packets", _patch_send_packet)


def batch_channel_writes() -> None:
    """Patch asyncssh (once): the packets of one channel flush go out in
    one write, and channel data under AES-GCM is framed with two copies, not a dozen."""
    _apply("batch_channel_writes", _patch_flush)


def quiet_channel_writes() -> None:
    """Patch asyncssh (once): ``SSHChannel.write`` of bytes without its debug
    log call and its cast (three Python calls a write), while asyncssh's
    debug level is below 2, where that call logs nothing."""
    _apply("quiet_channel_writes", _patch_write)


def lazy_keepalive() -> None:
    """Patch asyncssh (once): a read notes its time instead of making a new
    keepalive timer (``sluice.ssh_keepalive``)."""
    _apply("lazy_keepalive", ssh_keepalive.install)


def reuse_gcm_keys() -> None:
    """Patch asyncssh (once): one AESGCM object per cipher, not per packet."""
    _apply("reuse_gcm_keys", _patch_gcm)


def feed_in_pieces() -> None:
    """Patch asyncssh (once): plain channel data under AES-GCM is taken
    straight from a read (see ``_take_data_packets``); any other packet goes to
    asyncssh on its own, and the reads after it are taken again. Without
    AES-GCM keys in place (a key exchange, another cipher) asyncssh parses a
    large read 32 KiB at a time."""
    _apply("feed_in_pieces", _patch_data_received)


def schedule_sends(environ: Mapping[str, str]) -> None:
    """Install the send scheduler (``sluice.send_scheduler``; once, after
    ``batch_channel_writes``, whose flush it wraps) unless
    SLUICE_SEND_SCHEDULER in *environ* is off."""
    if send_scheduler.high_water(environ):
        _apply("send_scheduler", lambda: send_scheduler.install(environ))


def coalesce_sends(environ: Mapping[str, str]) -> None:
    """Allow ``sluice.send_coalescing`` (after ``batch_channel_writes``, whose
    batches it holds) unless SLUICE_SEND_COALESCING in *environ* is off."""
    if send_coalescing.enabled(environ):
        _apply("send_coalescing", lambda: send_coalescing.install(environ))


def tune_asyncssh(environ: Mapping[str, str] | None = None) -> bool:
    """Apply every tweak above, once per process, unless SLUICE_SSH_TUNING is
    off in *environ* (default: the process's) or asyncssh differs from what
    they were written for (then one warning is logged); the send scheduler
    too, unless SLUICE_SEND_SCHEDULER is off, and the write coalescing, unless
    SLUICE_SEND_COALESCING is off. Returns whether the tweaks are in place."""
    env = os.environ if environ is None else environ
    enabled = tuning_enabled(env)
    if enabled:
        skip_aead_ignore_packets()
        feed_in_pieces()
        batch_channel_writes()
        reuse_gcm_keys()
        quiet_channel_writes()
        lazy_keepalive()
        schedule_sends(env)
        coalesce_sends(env)
    if not _Applied.told:
        _Applied.told = True
        structlog.get_logger("sluice.ssh_tuning").info(
            "ssh_tuning",
            state="on" if _Applied.names else ("off" if not enabled else "stock"),
            send_scheduler="on" if send_scheduler.installed() else "off",
            send_coalescing="on" if send_coalescing.installed() else "off",
            asyncssh_version=ssh_shape.installed_version(),
        )
    return bool(_Applied.names)


def deliver_views(chan: SSHChannel[Any]) -> None:
    """Let *chan*'s session receive channel data as memoryviews.

    Under AES-GCM, with the tweaks in place, such a channel's data arrives as
    a view into the packet just decrypted (a bulk packet's buffer is reused
    once no view of it is left), saving one copy of every packet; its
    session must take any bytes-like object: write it on, join it, slice it,
    keep it, but not call bytes methods such as ``decode`` or ``startswith``
    on it, nor ``release()`` a view it handed on (a transport may keep that
    very object). Call it from the session's ``connection_made``. (Little
    data, up to ``ssh_receive._COPIED_MOST`` bytes a packet, comes as bytes
    of its own all the same: copying it costs less than a view.)"""
    chan.__dict__[_VIEWS] = True


def channel_write_copies() -> bool:
    """Whether ``SSHChannel.write`` copies its data before it returns (the
    tweaks are on, so asyncssh passed ``sluice.ssh_shape``'s check of that):
    then a caller may write from a buffer it reuses for its next read."""
    return bool(_Applied.names)


def channel_write_takes_any() -> bool:
    """Whether ``SSHChannel.write`` is ``sluice.ssh_send``'s: on an open
    channel it takes any bytes-like data (copying what may change while it
    waits) and does nothing with empty data, as an asyncio transport's
    ``write`` does."""
    return "quiet_channel_writes" in _Applied.names


def send_window(chan: SSHChannel[Any]) -> int | None:
    """How many bytes *chan* may send now (what the peer's window has left),
    or None with the tweaks off."""
    return chan._send_window if _Applied.names else None


def windows_adjustable() -> bool:
    """Whether Sluice may size and top up channel receive windows itself
    (``sluice.window_tuning``, the relay's window sharing), which reads and
    writes asyncssh's private window fields: only with the tweaks in place
    (their shape check covers those fields). Otherwise asyncssh's own fixed
    windows."""
    return bool(_Applied.names)


def set_receive_window(chan: SSHChannel[Any], size: int) -> None:
    """Make *size* bytes the receive window *chan* tops up to from now on.

    asyncssh grants more window once less than half of it is left, up to the
    size given when the channel opened; a smaller size takes effect as the
    peer uses up what it holds, a larger one at the next packet received.
    """
    chan._init_recv_window = size
