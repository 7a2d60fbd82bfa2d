"""The reconnect supervisor against a fake tunnel opener (no network)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.allowlist import Allowlist
from agent.errors import AuthRejected, RelayUnreachable
from agent.proxy import ProxyContext
from agent.settings import AgentSettings
from agent.state import InvalidTransition, TunnelState, TunnelStatus
from agent.stats import ProxyStats
from agent.supervisor import Supervisor
from sluice.addresses import HostPort
from tests.support.waiting import wait_until

FP = "SHA256:" + "c" * 43


def settings(**kw: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "relay": ["r1:1", "r2:2"],
        "relay_fingerprint": FP,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "stable_after": 0.2,
        "drain_timeout": 0.5,
    }
    values.update(kw)
    return AgentSettings(**values)


class FakeTunnel:
    short_link = True

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.stopped_accepting = False

    def stop_accepting(self) -> None:
        self.stopped_accepting = True

    def close(self) -> None:
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()


class FakeOpener:
    """Fails with the queued errors, then hands out tunnels."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls: list[HostPort] = []
        self.tunnels: list[FakeTunnel] = []
        self.opened = asyncio.Event()

    async def __call__(self, relay: HostPort) -> FakeTunnel:
        self.calls.append(relay)
        if self.failures:
            raise self.failures.pop(0)
        tunnel = FakeTunnel()
        self.tunnels.append(tunnel)
        self.opened.set()
        return tunnel


def ctx() -> ProxyContext:
    return ProxyContext(allowlist=Allowlist.parse([]), connect_timeout=1, stats=ProxyStats())


async def test_backs_off_fails_over_then_drains_on_shutdown() -> None:
    opener = FakeOpener([RelayUnreachable("refused"), RelayUnreachable("reset")])
    sup = Supervisor(settings(), opener, ctx())
    shutdown = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run(shutdown))
        async with asyncio.timeout(5):
            await sup.ready.wait()
        assert sup.status.state is TunnelState.UP
        shutdown.set()
        await asyncio.wait_for(task, 5)
    assert [str(r) for r in opener.calls] == ["r1:1", "r2:2", "r1:1"]
    retries = [e for e in logs if e["event"] == "reconnecting"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(0 <= e["delay_s"] <= 0.05 for e in retries)
    assert retries[0]["cause"] == "refused"
    assert opener.tunnels[0].stopped_accepting
    assert opener.tunnels[0].closed.is_set()
    assert sup.status.state is TunnelState.CLOSED


async def test_auth_failure_waits_the_cap_and_says_what_to_fix() -> None:
    opener = FakeOpener([AuthRejected("relay r1:1 refused the access token: rotate it")])
    sup = Supervisor(settings(backoff_max=0.3), opener, ctx())
    shutdown = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run(shutdown))
        async with asyncio.timeout(5):
            await sup.ready.wait()
        shutdown.set()
        await asyncio.wait_for(task, 5)
    attention = [e for e in logs if e["event"] == "relay_needs_attention"]
    assert len(attention) == 1
    assert attention[0]["delay_s"] == 0.3
    assert "refused the access token" in attention[0]["cause"]


async def test_stable_session_resets_the_attempt_counter() -> None:
    opener = FakeOpener([RelayUnreachable("a"), RelayUnreachable("b")])
    sup = Supervisor(settings(stable_after=0.0), opener, ctx())
    shutdown = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run(shutdown))
        async with asyncio.timeout(5):
            await sup.ready.wait()
        # The relay goes away after a stable session...
        opener.failures = [RelayUnreachable("c")]
        opener.opened.clear()
        opener.tunnels[0].close()
        async with asyncio.timeout(5):
            await opener.opened.wait()
        shutdown.set()
        await asyncio.wait_for(task, 5)
    attempts = [e["attempt"] for e in logs if e["event"] == "reconnecting"]
    assert attempts == [1, 2, 1]  # ...and counting starts again at 1
    assert sup.status.reconnects == 1


async def test_shutdown_during_backoff_returns_promptly() -> None:
    opener = FakeOpener([RelayUnreachable("down")] * 100)
    sup = Supervisor(settings(backoff_initial=30, backoff_max=60), opener, ctx())
    shutdown = asyncio.Event()
    task = asyncio.create_task(sup.run(shutdown))
    await wait_until(lambda: sup.status.state is TunnelState.BACKING_OFF, timeout=5)
    shutdown.set()
    await asyncio.wait_for(task, 2)
    assert sup.status.state is TunnelState.CLOSED


def test_state_machine_refuses_impossible_transitions() -> None:
    status = TunnelStatus(clock=lambda: 0.0)
    status.to(TunnelState.UP)
    status.to(TunnelState.BACKING_OFF)
    status.to(TunnelState.CONNECTING)
    status.to(TunnelState.UP)
    assert status.reconnects == 1
    status.to(TunnelState.DRAINING)
    with pytest.raises(InvalidTransition):
        status.to(TunnelState.UP)  # a draining agent never takes new work
    status.to(TunnelState.CLOSED)
    with pytest.raises(InvalidTransition):
        status.to(TunnelState.UP)
