"""The relay's SSH door: only token logins, only the tunnel listener, bans."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from server.relay import Relay
from server.settings import ServerSettings
from server.storage.store import AgentRecord
from sluice import sshconfig
from sluice.addresses import HostPort
from sluice.tokens import AgentToken
from tests.support.waiting import wait_until


@pytest.fixture
async def strict_relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(
        ServerSettings(
            data_dir=tmp_path / "relay",
            ssh_listen=HostPort("127.0.0.1", 0),
            http_listen=HostPort("127.0.0.1", 0),  # not 8080: tests run side by side
            auth_failures_per_address=3,
            auth_ban_seconds=60,
            log_format="json",
        )
    )
    try:
        yield relay
    finally:
        await relay.close()


async def _connect(relay: Relay, **kwargs: object) -> asyncssh.SSHClientConnection:
    host, port = relay.ssh_address
    options: dict[str, object] = {
        "username": sshconfig.AGENT_USERNAME,
        "known_hosts": None,
        "client_keys": None,
        "agent_path": None,
        "config": None,
        "connect_timeout": 5,
    }
    options.update(kwargs)
    return await asyncssh.connect(host, port, **options)  # type: ignore[arg-type,unused-ignore]


async def _register(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHListener:
    """What the agent does: ask for its listener, then say it is ready."""
    listener = await conn.create_server(
        lambda *_: None, sshconfig.TUNNEL_LISTEN_HOST, sshconfig.TUNNEL_LISTEN_PORT
    )
    with pytest.raises(asyncssh.ChannelOpenError):
        await conn.create_connection(asyncssh.SSHTCPSession, sshconfig.TUNNEL_READY_HOST, 0)
    return listener


async def test_public_key_login_is_refused(strict_relay: Relay) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(strict_relay, client_keys=[key], preferred_auth=["publickey"])


async def test_only_the_tunnel_listener_is_granted(strict_relay: Relay) -> None:
    _, token = await strict_relay.store.create_agent("a")
    async with await _connect(strict_relay, password=str(token)) as conn:
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.create_server(lambda *_: None, "0.0.0.0", 18081)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_session(asyncssh.SSHClientSession, "id")
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", 22)
        assert not strict_relay.registry.is_online(token.agent_id)

        listener = await _register(conn)
        assert listener.get_port() == sshconfig.TUNNEL_LISTEN_PORT
        assert strict_relay.registry.is_online(token.agent_id)
    await strict_relay.registry.wait_changed()
    assert not strict_relay.registry.is_online(token.agent_id)


async def test_replicas_share_an_agent_and_leave_when_closed(strict_relay: Relay) -> None:
    _, token = await strict_relay.store.create_agent("replicated")
    conns = []
    for _ in range(2):
        conn = await _connect(strict_relay, password=str(token))
        await _register(conn)
        conns.append(conn)
    replicas = strict_relay.registry.replicas(token.agent_id)
    assert len(replicas) == 2
    replicas[0].in_flight = 5
    assert strict_relay.registry.pick(token.agent_id) is replicas[1]

    conns[1].close()
    await conns[1].wait_closed()
    while len(strict_relay.registry.replicas(token.agent_id)) != 1:
        await strict_relay.registry.wait_changed()
    assert strict_relay.registry.pick(token.agent_id) is replicas[0]
    conns[0].close()
    await conns[0].wait_closed()


async def test_repeated_failures_ban_the_address(strict_relay: Relay) -> None:
    _, token = await strict_relay.store.create_agent("good")
    bad = AgentToken(agent_id=token.agent_id, secret="x" * 40)
    for _ in range(3):
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(strict_relay, password=str(bad))
    # Banned now: even the right token is refused from this address.
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.ConnectionLost, ConnectionError)):
        await _connect(strict_relay, password=str(token))


async def test_garbage_passwords_are_refused_not_crashed(strict_relay: Relay) -> None:
    for password in ["", "slc_", "slc_agt_x_y", "\x00" * 10, "é" * 300, "a\r\nb"]:
        # PermissionDenied, or ProtocolError where asyncssh rejects the bytes itself.
        with pytest.raises((asyncssh.PermissionDenied, asyncssh.ProtocolError)):
            await _connect(strict_relay, password=password)
        strict_relay_limiter_reset(strict_relay)


def strict_relay_limiter_reset(relay: Relay) -> None:
    # Keep the ban from ending this test early; the ban has its own test.
    assert relay.ssh_context is not None
    relay.ssh_context.limiter.record_success("127.0.0.1")


async def test_a_reconnecting_agent_takes_over_its_stale_session(strict_relay: Relay) -> None:
    """Same agent process (instance id in the user name), new session: the old
    one is closed at once instead of waiting for keepalives to notice it."""
    _, token = await strict_relay.store.create_agent("flaky-wifi")
    user = f"{sshconfig.AGENT_USERNAME}/a1b2c3d4"
    old = await _connect(strict_relay, password=str(token), username=user)
    await _register(old)
    other_replica = await _connect(
        strict_relay, password=str(token), username=f"{sshconfig.AGENT_USERNAME}/ffff0000"
    )
    await _register(other_replica)
    new = await _connect(strict_relay, password=str(token), username=user)
    await _register(new)
    async with asyncio.timeout(5):
        await old.wait_closed()
    replicas = strict_relay.registry.replicas(token.agent_id)
    assert len(replicas) == 2  # the new session and the other process's
    for conn in (new, other_replica):
        conn.close()
        await conn.wait_closed()


@pytest.fixture
async def network_relay(tmp_path: Path) -> AsyncIterator[Relay]:
    relay = await Relay.start(
        ServerSettings(
            data_dir=tmp_path / "relay",
            ssh_listen=HostPort("127.0.0.1", 0),
            http_listen=HostPort("127.0.0.1", 0),  # not 8080: tests run side by side
            auth_failures_per_address=3,
            auth_failures_per_network=6,
            auth_network_exempt="127.0.3.0/24",
            auth_ban_seconds=60,
            log_format="json",
        )
    )
    try:
        yield relay
    finally:
        await relay.close()


async def _login_from(relay: Relay, source: str, password: str) -> str:
    """One SSH login from *source* (any 127/8 address reaches the relay)."""
    try:
        conn = await _connect(relay, password=password, local_addr=(source, 0))
    except asyncssh.PermissionDenied:
        return "refused"
    except (asyncssh.DisconnectError, asyncssh.ConnectionLost, ConnectionError):
        return "cut off"
    conn.close()
    await conn.wait_closed()
    return "logged in"


async def test_failures_from_rotating_addresses_ban_their_network(network_relay: Relay) -> None:
    _, token = await network_relay.store.create_agent("good")
    bad = str(AgentToken(agent_id=token.agent_id, secret="x" * 40))
    # One failure per address, each from a new one in 127.0.1.0/24.
    outcomes = [await _login_from(network_relay, f"127.0.1.{n}", bad) for n in range(1, 9)]
    assert outcomes[:6] == ["refused"] * 6, outcomes
    assert outcomes[6:] == ["cut off"] * 2, outcomes  # the /24 is banned now
    assert await _login_from(network_relay, "127.0.1.200", str(token)) == "cut off"
    # Another /24 is not touched.
    assert await _login_from(network_relay, "127.0.2.7", str(token)) == "logged in"


async def test_an_exempt_network_is_only_banned_address_by_address(network_relay: Relay) -> None:
    _, token = await network_relay.store.create_agent("behind-nat")
    bad = str(AgentToken(agent_id=token.agent_id, secret="x" * 40))
    outcomes = [await _login_from(network_relay, f"127.0.3.{n}", bad) for n in range(1, 11)]
    assert outcomes == ["refused"] * 10, outcomes
    assert await _login_from(network_relay, "127.0.3.200", str(token)) == "logged in"
    # The per-address ban still holds inside it.
    for _ in range(3):
        await _login_from(network_relay, "127.0.3.50", bad)
    assert await _login_from(network_relay, "127.0.3.50", str(token)) == "cut off"


async def test_a_login_under_way_when_the_relay_stops_ends_before_the_store_closes(
    strict_relay: Relay,
) -> None:
    """The stop closes a login's connection (asyncssh then cancels the
    login), yet a token lookup under way must end before the store closes:
    after it, the lookup would open a connection of the disposed engine,
    left unclosed past the event loop (aiosqlite then fails in its thread)."""
    _, token = await strict_relay.store.create_agent("stopping")
    store = strict_relay.store
    events: list[str] = []
    gate = asyncio.Event()
    authenticate, close = store.authenticate_agent, store.close

    async def gated_lookup(agent_token: AgentToken) -> AgentRecord | None:
        events.append("lookup began")
        await gate.wait()
        found = await authenticate(agent_token)
        events.append("lookup ended")
        return found

    async def recorded_close(timeout: float = 5.0) -> None:
        events.append("store closes")
        await close(timeout)

    store.authenticate_agent = gated_lookup  # type: ignore[method-assign,assignment]
    store.close = recorded_close  # type: ignore[method-assign]
    login = asyncio.create_task(_connect(strict_relay, password=str(token)))
    await wait_until(lambda: events == ["lookup began"], what="the login's lookup")
    ctx = strict_relay.ssh_context
    assert ctx is not None
    stopping = asyncio.create_task(strict_relay.close())
    await wait_until(ctx.stopping.is_set, what="the relay stopping")
    gate.set()
    async with asyncio.timeout(15):
        await stopping
    assert events == ["lookup began", "lookup ended", "store closes"]
    login.cancel()
    with contextlib.suppress(asyncio.CancelledError, OSError, asyncssh.Error):
        conn = await login
        conn.close()


@pytest.mark.timeout(30)
async def test_a_stopped_relay_leaves_no_ssh_connection_open(strict_relay: Relay) -> None:
    """The stop closes every SSH connection it accepted, online agents' and
    those still logging in, before it waits for its listener: since Python
    3.12 that wait lasts until they have all ended (it hung there for ever
    with one agent online), and a login under way was left to the login
    timeout (30 s) after the relay had stopped."""
    _, token = await strict_relay.store.create_agent("online")
    online = await _connect(strict_relay, password=str(token))
    listener = await _register(online)
    # A client that connected and said nothing more: its login is under way.
    host, port = strict_relay.ssh_address
    reader, writer = await asyncio.open_connection(host, port)
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SSH-2.0-")
    await wait_until(
        lambda: (
            strict_relay.ssh_context is not None and len(strict_relay.ssh_context.connections) == 2
        ),
        what="both connections accepted",
    )
    try:
        async with asyncio.timeout(10):
            await strict_relay.close()
            # What the peers see: the relay ended both connections.
            await online.wait_closed()
            while await reader.read(65536):
                pass
        ctx = strict_relay.ssh_context
        assert ctx is not None
        assert not ctx.connections
    finally:
        listener.close()
        writer.close()


async def test_a_login_whose_client_leaves_takes_its_lookup_with_it(
    strict_relay: Relay,
) -> None:
    """Outside a stop, a login's token lookup ends with its connection: a
    client that sends a token and leaves does not leave a lookup running
    past the pre-auth gate's place it held."""
    _, token = await strict_relay.store.create_agent("leaving")
    store = strict_relay.store
    events: list[str] = []

    async def stalled_lookup(agent_token: AgentToken) -> AgentRecord | None:
        events.append("lookup began")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("lookup cancelled")
            raise
        return None

    store.authenticate_agent = stalled_lookup  # type: ignore[method-assign,assignment]
    login = asyncio.create_task(_connect(strict_relay, password=str(token)))
    await wait_until(lambda: events == ["lookup began"], what="the login's lookup")
    login.cancel()  # the client leaves mid-login: its socket closes
    with contextlib.suppress(asyncio.CancelledError):
        await login
    await wait_until(
        lambda: events == ["lookup began", "lookup cancelled"], what="the lookup cancelled"
    )
