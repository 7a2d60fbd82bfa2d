"""The agent's outbound proxy against a real HTTP proxy (tinyproxy) on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from structlog.testing import capture_logs

from agent.outbound_proxy import (
    ProxyAuthRejected,
    ProxyConfig,
    ProxyRefused,
    connect_via_proxy,
)
from tests.support.tinyproxy import TINYPROXY, Tinyproxy, run_tinyproxy

pytestmark = [
    pytest.mark.timeout(15),
    pytest.mark.skipif(
        TINYPROXY is None, reason="tinyproxy is not installed (apt-get install tinyproxy-bin)"
    ),
]

USER = "agent-egress"
PASSWORD = "s3cret-Pa55.w_rd"  # tinyproxy allows only letters, digits and -._
SSH_USER = "sluice"
SSH_PASSWORD = "ssh-password-123"


def good_proxy(proxy: Tinyproxy) -> ProxyConfig:
    # Through the URL form, percent-encoding and all, as the setting gives it.
    url = f"http://agent%2Degress:s3cret%2DPa55.w_rd@{proxy.host}:{proxy.port}"
    config = ProxyConfig.parse(url)
    assert (config.username, config.password) == (USER, PASSWORD)
    return config


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
async def spare_port() -> AsyncIterator[int]:
    """A listening port the proxy is told not to allow CONNECT to."""
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


class _OnePasswordServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == SSH_USER and password == SSH_PASSWORD


async def _hello(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write(f"hello {process.command}\n")
    process.exit(0)


@pytest.fixture
async def ssh_server() -> AsyncIterator[tuple[int, asyncssh.SSHKey]]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        server_factory=_OnePasswordServer,
        process_factory=_hello,
    )
    try:
        yield server.sockets[0].getsockname()[1], host_key
    finally:
        server.close()
        await server.wait_closed()


async def test_bytes_round_trip_through_the_proxy(tmp_path: Path, echo_port: int) -> None:
    async with run_tinyproxy(tmp_path, users={USER: PASSWORD}, connect_ports=[echo_port]) as tp:
        with capture_logs() as logs:
            sock = await connect_via_proxy(good_proxy(tp), "127.0.0.1", echo_port, timeout=5)
        try:
            assert sock.getblocking() is False
            loop = asyncio.get_running_loop()
            payload = bytes(range(256)) * 64
            await loop.sock_sendall(sock, payload)
            received = b""
            async with asyncio.timeout(5):
                while len(received) < len(payload):
                    chunk = await loop.sock_recv(sock, 65536)
                    assert chunk, "echo server closed early"
                    received += chunk
            assert received == payload
        finally:
            sock.close()
    assert PASSWORD not in repr(logs)
    assert "CONNECT" in tp.log()  # the bytes really went through tinyproxy


async def test_wrong_password_is_rejected_with_a_clear_message(
    tmp_path: Path, echo_port: int
) -> None:
    wrong = "not-the-Password-42"
    async with run_tinyproxy(tmp_path, users={USER: PASSWORD}, connect_ports=[echo_port]) as tp:
        bad = ProxyConfig(tp.host, tp.port, USER, wrong)
        with capture_logs() as logs, pytest.raises(ProxyAuthRejected) as caught:
            await connect_via_proxy(bad, "127.0.0.1", echo_port, timeout=5)
    message = str(caught.value)
    assert caught.value.needs_operator
    assert caught.value.status in (401, 407)  # tinyproxy 1.11 answers bad credentials with 401
    assert f"http://{USER}@127.0.0.1:{tp.port}" in message
    assert "check the user and password in the proxy setting" in message
    assert wrong not in message
    assert wrong not in repr(logs)


async def test_missing_credentials_say_to_add_them(tmp_path: Path, echo_port: int) -> None:
    async with run_tinyproxy(tmp_path, users={USER: PASSWORD}, connect_ports=[echo_port]) as tp:
        anonymous = ProxyConfig(tp.host, tp.port, None, None, source="HTTPS_PROXY")
        with pytest.raises(ProxyAuthRejected) as caught:
            await connect_via_proxy(anonymous, "127.0.0.1", echo_port, timeout=5)
    assert caught.value.status == 407
    assert "put them in HTTPS_PROXY" in str(caught.value)


async def test_connect_to_a_port_the_proxy_forbids_is_refused(
    tmp_path: Path, echo_port: int, spare_port: int
) -> None:
    async with run_tinyproxy(tmp_path, users={USER: PASSWORD}, connect_ports=[echo_port]) as tp:
        with pytest.raises(ProxyRefused) as caught:
            await connect_via_proxy(good_proxy(tp), "127.0.0.1", spare_port, timeout=5)
    message = str(caught.value)
    assert caught.value.status == 403
    assert caught.value.needs_operator
    assert f"the proxy refused CONNECT to 127.0.0.1:{spare_port}" in message
    assert "allow it in the proxy's ACL" in message
    assert PASSWORD not in message


async def test_ssh_handshake_and_command_through_the_proxy(
    tmp_path: Path, ssh_server: tuple[int, asyncssh.SSHKey]
) -> None:
    ssh_port, host_key = ssh_server
    async with run_tinyproxy(tmp_path, users={USER: PASSWORD}, connect_ports=[ssh_port]) as tp:
        sock = await connect_via_proxy(good_proxy(tp), "127.0.0.1", ssh_port, timeout=5)
        # Host and port go along with sock (as the agent's tunnel will pass them):
        # asyncssh dials nothing then, and uses them only for names in callbacks.
        conn = await asyncssh.connect(
            "127.0.0.1",
            ssh_port,
            sock=sock,
            known_hosts=None,
            username=SSH_USER,
            password=SSH_PASSWORD,
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth=["password"],
            connect_timeout=5,
        )
        async with conn:
            presented = conn.get_server_host_key()
            assert presented is not None
            assert presented.public_data == host_key.public_data
            peer = conn.get_extra_info("socket")
            assert peer is not None
            assert peer.fileno() == sock.fileno()
            result = await conn.run("through-the-proxy", check=True, timeout=5)
            assert result.stdout == "hello through-the-proxy\n"
    assert "CONNECT" in tp.log()


async def test_socket_from_the_proxy_is_plain_tcp(tmp_path: Path, echo_port: int) -> None:
    async with run_tinyproxy(tmp_path, users={USER: PASSWORD}, connect_ports=[echo_port]) as tp:
        sock = await connect_via_proxy(good_proxy(tp), "127.0.0.1", echo_port, timeout=5)
        with sock:
            assert sock.family == socket.AF_INET
            assert sock.type == socket.SOCK_STREAM
            assert sock.getpeername() == ("127.0.0.1", tp.port)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
