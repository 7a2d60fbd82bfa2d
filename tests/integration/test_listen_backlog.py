"""A burst of connections arriving while the relay's loop is busy is queued
by the kernel, not dropped: the listeners' backlogs hold hundreds of callers
or reconnecting agents (a dropped SYN costs its client a 1 s retransmission)."""

from __future__ import annotations

import select
import socket
import threading
import time

from server.relay import Relay

BURST = 400  # above the libraries' default backlogs (asyncssh 100, aiohttp 128)


def _connect_burst(host: str, port: int, count: int, within: float) -> int:
    """Start *count* connects at once; how many the kernel completed within
    *within* seconds (a SYN dropped for a full accept queue waits 1 s)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex((host, port))
        pending = {sock.fileno(): sock for sock in socks}
        done = 0
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        deadline = time.monotonic() + within
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                sock = pending.pop(fd)
                poller.unregister(fd)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done += 1
        return done
    finally:
        for sock in socks:
            sock.close()


def _burst_while_the_loop_is_blocked(host: str, port: int) -> int:
    result: list[int] = []
    finished = threading.Event()

    def run() -> None:
        try:
            result.append(_connect_burst(host, port, BURST, within=0.6))
        finally:
            finished.set()

    threading.Thread(target=run, daemon=True).start()
    # Block the relay's loop (this test shares it) until the burst is over:
    # nothing is accepted meanwhile, so the backlog alone must hold it.
    assert finished.wait(30)
    return result[0]


async def test_a_burst_of_callers_is_queued_not_dropped(relay: Relay) -> None:
    host, port = relay.http_address
    assert _burst_while_the_loop_is_blocked(host, port) == BURST


async def test_a_burst_of_agents_is_queued_not_dropped(relay: Relay) -> None:
    host, port = relay.ssh_address
    assert _burst_while_the_loop_is_blocked(host, port) == BURST
