"""The agent's receive window for request bodies, per tunnel
(agent/tunnel.stream_window): the larger one only when both round trips say
the link is short."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from agent.tunnel import stream_window
from sluice import sshconfig

SHORT = sshconfig.SHORT_LINK_CHANNEL_WINDOW
USUAL = sshconfig.AGENT_RECEIVE_WINDOW


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


def test_a_quick_ready_signal_on_a_short_socket_gets_the_larger_window(
    loopback: socket.socket,
) -> None:
    assert stream_window(0.0005, loopback) == SHORT


def test_a_slow_ready_signal_keeps_the_usual_window(loopback: socket.socket) -> None:
    """Behind a TCP proxy the kernel sees the proxy; the signal sees the link."""
    assert stream_window(0.02, loopback) == USUAL


def test_a_far_kernel_keeps_the_usual_window() -> None:
    assert stream_window(0.0005, _FarKernel()) == USUAL


def test_without_a_socket_or_a_signal_time_the_usual_window(loopback: socket.socket) -> None:
    assert stream_window(None, loopback) == USUAL
    assert stream_window(0.0005, None) == USUAL
