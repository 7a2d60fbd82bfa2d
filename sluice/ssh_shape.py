"""What ``sluice.ssh_tuning`` expects of asyncssh's internals, checked before it patches.

The tweaks (and ``sluice.send_scheduler``) replace private asyncssh methods
and read private attributes. pyproject.toml pins the release they were
written for (``TUNED_FOR``); this check is the second guard, for an
environment that installed another one anyway (a distribution package, a
forced upgrade): every method the tweaks replace or call must exist with the
parameters they expect, and every attribute they read must still be
assigned somewhere in its class. If anything differs, asyncssh runs stock.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from importlib import metadata
from typing import Final

from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import GCMEncryption
from asyncssh.logging import SSHLogger

# The asyncssh release the tweaks were written and tested against.
TUNED_FOR = "2.24.1"

# (class, method): its parameter names, as the tweaks call or replace it.
METHODS: dict[tuple[type, str], tuple[str, ...]] = {
    (SSHConnection, "send_packet"): ("self", "pkttype", "args", "handler"),
    (SSHConnection, "_send"): ("self", "data"),
    (SSHConnection, "data_received"): ("self", "data", "datatype"),
    (SSHConnection, "_reset_keepalive_timer"): ("self",),
    # ssh_keepalive: the timer set, and what it runs when it fires.
    (SSHConnection, "_set_keepalive_timer"): ("self",),
    (SSHConnection, "_keepalive_timer_callback"): ("self",),
    (SSHConnection, "_recv_pkthdr"): ("self",),
    # ssh_receive: how asyncssh's _recv_data ends a connection on an error.
    (SSHConnection, "_send_disconnect"): ("self", "code", "reason", "lang"),
    (SSHConnection, "_force_close"): ("self", "exc"),
    (SSHConnection, "internal_error"): ("self", "exc_info", "error_logger"),
    (SSHChannel, "_flush_send_buf"): ("self",),
    (SSHChannel, "_accept_data"): ("self", "data", "datatype"),
    # ssh_receive takes window adjusts as this handler does.
    (SSHChannel, "_process_window_adjust"): ("self", "_pkttype", "_pktid", "packet"),
    (SSHChannel, "_deliver_data"): ("self", "data", "datatype"),
    (SSHChannel, "write"): ("self", "data", "datatype"),
    (SSHChannel, "send_packet"): ("self", "pkttype", "args"),  # window_tuning's top-ups
    # send_scheduler: the transport's pause/resume (stock: no-ops it wraps),
    # and the channel's backpressure on its session while it waits a turn.
    (SSHConnection, "pause_writing"): ("self",),
    (SSHConnection, "resume_writing"): ("self",),
    (SSHChannel, "_pause_resume_writing"): ("self",),
    (GCMCipher, "__init__"): ("self", "cipher_name", "key", "iv"),
    (GCMCipher, "_update_iv"): ("self",),
    (GCMCipher, "encrypt_and_sign"): ("self", "header", "data"),
    (GCMEncryption, "__init__"): ("self", "cipher"),
    (GCMEncryption, "decrypt_packet"): ("self", "seq", "first", "rest", "header_len", "mac"),
}

# Instance attributes the tweaks read or write, per class (assigned in its code).
ATTRIBUTES: dict[type, tuple[str, ...]] = {
    SSHConnection: (
        "_transport",
        "_inpbuf",
        "_send_encryption",
        "_send_enchdrlen",
        "_send_blocksize",
        "_compressor",
        "_recv_encryption",
        "_decompressor",
        "_recv_handler",
        "_kex_complete",
        "_auth_complete",
        "_send_seq",
        "_recv_seq",
        "_rekey_bytes",
        "_rekey_bytes_sent",
        "_rekey_seconds",
        "_rekey_time",
        "_channels",
        "_max_recv_pktlen",
        "_keepalive_timer",
        "_keepalive_interval",
        "_loop",
    ),
    SSHChannel: (
        "_conn",
        "_send_chan",
        "_send_buf",
        "_send_buf_len",
        "_send_window",
        "_send_pktsize",
        "_send_state",
        "_recv_state",
        "_recv_window",
        "_init_recv_window",
        "_recv_buf",
        "_recv_paused",
        "_send_paused",
        "_encoding",
        "_session",
    ),
    GCMCipher: ("_key", "_iv"),
    GCMEncryption: ("_cipher",),
}


# What SSHChannel.write copies its data into before it returns.
WRITE_COPIES_WITH = "bytearray"


def _code_names(cls: type) -> set[str]:
    """Every name the functions of *cls* (and its bases) use, nested code included."""
    names: set[str] = set()

    def walk(code: types.CodeType) -> Iterator[types.CodeType]:
        yield code
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                yield from walk(const)

    for klass in cls.__mro__:
        for value in vars(klass).values():
            func = value.__func__ if isinstance(value, classmethod | staticmethod) else value
            if isinstance(func, property):
                func = func.fget
            code = getattr(func, "__code__", None)
            if isinstance(code, types.CodeType):
                for each in walk(code):
                    names.update(each.co_names)
    return names


def mismatches() -> list[str]:
    """What differs from the asyncssh the tweaks expect; empty when all matches."""
    found: list[str] = []
    for (cls, name), expected in METHODS.items():
        method = vars(cls).get(name)
        if method is None or not callable(method):
            found.append(f"{cls.__name__}.{name} is missing")
            continue
        try:
            params = tuple(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            params = ()
        if params != expected:
            found.append(f"{cls.__name__}.{name}{params} is not {name}{expected}")
    for cls, attributes in ATTRIBUTES.items():
        names = _code_names(cls)
        found.extend(
            f"{cls.__name__}.{attr} is never set" for attr in attributes if attr not in names
        )
    if not isinstance(getattr(SSHLogger, "_debug_level", None), int):
        found.append("SSHLogger._debug_level is gone")  # ssh_send's quiet writes read it
    if not _counts_nonce_as_inlined():
        # ssh_send and ssh_receive advance the nonce inline, per packet.
        found.append("GCMCipher._update_iv counts the nonce otherwise")
    if WRITE_COPIES_WITH not in SSHChannel.write.__code__.co_names:
        # sluice.ssh_tuning.channel_write_copies: the agent reuses its read buffer.
        found.append(f"SSHChannel.write no longer copies its data into a {WRITE_COPIES_WITH}")
    return found


# GCMCipher._update_iv as the tuned paths copy it inline (RFC 5647 §7.1: the
# last 8 bytes of the nonce, a big-endian invocation counter, plus one):
# nonces before and after.
_NONCE_STEPS: Final = (
    (bytes.fromhex("0102030400000000000000ff"), bytes.fromhex("010203040000000000000100")),
    (bytes.fromhex("a1b2c3d4ffffffffffffffff"), bytes.fromhex("a1b2c3d40000000000000000")),
)


def _counts_nonce_as_inlined() -> bool:
    """Whether asyncssh's ``GCMCipher._update_iv`` still advances the nonce as
    the inline copies in ``sluice.ssh_send`` and ``sluice.ssh_receive`` do."""
    probe = object.__new__(GCMCipher)
    try:
        for before, after in _NONCE_STEPS:
            probe._iv = before
            probe._update_iv()
            if probe._iv != after:
                return False
    except Exception:  # any failure of asyncssh's own: it differs
        return False
    return True


def installed_version() -> str:
    """asyncssh's version as installed (or 'unknown')."""
    try:
        return metadata.version("asyncssh")
    except metadata.PackageNotFoundError:
        return "unknown"
