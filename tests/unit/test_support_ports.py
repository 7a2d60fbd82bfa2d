"""The tests' own port picker: two workers never share a port, and none
comes from the range the kernel gives outgoing connections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

_PICK = (
    "from tests.support.ports import free_port, free_ports\n"
    "print(*[free_port() for _ in range(25)], end=' ')\n"
    "pair = free_ports(2)\n"
    "print(*[free_port() for _ in range(25)], pair)\n"
)


def _picks(worker: str) -> list[int]:
    env = dict(os.environ, PYTEST_XDIST_WORKER=worker)
    out = subprocess.run(
        [sys.executable, "-c", _PICK],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return [int(port) for port in out.stdout.split()]


def test_two_workers_take_ports_from_blocks_apart_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first, second = _picks("gw0"), _picks("gw1")
    # Each worker's from a block of 2,000 of its own (gw0 the second, gw1
    # the third: the first is for a run without workers).
    assert {(port - 10000) // 2000 for port in first} == {1}, first
    assert {(port - 10000) // 2000 for port in second} == {2}, second
    assert max(first + second) + 1 < low
    # Never the same port twice, nor the second of a pair handed out again.
    pair = first[-1]
    assert len(set(first[:-1])) == len(first) - 1
    assert pair not in first[:-1]
    assert pair + 1 not in first[:-1]
