"""A relay shutting down writes the limits its last requests met before it
stops: the rest of the cluster must not send into a limited API."""

from __future__ import annotations

import time

import pytest

from server.cluster.shared_limits import ClusterLimits
from server.proxy.retry import RateLimits
from server.storage.coordination import Coordination
from server.storage.store import Store
from sluice.tasks import TaskSet

pytestmark = pytest.mark.timeout(30)


async def test_limits_queued_when_the_relay_closes_are_written(cluster_database: str) -> None:
    store = await Store.open(cluster_database)
    tasks = TaskSet()
    try:
        for conn_id in ("con_a", "con_b", "con_c"):
            await store.create_connection(conn_id, conn_id, "cloud", None, "{}")
        rows = Coordination(store)
        limits = ClusterLimits(rows, "relay-closing", tasks)
        await limits.attach(RateLimits())
        until = time.time() + 60
        for conn_id in ("con_a", "con_b", "con_c"):
            # Met by requests that finished during the drain, just before close.
            limits.limited(conn_id, until)
        await limits.close()
        written = await rows.all_limits()
    finally:
        await tasks.close()
        await store.close()
    assert sorted(written) == ["con_a", "con_b", "con_c"]
    assert all(abs(when.timestamp() - until) < 1 for when in written.values()), written
