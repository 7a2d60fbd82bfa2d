"""Random padding for SSH packets without a system call per packet (``sluice.ssh_tuning``).

RFC 4253 §6: every packet carries 4 to 255 bytes of padding that "SHOULD
consist of random bytes". asyncssh calls ``os.urandom`` for each packet: a
``getrandom`` system call per packet, on every request of a busy tunnel.
OpenSSH draws its padding from ``arc4random_buf``, a generator in user space
reseeded rarely. Here the padding is cut from a pool of ``os.urandom``
bytes, each used once, refilled when used up (one system call per
``POOL`` bytes: some 5,000 packets), and refilled in a forked child, so no
two processes send the same bytes. Under the AEAD ciphers the tuned path
runs (AES-GCM, RFC 5647) the padding is encrypted and authenticated like
the payload: its content carries no weight, only its length does.
"""

from __future__ import annotations

import os
from typing import Final

POOL: Final = 64 * 1024


class Padding:
    """The process's pool: ``data[pos:]`` is not used yet.

    Hot paths cut from it inline (``end = pos + n``; if ``end > POOL``:
    ``refill()``), since a method call costs about what it saves."""

    __slots__ = ("data", "pos")

    def __init__(self) -> None:
        self.data = b""
        self.pos = POOL  # filled at the first use

    def refill(self) -> None:
        """Fresh bytes: the pool is used up."""
        self.data = os.urandom(POOL)
        self.pos = 0

    def forget(self) -> None:
        """Drop what is left (a forked child: those bytes are its parent's)."""
        self.data = b""
        self.pos = POOL

    def take(self, size: int) -> bytes:
        """*size* random bytes (at most 255), each handed out once."""
        end = self.pos + size
        if end > POOL:
            self.refill()
            end = size
        piece = self.data[end - size : end]
        self.pos = end
        return piece


PADDING: Final = Padding()
# A forked child (a relay worker) must not send its parent's next bytes.
os.register_at_fork(after_in_child=PADDING.forget)
