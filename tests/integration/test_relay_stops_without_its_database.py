"""A relay of a cluster told to stop while PostgreSQL goes away (compose
stopping every service at once, a database failover) still drains and exits
with status 0: a step of its shutdown that needs the database fails on its
own, is logged, and does not skip the steps after it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bench.delay_line import DelayLine
from tests.support.cluster import cluster_relay, master_key
from tests.support.relay_process import RelayProcess
from tests.support.waiting import poll_until

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("gone", ["before_the_stop", "during_the_stop"])
async def test_a_relay_whose_database_goes_away_still_exits_cleanly(
    tmp_path: Path, cluster_database: str, gone: str
) -> None:
    url = make_url(cluster_database)
    # The relay reaches PostgreSQL through a line the test can cut.
    async with DelayLine.start(url.port or 5432, 0.0, host=url.host or "127.0.0.1") as line:
        through = url.set(host="127.0.0.1", port=line.port)
        relay = cluster_relay(
            tmp_path,
            "a",
            through.render_as_string(hide_password=False),
            master_key(),
            "slcadm_stop_" + "9" * 24,
        )
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
