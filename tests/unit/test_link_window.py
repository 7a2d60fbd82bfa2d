"""The starting window of a tunnel's answers, per connection
(server/tunnel/link_window.py): the larger one only when both round trips
say the link is short; the operator's stream_window always."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from server.tunnel.link_window import answer_window
from sluice import sshconfig
from sluice.send_scheduler import kernel_rtt

SHORT = sshconfig.SHORT_LINK_CHANNEL_WINDOW
USUAL = sshconfig.CHANNEL_WINDOW


@pytest.fixture
def loopback() -> Iterator[socket.socket]:
    """A connected TCP socket on loopback that has carried a round trip."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            client.sendall(b"ping")
            assert peer.recv(4) == b"ping"
            peer.sendall(b"pong")
            assert client.recv(4) == b"pong"
            yield client


class _FarKernel:
    """A socket whose TCP_INFO gives a 50 ms smoothed round trip (tcpi_rtt at 68)."""

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        info = bytearray(size)
        struct.pack_into("=I", info, 68, 50_000)
        return bytes(info)


def test_the_kernel_round_trip_of_a_loopback_socket_is_short(loopback: socket.socket) -> None:
    rtt = kernel_rtt(loopback)
    assert rtt is not None
    assert 0 < rtt < sshconfig.SHORT_LINK_RTT
    assert kernel_rtt(_FarKernel()) == 0.05


def test_a_short_login_on_a_short_socket_gets_the_larger_window(loopback: socket.socket) -> None:
    assert answer_window(None, 0.0005, loopback) == SHORT


def test_a_long_login_keeps_the_usual_window(loopback: socket.socket) -> None:
    """Behind a TCP proxy the kernel sees the proxy; the login sees the link."""
    assert answer_window(None, 0.02, loopback) == USUAL


def test_a_far_kernel_keeps_the_usual_window() -> None:
    """A client that skips the ``none`` login looks near by its login alone."""
    assert answer_window(None, 0.0, _FarKernel()) == USUAL


def test_without_a_socket_or_a_login_time_the_usual_window(loopback: socket.socket) -> None:
    assert answer_window(None, None, loopback) == USUAL
    assert answer_window(None, 0.0005, None) == USUAL
    closed = socket.socket()
    closed.close()
    assert answer_window(None, 0.0005, closed) == USUAL


@pytest.mark.parametrize("configured", [64 * 1024, USUAL, SHORT, 16 * USUAL])
def test_the_operators_stream_window_wins(loopback: socket.socket, configured: int) -> None:
    assert answer_window(configured, 0.0005, loopback) == configured
    assert answer_window(configured, 0.02, _FarKernel()) == configured


def test_a_login_not_timed_keeps_the_usual_window(loopback: socket.socket) -> None:
    """0 is a login that was not timed (``sluice.window_tuning.short_link``'s
    one rule), not one of no time: a near kernel alone says nothing of a link
    behind a TCP proxy."""
    assert answer_window(None, 0.0, loopback) == USUAL
