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
    # No 8 random bytes repeat by chance (some 200,000 windows of 2**64):
    # a window seen twice is a byte handed out twice, whole piece or part.
    windows: set[bytes] = set()
    count = 0
    for piece in pieces:
        for start in range(len(piece) - 7):
            windows.add(piece[start : start + 8])
            count += 1
    assert count > 100_000
    assert len(windows) == count, "padding bytes were handed out twice"


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
