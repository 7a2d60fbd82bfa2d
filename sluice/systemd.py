"""The systemd notify protocol (``sd_notify``), without libsystemd.

A service started with ``Type=notify`` finds a datagram socket's address in
``$NOTIFY_SOCKET`` and sends it newline-separated ``KEY=VALUE`` lines:
``READY=1`` once it serves, ``STATUS=…`` for ``systemctl status``,
``STOPPING=1`` when it starts shutting down, ``WATCHDOG=1`` at least once per
``WatchdogSec``. Outside systemd (a terminal, Docker, tests) the variable is
unset and every call here is a no-op that returns False, so callers need no
``if``. The environment is read at each call, never at import time.

See sd_notify(3) and systemd.service(5).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger("sluice.systemd")

# A send should never block a service: systemd drains its notify socket
# quickly, and a message it cannot take in this long is better dropped.
DEFAULT_SEND_TIMEOUT = 2.0


def _address(value: str) -> str | None:
    """The socket address for $NOTIFY_SOCKET, or None when Sluice cannot use it."""
    if value.startswith("/"):
        return value
    if value.startswith("@"):
        # Linux abstract namespace: the name starts with a NUL byte.
        return "\0" + value[1:]
    return None  # e.g. systemd's "vsock:" addresses, for virtual machines


def notify(*lines: str, timeout: float = DEFAULT_SEND_TIMEOUT) -> bool:
    """Send *lines* (``"KEY=VALUE"``) to systemd as one message.

    Returns True when the message was sent, False when there is no notify
    socket (not started by systemd) or it could not be reached; a failure is
    logged, never raised, since a service must not die because its
    supervisor's socket went away. Raises ValueError for an empty message or
    a line with a newline in it (it would be read as another assignment).
    """
    if not lines:
        raise ValueError("notify() needs at least one KEY=VALUE line")
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"not a single KEY=VALUE line: {line!r}")
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.warning("notify_socket_unsupported", notify_socket=value)
        return False
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.send(message)
    except OSError as exc:
        log.warning("notify_failed", notify_socket=value, error=str(exc))
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    """Tell systemd the service is up (READY=1), with an optional status text.

    Call this when the service does its job: for the agent once the tunnel is
    up, for the relay once the API and the SSH endpoint listen.
    """
    lines = ["READY=1"]
    if status is not None:
        lines.append(f"STATUS={_one_line(status)}")
    return notify(*lines)


def status(text: str) -> bool:
    """Set the one-line status ``systemctl status`` shows; newlines become spaces."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(status: str | None = None) -> bool:
    """Tell systemd the service is shutting down (STOPPING=1), e.g. when a drain begins."""
    lines = ["STOPPING=1"]
    if status is not None:
        lines.append(f"STATUS={_one_line(status)}")
    return notify(*lines)


def extend_timeout(seconds: float) -> bool:
    """Ask systemd for *seconds* more before its start or stop timeout fires.

    Useful while draining for longer than ``TimeoutStopSec`` allows; send it
    again before the extension runs out.
    """
    if seconds <= 0:
        raise ValueError("extend_timeout() needs a positive number of seconds")
    return notify(f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}")


def watchdog_interval() -> float | None:
    """The watchdog interval systemd set for this process, in seconds, or None.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, or when
    ``WATCHDOG_PID`` names another process (the variables were inherited).
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


async def watchdog_loop(
    stop: asyncio.Event,
    healthy: Callable[[], bool],
    *,
    interval: float | None = None,
) -> None:
    """Send WATCHDOG=1 every half *interval* while ``healthy()`` is true, until *stop* is set.

    *interval* defaults to :func:`watchdog_interval`; when systemd set no
    watchdog this returns at once. While ``healthy()`` returns false (or
    raises) no ping is sent, so that systemd kills and restarts a service that
    stays unhealthy for a whole interval. ``healthy()`` is called on the event
    loop and must not block; a loop too busy to run this task is itself the
    hang the watchdog exists to catch.
    """
    if interval is None:
        interval = watchdog_interval()
        if interval is None:
            return
    if interval <= 0:
        raise ValueError("watchdog interval must be positive")
    period = interval / 2
    was_healthy = True
    while not stop.is_set():
        try:
            ok = healthy()
        except Exception:
            log.exception("watchdog_health_check_failed")
            ok = False
        if ok:
            notify("WATCHDOG=1")
            if not was_healthy:
                log.info("watchdog_ping_resumed")
        elif was_healthy:
            log.warning("watchdog_ping_withheld", interval=interval)
        was_healthy = ok
        try:
            async with asyncio.timeout(period):
                await stop.wait()
        except TimeoutError:
            pass
