"""An agent whose login timed the loopback as short, for tests of short links."""

from __future__ import annotations

from server.relay import Relay
from server.tunnel.registry import Tunnel
from sluice.tokens import AgentToken
from sluice.window_tuning import LONG
from tests.conftest import AgentFactory
from tests.support.waiting import wait_until


async def short_link_agent(
    relay: Relay, start_agent: AgentFactory, port: int, name: str
) -> tuple[Tunnel, AgentToken]:
    """An agent allowed to 127.0.0.1:*port* whose login timed the loopback as
    short (under the tuner's ``LONG``). On a busy machine a login can take
    5 ms, which tells a link that may be long, the case such tests are not
    about: the agent logs in again (up to five times)."""
    _, token = await relay.store.create_agent(name)
    agent_id = token.agent_id
    logins: list[float] = []
    for _ in range(5):
        agent, _ = await start_agent([f"127.0.0.1:{port}"], token=token)
        await wait_until(lambda: relay.registry.is_online(agent_id), what="agent online")
        [tunnel] = relay.registry.replicas(agent_id)
        logins.append(tunnel.login_rtt)
        if 0 < tunnel.login_rtt < LONG:
            return tunnel, token
        await agent.stop()
        await wait_until(lambda: not relay.registry.is_online(agent_id), what="agent offline")
    raise AssertionError(f"no login timed the loopback as short: {logins}")
