"""sluice.systemd against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sluice import systemd

pytestmark = pytest.mark.timeout(10)

RECV_TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test run itself may sit under systemd (a CI runner service).
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket in a fresh directory, named by $NOTIFY_SOCKET."""
    # A short directory: AF_UNIX paths are limited to 108 bytes, and pytest's
    # tmp_path grows with the test name.
    directory = Path(tempfile.mkdtemp(prefix="sluice-notify-"))
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(RECV_TIMEOUT)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(directory)


@pytest.fixture
def abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"sluice-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(RECV_TIMEOUT)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        yield sock
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


async def arecv(sock: socket.socket) -> str:
    """The next datagram, awaited on the event loop (the sender runs on it too)."""
    sock.setblocking(False)
    async with asyncio.timeout(RECV_TIMEOUT):
        data = await asyncio.get_running_loop().sock_recv(sock, 4096)
    return data.decode()


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda: systemd.ready(), "READY=1"),
        (
            lambda: systemd.ready("tunnel up to relay.example:2222"),
            "READY=1\nSTATUS=tunnel up to relay.example:2222",
        ),
        (lambda: systemd.status("backing off 4.0 s"), "STATUS=backing off 4.0 s"),
        (lambda: systemd.stopping(), "STOPPING=1"),
        (lambda: systemd.stopping("draining 3 streams"), "STOPPING=1\nSTATUS=draining 3 streams"),
        (lambda: systemd.notify("WATCHDOG=1"), "WATCHDOG=1"),
        (lambda: systemd.extend_timeout(1.5), "EXTEND_TIMEOUT_USEC=1500000"),
        (
            lambda: systemd.notify("READY=1", "STATUS=ok", "MAINPID=1"),
            "READY=1\nSTATUS=ok\nMAINPID=1",
        ),
    ],
)
def test_messages_arrive_as_sent(
    notify_socket: socket.socket, send: Callable[[], bool], expected: str
) -> None:
    assert send() is True
    assert recv(notify_socket) == expected


def test_abstract_socket(abstract_notify_socket: socket.socket) -> None:
    assert systemd.ready("listening") is True
    assert recv(abstract_notify_socket) == "READY=1\nSTATUS=listening"


def test_status_text_is_kept_on_one_line(notify_socket: socket.socket) -> None:
    # A newline would let text (say, an error message from a peer) inject
    # another assignment such as READY=1 or MAINPID=.
    assert systemd.status("relay refused\nREADY=1") is True
    assert recv(notify_socket) == "STATUS=relay refused READY=1"


def test_notify_rejects_malformed_lines(notify_socket: socket.socket) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        systemd.notify("STATUS=a\nREADY=1")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        systemd.notify("READY")
    with pytest.raises(ValueError, match="at least one"):
        systemd.notify()


def test_unset_socket_is_a_no_op() -> None:
    assert systemd.ready() is False
    assert systemd.status("x") is False
    assert systemd.stopping() is False
    assert systemd.notify("WATCHDOG=1") is False


def test_empty_socket_variable_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.ready() is False


def test_unreachable_socket_returns_false_and_logs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with capture_logs() as logs:
        assert systemd.ready() is False
    assert [e["event"] for e in logs] == ["notify_failed"]


def test_unsupported_address_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with capture_logs() as logs:
        assert systemd.ready() is False
    assert [e["event"] for e in logs] == ["notify_socket_unsupported"]


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    # Inherited from a parent that systemd watches: not ours to answer.
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", "nonsense")
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert systemd.watchdog_interval() is None


async def test_watchdog_loop_pings_until_stopped(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # 20 ms: a ping every 10 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    stop = asyncio.Event()
    task = asyncio.create_task(systemd.watchdog_loop(stop, lambda: True))
    for _ in range(3):
        assert await arecv(notify_socket) == "WATCHDOG=1"
    stop.set()
    async with asyncio.timeout(RECV_TIMEOUT):
        await task


async def test_watchdog_loop_withholds_pings_while_unhealthy(
    notify_socket: socket.socket,
) -> None:
    calls = 0

    def healthy() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(systemd.watchdog_loop(stop, healthy, interval=0.02))
        assert await arecv(notify_socket) == "WATCHDOG=1"
        # The first ping can only come from the fourth check: none was sent
        # while healthy() said no.
        assert calls >= 4
        stop.set()
        async with asyncio.timeout(RECV_TIMEOUT):
            await task
    events = [e["event"] for e in logs]
    assert events[:2] == ["watchdog_ping_withheld", "watchdog_ping_resumed"]


async def test_watchdog_loop_survives_a_failing_health_check(
    notify_socket: socket.socket,
) -> None:
    calls = 0

    def healthy() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("supervisor state unreadable")
        return True

    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(systemd.watchdog_loop(stop, healthy, interval=0.02))
        assert await arecv(notify_socket) == "WATCHDOG=1"
        assert calls >= 2
        stop.set()
        async with asyncio.timeout(RECV_TIMEOUT):
            await task
    assert logs[0]["event"] == "watchdog_health_check_failed"


async def test_watchdog_loop_returns_at_once_without_a_watchdog(
    notify_socket: socket.socket,
) -> None:
    stop = asyncio.Event()  # never set: the loop must not need it
    async with asyncio.timeout(RECV_TIMEOUT):
        await systemd.watchdog_loop(stop, lambda: True)
    notify_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)


async def test_watchdog_loop_stops_promptly_mid_interval(
    notify_socket: socket.socket,
) -> None:
    # A long interval: the loop must wake on the event, not wait it out.
    stop = asyncio.Event()
    task = asyncio.create_task(systemd.watchdog_loop(stop, lambda: True, interval=3600))
    assert await arecv(notify_socket) == "WATCHDOG=1"
    stop.set()
    async with asyncio.timeout(RECV_TIMEOUT):
        await task


async def test_watchdog_loop_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        await systemd.watchdog_loop(asyncio.Event(), lambda: True, interval=0)
