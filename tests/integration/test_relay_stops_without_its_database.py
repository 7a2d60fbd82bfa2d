"""A relay of a cluster told to stop while PostgreSQL goes away (compose
stopping every service at once, a database failover) still drains and exits
with status 0: a step of its shutdown that needs the database fails on its
own, is logged, and does not skip the steps after it."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import URL, make_url

from bench.delay_line import DelayLine
from tests.support.cluster import cluster_relay, master_key
from tests.support.relay_process import RelayProcess
from tests.support.waiting import poll_until

pytestmark = pytest.mark.timeout(90)

# A relay's stop takes at most drain_timeout + database_timeout whatever its
# database does; the test below gives it this long beyond the two (the
# process's exit, a loaded machine).
STOP_SLACK = 4.0


@pytest.mark.parametrize("gone", ["before_the_stop", "during_the_stop"])
async def test_a_relay_whose_database_goes_away_still_exits_cleanly(
    tmp_path: Path, cluster_database: str, gone: str
) -> None:
    url = make_url(cluster_database)
    # The relay reaches PostgreSQL through a line the test can cut.
    async with DelayLine.start(url.port or 5432, 0.0, host=url.host or "127.0.0.1") as line:
        relay = _relay_through(line, tmp_path, url, "slcadm_stop_" + "9" * 24)
        await relay.start()
        try:
            # Fully started: it holds the health lease and its presence row.
            await poll_until(lambda: _started(relay), 20, "relay_started")
        finally:
            assert relay.proc is not None
            if gone == "during_the_stop":
                relay.proc.send_signal(signal.SIGTERM)
            await line.close()  # every connection to the database cut, none accepted
            code = await relay.stop(signal.SIGTERM, timeout=60)
    log = relay.log_path.read_text()
    assert code == 0, log[-4000:]
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "relay_stopped" in events, events[-20:]
    assert "Traceback" not in log, log[-4000:]


def _relay_through(
    line: DelayLine, tmp_path: Path, url: URL, admin_token: str, **settings: str
) -> RelayProcess:
    """A cluster relay that reaches PostgreSQL at *url* through *line*, which
    the test can cut or stall."""
    through = url.set(host="127.0.0.1", port=line.port)
    return cluster_relay(
        tmp_path,
        "a",
        through.render_as_string(hide_password=False),
        master_key(),
        admin_token,
        **settings,
    )


async def _started(relay: RelayProcess) -> bool:
    return '"relay_started"' in relay.log_path.read_text()


async def test_a_database_that_is_not_there_is_a_clear_error_not_a_traceback(
    tmp_path: Path, cluster_database: str
) -> None:
    """The server answers but has no such database: one logged reason, exit 1."""
    missing = make_url(cluster_database).set(database="sluice_no_such_database")
    relay = cluster_relay(
        tmp_path,
        "a",
        missing.render_as_string(hide_password=False),
        master_key(),
        "slcadm_stop_" + "8" * 24,
    )
    with pytest.raises(AssertionError, match="relay did not start"):
        await relay.start(timeout=20)
    code = await relay.stop(signal.SIGTERM, timeout=30)
    log = relay.log_path.read_text()
    assert code == 1, log[-4000:]
    failed = [
        entry
        for entry in map(json.loads, filter(lambda line: line.startswith("{"), log.splitlines()))
        if entry["event"] == "relay_start_failed"
    ]
    assert len(failed) == 1, log[-4000:]
    assert "database" in failed[0]["error"], failed
    assert "Traceback" not in log, log[-4000:]


async def test_a_stalled_database_gives_a_definite_error_not_a_hang(
    tmp_path: Path, cluster_database: str
) -> None:
    """PostgreSQL stops answering without closing its connections (a dead
    route): an API call that needs it fails within database_timeout with a
    503 that says so, and works again once the database answers."""
    url = make_url(cluster_database)
    async with DelayLine.start(url.port or 5432, 0.0, host=url.host or "127.0.0.1") as line:
        relay = _relay_through(
            line, tmp_path, url, "slcadm_stall_" + "7" * 24, database_timeout="2"
        )
        await relay.start()
        headers = {"Authorization": f"Bearer {relay.admin_token}"}
        try:
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.post(relay.base + "/v1/agents", json={"name": "before"}) as resp:
                    assert resp.status == 201, await resp.text()
                line.set_rtt(3600.0)  # nothing the relay sends reaches the database now
                began = time.monotonic()
                async with http.post(relay.base + "/v1/agents", json={"name": "stalled"}) as resp:
                    took = time.monotonic() - began
                    body = await resp.json(content_type=None)
                    assert resp.status == 503, body
                assert body["type"].endswith("database_unavailable"), body
                assert took < 10, took
                line.set_rtt(0.0)
                # Connections held up behind the stall are dropped, new ones answer.
                await poll_until(
                    lambda: _creates(http, relay.base), 30, "an agent created after the stall"
                )
        finally:
            await relay.stop(signal.SIGTERM, timeout=60)


async def _creates(http: aiohttp.ClientSession, base: str) -> bool:
    async with http.post(base + "/v1/agents", json={"name": "after"}) as resp:
        return resp.status == 201


async def test_a_relay_told_to_stop_while_its_database_stalls_exits_within_its_timeouts(
    tmp_path: Path, cluster_database: str
) -> None:
    """PostgreSQL stops answering without closing its connections (a dead
    route) and the relay is told to stop: the steps of its shutdown that need
    the database wait database_timeout for it in all, not each in turn, so the
    relay logs relay_stopped and exits 0 within drain_timeout + database_timeout."""
    url = make_url(cluster_database)
    database_timeout, drain_timeout = 3.0, 1.0
    async with DelayLine.start(url.port or 5432, 0.0, host=url.host or "127.0.0.1") as line:
        relay = _relay_through(
            line,
            tmp_path,
            url,
            "slcadm_stall_" + "6" * 24,
            database_timeout=str(database_timeout),
            drain_timeout=str(drain_timeout),
        )
        await relay.start()
        assert relay.proc is not None
        try:
            # Fully started: its heartbeat, lease and change feed use the database.
            await poll_until(lambda: _started(relay), 20, "relay_started")
            # Every byte either way is held from now on, new connections' too:
            # the relay's connections stay open and get no answer.
            line.set_rtt(3600.0)
            began = time.monotonic()
            code = await relay.stop(
                signal.SIGTERM, timeout=drain_timeout + database_timeout + STOP_SLACK
            )
            took = time.monotonic() - began
        finally:
            if relay.proc.returncode is None:
                relay.proc.kill()
                await relay.proc.wait()
    log = relay.log_path.read_text()
    assert code == 0, log[-4000:]
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert entries[-1]["event"] == "relay_stopped", entries[-20:]
    assert "Traceback" not in log, log[-4000:]
    # The draining heartbeat waited for the database, and says so.
    gave_up = {e["step"]: e["error"] for e in entries if e["event"] == "relay_close_step_failed"}
    assert gave_up.get("draining") == "timeout", gave_up
    assert url.password is not None
    assert url.password not in log
    print(f"stopped in {took:.1f} s; steps given up: {gave_up}")
