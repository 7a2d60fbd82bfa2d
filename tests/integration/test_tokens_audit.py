"""Token rotation with a grace period, admin token rotation, and the audit trail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from server.cluster.reactions import ChangeReactions
from server.relay import Relay
from sluice.tokens import AgentToken
from tests.conftest import AgentFactory
from tests.support.api import InternalAPI
from tests.support.capture import APIClient, remember_secret
from tests.support.waiting import wait_until

# Also run against PostgreSQL by `make test` when SLUICE_TEST_POSTGRES_URL is set.
pytestmark = pytest.mark.postgres


async def test_agent_token_grace_lets_the_old_token_work_until_it_ends(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    created = await client.call("POST", "/v1/agents", json_body={"name": "g"}, shows_token=True)
    old = AgentToken.parse(created.body["token"])
    remember_secret(str(old), old.secret)
    await start_agent([f"127.0.0.1:{api.port}"], token=old)

    rotated = await client.call(
        "POST",
        f"/v1/agents/{old.agent_id}/rotate-token",
        json_body={"grace_seconds": 600},
        shows_token=True,
    )
    assert rotated.status == 200
    new = AgentToken.parse(rotated.body["token"])
    remember_secret(str(new), new.secret)
    assert rotated.body["tunnels_closed"] == 0
    assert relay.registry.is_online(old.agent_id)  # no downtime while agents switch
    assert await relay.store.authenticate_agent(old) is not None
    assert await relay.store.authenticate_agent(new) is not None

    # A rotation without grace ends the old token (and the grace one) at once.
    again = await client.call("POST", f"/v1/agents/{old.agent_id}/rotate-token", shows_token=True)
    remember_secret(again.body["token"])
    assert await relay.store.authenticate_agent(old) is None
    assert await relay.store.authenticate_agent(new) is None
    await wait_until(lambda: not relay.registry.is_online(old.agent_id), what="tunnels closed")

    bad = await client.call(
        "POST", f"/v1/agents/{old.agent_id}/rotate-token", json_body={"grace_seconds": -1}
    )
    assert bad.status == 422
    assert bad.body["errors"][0]["field"] == "grace_seconds"


async def _agent_with_old_token(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory, grace: float
) -> AgentToken:
    """An agent online with a token that was just rotated with *grace* seconds."""
    created = await client.call("POST", "/v1/agents", json_body={"name": "g"}, shows_token=True)
    old = AgentToken.parse(created.body["token"])
    remember_secret(str(old), old.secret)
    await start_agent([f"127.0.0.1:{api.port}"], token=old)
    rotated = await client.call(
        "POST",
        f"/v1/agents/{old.agent_id}/rotate-token",
        json_body={"grace_seconds": grace},
        shows_token=True,
    )
    assert rotated.status == 200, rotated.text
    remember_secret(rotated.body["token"])
    return old


@pytest.mark.timeout(30)
async def test_tunnels_on_the_old_token_close_when_the_grace_ends(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    old = await _agent_with_old_token(relay, client, api, start_agent, grace=2)
    assert relay.registry.is_online(old.agent_id)  # during the grace, nothing changes
    await wait_until(
        lambda: not relay.registry.is_online(old.agent_id), timeout=6, what="tunnel closed"
    )
    assert await relay.store.authenticate_agent(old) is None


def _reactions(relay: Relay) -> ChangeReactions:
    """The relay's reactions to changes (it has them once started)."""
    reactions = relay.reactions
    assert reactions is not None
    return reactions


def _recorded_rechecks(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, asyncio.TimerHandle]]:
    """The rechecks the relay's reactions arm from now on (agent, timer),
    as the event loop holds them (a timer of theirs that fired is not live
    either: the graces in these tests outlast them)."""
    reactions = _reactions(relay)
    loop = asyncio.get_running_loop()
    call_at = loop.call_at
    armed: list[tuple[str, asyncio.TimerHandle]] = []

    def recording(
        when: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        handle = call_at(when, callback, *args, **kwargs)
        # (By module, not object: a function or a bound method of the reactions'.)
        if getattr(callback, "__module__", None) == type(reactions).__module__:
            armed.append((args[0] if args else "", handle))
        return handle

    # call_at: call_later calls it too (the reactions used call_later before).
    monkeypatch.setattr(loop, "call_at", recording)
    return armed


def _live(armed: list[tuple[str, asyncio.TimerHandle]]) -> list[asyncio.TimerHandle]:
    return [handle for _, handle in armed if not handle.cancelled()]


@pytest.mark.timeout(30)
async def test_a_relay_that_stops_inside_a_grace_cancels_its_recheck(
    relay: Relay,
    client: APIClient,
    api: InternalAPI,
    start_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay arms a timer for the end of a rotated token's grace, to close
    the tunnels still on it. A relay that stops inside the grace cancels it:
    it would run a check on a closed store and keep the relay referenced
    until it fired (before the TaskSet refused it, that check opened a
    connection of the disposed engine, left to the garbage collector)."""
    armed = _recorded_rechecks(relay, monkeypatch)
    old = await _agent_with_old_token(relay, client, api, start_agent, grace=300)
    assert relay.registry.is_online(old.agent_id)
    # The change feed hears of the rotation and the reactions check the
    # agent's tunnels, arming the recheck: a read that began after the
    # rotation has ended once the next begins, and the check is one of the
    # relay's tasks.
    feed = relay.feed
    assert feed is not None
    began = feed.reads
    feed.poke()
    await wait_until(lambda: feed.reads >= began + 1, what="a change feed read")
    feed.poke()
    await wait_until(lambda: feed.reads >= began + 2, what="the next change feed read")
    await wait_until(lambda: len(relay.tasks) == 0, what="the reactions' check of the agent")
    assert len(_live(armed)) == 1, armed
    await relay.close()
    assert _live(armed) == []
    assert {agent_id for agent_id, _ in armed} == {old.agent_id}


@pytest.mark.timeout(30)
async def test_checks_inside_a_grace_keep_one_recheck_armed(
    relay: Relay,
    client: APIClient,
    api: InternalAPI,
    start_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each check of an agent inside its grace (a change of it, a tunnel of
    it registering) asks for the recheck again: one stays armed per agent,
    the earliest asked for, not one per check, each of which would read the
    store at the grace's end."""
    reactions = _reactions(relay)
    armed = _recorded_rechecks(relay, monkeypatch)
    old = await _agent_with_old_token(relay, client, api, start_agent, grace=300)
    for _ in range(3):
        await reactions.check_agent(old.agent_id)
    live = _live(armed)
    assert len(live) == 1, armed
    # The same grace read again asks for about the same end (wall clock and
    # loop clock read microseconds apart): whichever is earliest stays.
    assert live[0].when() == min(handle.when() for _, handle in armed)
    assert {agent_id for agent_id, _ in armed} == {old.agent_id}


@pytest.mark.timeout(30)
async def test_a_check_that_ends_after_the_stop_began_arms_nothing(
    relay: Relay,
    client: APIClient,
    api: InternalAPI,
    start_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check under way when the relay's stop cancels the rechecks (one the
    change feed started) must not arm one after it."""
    reactions = _reactions(relay)
    old = await _agent_with_old_token(relay, client, api, start_agent, grace=300)
    await wait_until(lambda: len(relay.tasks) == 0, what="the reactions' checks")
    armed = _recorded_rechecks(relay, monkeypatch)
    # Started, not yet run: it reads the agent's credentials after the close.
    check = asyncio.get_running_loop().create_task(reactions.check_agent(old.agent_id))
    reactions.close()
    assert await check == 0  # the tunnel on the old token stays for its grace
    assert relay.registry.is_online(old.agent_id)
    assert _live(armed) == []


@pytest.mark.timeout(30)
async def test_a_login_with_the_old_token_during_the_grace_ends_with_it(
    relay: Relay, client: APIClient, api: InternalAPI, start_agent: AgentFactory
) -> None:
    old = await _agent_with_old_token(relay, client, api, start_agent, grace=3)
    first = relay.registry.replicas(old.agent_id)[0]
    first.close()  # the agent reconnects, with the old token, still in its grace
    await wait_until(
        lambda: any(t is not first for t in relay.registry.replicas(old.agent_id)),
        what="the agent back on the old token",
    )
    await wait_until(
        lambda: not relay.registry.is_online(old.agent_id), timeout=8, what="tunnel closed"
    )
    assert await relay.store.authenticate_agent(old) is None


async def test_admin_token_rotation_with_grace(relay: Relay, client: APIClient) -> None:
    old = client.token
    rotated = await client.call(
        "POST", "/v1/admin/rotate-token", json_body={"grace_seconds": 300}, shows_token=True
    )
    assert rotated.status == 200
    new = rotated.body["token"]
    remember_secret(new)
    assert new.startswith("slcadm_")
    assert (await client.call("GET", "/v1/agents")).status == 200  # old still works
    client.token = new
    assert (await client.call("GET", "/v1/agents")).status == 200
    final = await client.call("POST", "/v1/admin/rotate-token", shows_token=True)
    remember_secret(final.body["token"])
    for token in (old, new):
        client.token = token
        assert (await client.call("GET", "/v1/agents")).status == 401
    client.token = final.body["token"]
    assert (await client.call("GET", "/v1/agents")).status == 200


async def test_every_change_is_audited_without_secrets(
    relay: Relay, client: APIClient, api: InternalAPI
) -> None:
    secret = "audit-secret-" + "k" * 16
    remember_secret(secret)
    agent = (
        await client.call("POST", "/v1/agents", json_body={"name": "aud"}, shows_token=True)
    ).body
    remember_secret(agent["token"])
    conn = (
        await client.call(
            "POST",
            "/v1/connections",
            json_body={
                "name": "c",
                "mode": "on_premise",
                "agent_id": agent["id"],
                "http": {
                    "base_uri": api.base,
                    "media_type": "json",
                    "auth": {"type": "token", "token": secret, "location": "header"},
                    "encrypted": {"password": secret},
                },
            },
        )
    ).body
    await client.call(
        "PATCH",
        f"/v1/connections/{conn['id']}",
        json_body={"http": {"encrypted": {"password": secret + "2"}}},
    )
    remember_secret(secret + "2")
    await client.call("DELETE", f"/v1/connections/{conn['id']}")
    rotated = await client.call("POST", f"/v1/agents/{agent['id']}/rotate-token", shows_token=True)
    remember_secret(rotated.body["token"])
    await client.call("DELETE", f"/v1/agents/{agent['id']}")

    events = (await client.call("GET", "/v1/audit?limit=50")).body["events"]
    actions = [e["action"] for e in reversed(events)]
    assert actions == [
        "agent.created",
        "connection.created",
        "connection.updated",
        "connection.deleted",
        "agent.token_rotated",
        "agent.deleted",
    ]
    assert all(e["actor"].startswith("admin:") for e in events)
    assert all(e["source"] == "127.0.0.1" for e in events)
    updated = next(e for e in events if e["action"] == "connection.updated")
    assert updated["details"]["fields"] == ["http.encrypted.password"]
    assert secret not in json.dumps(events)

    page = (await client.call("GET", f"/v1/audit?limit=2&before={events[1]['id']}")).body
    assert [e["id"] for e in page["events"]] == [events[2]["id"], events[3]["id"]]


async def test_audit_table_is_append_only(relay: Relay, client: APIClient) -> None:
    await client.call("POST", "/v1/agents", json_body={"name": "x"}, shows_token=True)
    engine = relay.store._engine
    for statement in ("UPDATE audit_events SET actor = 'someone else'", "DELETE FROM audit_events"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(sa.text(statement))
    assert len((await client.call("GET", "/v1/audit")).body["events"]) == 1
