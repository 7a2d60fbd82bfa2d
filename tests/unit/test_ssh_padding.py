"""The padding pool (``sluice.ssh_padding``, RFC 4253 §6: random padding):
each byte handed out once, across refills, and a forked child draws none of
its parent's next bytes."""

from __future__ import annotations

import os

from sluice.ssh_padding import PADDING, POOL, Padding


def test_pieces_never_overlap_across_refills() -> None:
    pool = Padding()
    pieces: list[bytes] = []
    drawn = 0
    while drawn < 3 * POOL:  # three refills
        size = 4 + len(pieces) % 252  # 4 .. 255, as padding is
        piece = pool.take(size)
        assert len(piece) == size
        pieces.append(piece)
        drawn += size
    # Pieces of 16 random bytes or more never repeat by chance: one that
    # does was handed out twice.
    long = [piece for piece in pieces if len(piece) >= 16]
    assert len(long) > 500
    assert len(set(long)) == len(long), "a padding piece was handed out twice"


def test_a_forked_child_draws_none_of_its_parents_next_bytes() -> None:
    PADDING.take(16)  # the pool is filled: the parent's next bytes are known
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next padding, to the parent, then out
        try:
            os.write(write_end, PADDING.take(255))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        child = b""
        while len(child) < 255 and (chunk := os.read(read_end, 255)):
            child += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    parent = PADDING.take(255)
    assert len(child) == 255
    assert child != parent, "the child sent the same padding as its parent"
