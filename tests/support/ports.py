"""Ports for servers the tests start as processes of their own (which must be
told a port, not bind port 0 and say which).

Taken below the kernel's ephemeral range, where no outgoing connection's
source port lands, and from a block of their own per test worker
(pytest-xdist's ``PYTEST_XDIST_WORKER``), so that two workers never hand out
the same port between the check here and the server's bind.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

_FIRST = 10000
_BLOCK = 2000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", …; unset alone
    digits = worker.removeprefix("gw")
    return int(digits) + 1 if digits.isdigit() else 0


def _block_start() -> int:
    low, worker = _ephemeral_low(), _worker_index()
    start = _FIRST + worker * _BLOCK
    if start + _BLOCK > low:
        raise AssertionError(
            f"no block of {_BLOCK} ports below the ephemeral range ({low} and up) "
            f"for test worker {worker}: run fewer workers or lower "
            "/proc/sys/net/ipv4/ip_local_port_range's start"
        )
    return start


_START = _block_start()
# Begun at a different place each run: ports a killed run's servers still
# hold are not the first ones tried.
_OFFSET = os.getpid() % _BLOCK
_next = itertools.cycle([_START + (_OFFSET + i) % _BLOCK for i in range(_BLOCK)])


def _free(*ports: int) -> bool:
    sockets = [socket.socket() for _ in ports]
    try:
        for sock, port in zip(sockets, ports, strict=True):
            sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()
    return True


def free_port() -> int:
    """A port nothing on 127.0.0.1 holds now, from this worker's own block."""
    return free_ports(1)


def free_ports(count: int) -> int:
    """The first of *count* consecutive ports free now (a cluster's SSH ports)."""
    for _ in range(_BLOCK):
        port = next(_next)
        if port + count <= _START + _BLOCK and _free(*range(port, port + count)):
            for _ in range(count - 1):  # the rest of the run is handed out too
                next(_next)
            return port
    raise AssertionError(f"no {count} consecutive free ports in this worker's block")
