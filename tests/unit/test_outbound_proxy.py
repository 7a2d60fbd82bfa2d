"""agent.outbound_proxy: proxy URLs, NO_PROXY, the response parser, and the
CONNECT exchange against a scripted proxy on loopback."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.errors import RelayUnreachable, TunnelError
from agent.outbound_proxy import (
    MAX_HEAD_BYTES,
    ProxyAuthRejected,
    ProxyConfig,
    ProxyError,
    ProxyRefused,
    connect_via_proxy,
    no_proxy_matches,
    parse_response_head,
    proxy_for,
)

pytestmark = pytest.mark.timeout(20)

SECRET = "Hunter2-very-secret"

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
names = (
    st.lists(labels, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda n: not n.replace(".", "").isdigit())
)
ports = st.integers(min_value=1, max_value=65535)
credentials = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30
)


# --- ProxyConfig.parse --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy.corp:3128", ("proxy.corp", 3128, None, None)),
        ("http://proxy.corp", ("proxy.corp", 80, None, None)),
        ("http://proxy.corp:3128/", ("proxy.corp", 3128, None, None)),
        ("HTTP://Proxy.Corp:8080", ("proxy.corp", 8080, None, None)),
        ("proxy.corp:3128", ("proxy.corp", 3128, None, None)),
        ("  http://proxy:3128\n", ("proxy", 3128, None, None)),
        ("http://user:pass@proxy:3128", ("proxy", 3128, "user", "pass")),
        ("http://user@proxy:3128", ("proxy", 3128, "user", None)),
        ("http://user:@proxy:3128", ("proxy", 3128, "user", "")),
        (
            "http://dom%5Cuser:p%40ss%3Aw%2Frd%25@proxy:3128",
            ("proxy", 3128, "dom\\user", "p@ss:w/rd%"),
        ),
        ("http://us%C3%A9r:p%C3%A4ss@proxy:3128", ("proxy", 3128, "usér", "päss")),
        ("http://[::1]:3128", ("::1", 3128, None, None)),
        ("http://u:p@[fd00::1]", ("fd00::1", 80, "u", "p")),
        ("http://10.0.0.5:3128", ("10.0.0.5", 3128, None, None)),
    ],
)
def test_parse_accepts(url: str, expected: tuple[str, int, str | None, str | None]) -> None:
    config = ProxyConfig.parse(url)
    assert (config.host, config.port, config.username, config.password) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "https://u:pw-Secret-1@proxy:3128",
            "https:// proxies (TLS to the proxy) are not supported",
        ),
        ("socks5://u:pw-Secret-1@proxy:1080", "SOCKS proxies are not supported"),
        ("socks5h://proxy:1080", "SOCKS proxies are not supported"),
        ("socks4://proxy:1080", "SOCKS proxies are not supported"),
        ("ftp://proxy:21", "unsupported scheme"),
        ("http://proxy:3128/path", "a proxy URL has no path"),
        ("http://u:pw-Secret-1#x@proxy:3128", "percent-encode"),
        ("http://proxy:3128?x=1", "a proxy URL has no path"),
        ("http://:3128", "missing proxy host"),
        ("http://u:pw-Secret-1@:3128", "missing proxy host"),
        ("http://proxy:99999", "not valid"),
        ("http://proxy:http", "not valid"),
        ("http://u:pw-Secret-1/x@proxy:3128", "percent-encode"),
        ("http://u:pw-Secret-1?x@proxy:3128", "percent-encode"),
        ("http://pw-Secret-1/@proxy:3128", "percent-encode"),
        ("http://[::1:3128", "not valid"),
        ("http://proxy:0", "from 1 to 65535"),
        ("", "empty proxy URL"),
        ("   ", "empty proxy URL"),
        ("http://u:pw-Secret-1 x@proxy:3128", "whitespace or control characters"),
        ("http://proxy:3128\r\nX: y", "whitespace or control characters"),
        ("http://us:er:pw-Secret-1@proxy", None),  # ':' in the password part is fine
        ("http://u%3Ax:pw-Secret-1@proxy", "cannot contain ':'"),
    ],
)
def test_parse_refuses_with_a_clear_message(url: str, says: str | None) -> None:
    if says is None:
        assert ProxyConfig.parse(url).password == "er:pw-Secret-1"
        return
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        ProxyConfig.parse(url)
    assert "pw-Secret-1" not in str(caught.value)


def test_parse_errors_name_the_environment_variable() -> None:
    with pytest.raises(
        ValueError, match=r"^HTTPS_PROXY: socks5://\*\*\*@proxy:1080: SOCKS"
    ) as caught:
        ProxyConfig.parse("socks5://u:pw-Secret-1@proxy:1080", source="HTTPS_PROXY")
    assert "pw-Secret-1" not in str(caught.value)


@given(username=credentials, password=credentials, host=names, port=ports)
def test_parse_round_trips_percent_encoded_credentials(
    username: str, password: str, host: str, port: int
) -> None:
    url = f"http://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}"
    if ":" in username:
        with pytest.raises(ValueError, match="cannot contain ':'"):
            ProxyConfig.parse(url)
        return
    config = ProxyConfig.parse(url)
    assert (config.host, config.port, config.username, config.password) == (
        host,
        port,
        username,
        password,
    )


@given(
    prefix=st.sampled_from(["http://", "https://", "socks5://", "", "ftp://"]),
    user=st.sampled_from(["", "bob", "bob:"]),
    raw=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
    rest=st.sampled_from(["@proxy:3128", "@proxy", "@:3128", "@proxy:99999", "@proxy/x", "@"]),
)
def test_parse_errors_never_show_a_raw_password(
    prefix: str, user: str, raw: str, rest: str
) -> None:
    password = "Zq9" + raw  # unescaped, as people paste them
    url = f"{prefix}{user}{password}{rest}"
    try:
        ProxyConfig.parse(url)
    except ValueError as exc:
        message = str(exc)
    else:
        return
    assert "zq9" not in message.lower()


@given(password=credentials.filter(lambda p: len(p) >= 4))
def test_password_never_in_repr_or_str(password: str) -> None:
    config = ProxyConfig("proxy.corp", 3128, "bob", password)
    other = dataclasses.replace(config, password="something else")
    assert repr(config) == repr(other)
    assert str(config) == str(other) == "http://bob@proxy.corp:3128"


def test_repr_and_str() -> None:
    config = ProxyConfig("fd00::1", 3128, "bob", SECRET, source="HTTPS_PROXY")
    assert str(config) == "http://bob@[fd00::1]:3128"
    assert repr(config) == (
        "ProxyConfig(host='fd00::1', port=3128, username='bob', password='***', "
        "source='HTTPS_PROXY')"
    )
    assert "password=None" in repr(ProxyConfig("p", 1))
    assert SECRET not in f"{config!r} {config}"


def test_source_does_not_affect_equality() -> None:
    assert ProxyConfig.parse("http://p:1", source="ALL_PROXY") == ProxyConfig("p", 1)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"host": "", "port": 1}, "invalid proxy host"),
        ({"host": "a b", "port": 1}, "invalid proxy host"),
        ({"host": "p", "port": 0}, "from 1 to 65535"),
        ({"host": "p", "port": 65536}, "from 1 to 65535"),
        ({"host": "p", "port": True}, "from 1 to 65535"),
    ],
)
def test_constructor_checks(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ProxyConfig(**kwargs)  # type: ignore[arg-type]


def test_authorization_is_basic_utf8() -> None:
    config = ProxyConfig("p", 1, "usér", "pa:ss")
    value = config.authorization()
    assert value is not None
    assert value.startswith("Basic ")
    assert base64.b64decode(value[6:]).decode() == "usér:pa:ss"
    assert ProxyConfig("p", 1, "u", None).authorization() == "Basic " + base64.b64encode(
        b"u:"
    ).decode("ascii")
    assert ProxyConfig("p", 1).authorization() is None


# --- proxy_for ----------------------------------------------------------------


def test_no_setting_no_environment_is_direct() -> None:
    assert proxy_for("relay.example", 2222, None, {}) is None


def test_setting_wins_over_environment() -> None:
    env = {"HTTPS_PROXY": "http://env-proxy:1"}
    config = proxy_for("relay.example", 2222, "http://u:p@set-proxy:3128", env)
    assert config == ProxyConfig("set-proxy", 3128, "u", "p")
    assert config is not None
    assert config.source == "the proxy setting"


def test_empty_setting_means_direct_whatever_the_environment() -> None:
    env = {"HTTPS_PROXY": "http://env-proxy:1", "ALL_PROXY": "http://x:2"}
    assert proxy_for("relay.example", 2222, "", env) is None
    assert proxy_for("relay.example", 2222, "  ", env) is None


def test_setting_is_not_subject_to_no_proxy() -> None:
    config = proxy_for("relay.example", 2222, "http://p:1", {"NO_PROXY": "*"})
    assert config == ProxyConfig("p", 1)


@pytest.mark.parametrize(
    ("env", "expected_host", "expected_source"),
    [
        ({"HTTPS_PROXY": "http://a:1"}, "a", "HTTPS_PROXY"),
        ({"https_proxy": "http://b:1"}, "b", "https_proxy"),
        ({"https_proxy": "http://b:1", "HTTPS_PROXY": "http://a:1"}, "b", "https_proxy"),
        ({"ALL_PROXY": "http://c:1"}, "c", "ALL_PROXY"),
        ({"all_proxy": "http://d:1", "ALL_PROXY": "http://c:1"}, "d", "all_proxy"),
        ({"HTTPS_PROXY": "http://a:1", "all_proxy": "http://d:1"}, "a", "HTTPS_PROXY"),
        ({"https_proxy": "", "HTTPS_PROXY": "http://a:1"}, "a", "HTTPS_PROXY"),
        ({"HTTPS_PROXY": " ", "ALL_PROXY": "c:1"}, "c", "ALL_PROXY"),
    ],
)
def test_environment_order(env: dict[str, str], expected_host: str, expected_source: str) -> None:
    config = proxy_for("relay.example", 2222, None, env)
    assert config is not None
    assert (config.host, config.source) == (expected_host, expected_source)


def test_http_proxy_is_not_used() -> None:
    assert proxy_for("relay.example", 2222, None, {"HTTP_PROXY": "http://a:1"}) is None
    assert proxy_for("relay.example", 2222, None, {"http_proxy": "http://a:1"}) is None


def test_no_proxy_exempts_the_relay() -> None:
    env = {"HTTPS_PROXY": "http://a:1", "NO_PROXY": "localhost, .example"}
    assert proxy_for("relay.example", 2222, None, env) is None
    assert proxy_for("relay.other", 2222, None, env) == ProxyConfig("a", 1)


def test_lowercase_no_proxy_wins() -> None:
    env = {"HTTPS_PROXY": "http://a:1", "no_proxy": "other", "NO_PROXY": "relay.example"}
    assert proxy_for("relay.example", 2222, None, env) is not None


def test_bad_environment_proxy_names_the_variable() -> None:
    env = {"ALL_PROXY": "socks5://u:pw-Secret-1@s:1080"}
    with pytest.raises(ValueError, match=r"^ALL_PROXY: ") as caught:
        proxy_for("relay.example", 2222, None, env)
    assert "pw-Secret-1" not in str(caught.value)


def test_bad_environment_proxy_is_ignored_when_the_relay_is_exempt() -> None:
    env = {"ALL_PROXY": "socks5://s:1080", "NO_PROXY": "relay.example"}
    assert proxy_for("relay.example", 2222, None, env) is None


# --- NO_PROXY -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "exempt"),
    [
        ("", "relay.example", 22, False),
        ("*", "relay.example", 22, True),
        ("a, *", "relay.example", 22, True),
        ("relay.example", "relay.example", 22, True),
        ("relay.example", "RELAY.Example.", 22, True),
        ("RELAY.EXAMPLE.", "relay.example", 22, True),
        ("example", "relay.example", 22, True),
        (".example", "relay.example", 22, True),
        (".example", "example", 22, True),
        ("*.example", "relay.example", 22, True),
        ("*.example", "example", 22, True),
        ("example", "relayexample", 22, False),
        ("lay.example", "relay.example", 22, False),
        ("relay.example.org", "relay.example", 22, False),
        ("relay.example:22", "relay.example", 22, True),
        ("relay.example:23", "relay.example", 22, False),
        (".example:22", "a.relay.example", 22, True),
        ("a,b relay.example\tc", "relay.example", 22, True),
        (" , ,", "relay.example", 22, False),
        ("10.0.0.0/8", "10.1.2.3", 22, True),
        ("10.0.0.0/8", "11.1.2.3", 22, False),
        ("10.1.2.3", "10.1.2.3", 22, True),
        ("10.1.2.3:22", "10.1.2.3", 22, True),
        ("10.1.2.3:23", "10.1.2.3", 22, False),
        ("10.0.0.0/8:22", "10.9.9.9", 22, True),
        ("10.1.2.3/8", "10.200.0.1", 22, True),  # host bits set: as lenient as curl
        ("10.0.0.0/8", "relay.example", 22, False),  # names are not resolved
        ("::1", "::1", 22, True),
        ("::1", "[::1]", 22, True),
        ("[::1]", "::1", 22, True),
        ("[::1]:22", "::1", 22, True),
        ("[::1]:23", "::1", 22, False),
        ("fd00::/8", "fd12::5", 22, True),
        ("[fd00::/8]:22", "fd12::5", 22, True),
        ("fd00::/8", "10.0.0.1", 22, False),
        ("0.0.0.0/0", "fd00::1", 22, False),
        ("::/0", "10.0.0.1", 22, False),
        ("relay.example:", "relay.example", 22, False),  # malformed: ignored
        ("relay.example:x", "relay.example", 22, False),
        ("relay.example:0", "relay.example", 22, False),
        ("[::1", "::1", 22, False),
        ("[::1]x", "::1", 22, False),
        ("*foo", "foo", 22, False),
        (".", "relay.example", 22, False),
        ("10.1.2.3", "relay.example", 22, False),
    ],
)
def test_no_proxy_table(no_proxy: str, host: str, port: int, exempt: bool) -> None:
    assert no_proxy_matches(no_proxy, host, port) is exempt


@given(sub=labels, domain=names, port=ports, dot=st.sampled_from(["", ".", "*."]))
def test_no_proxy_domain_covers_subdomains(sub: str, domain: str, port: int, dot: str) -> None:
    assert no_proxy_matches(dot + domain, f"{sub}.{domain}", port)
    assert no_proxy_matches(dot + domain, domain, port)
    assert no_proxy_matches(f"{dot}{domain}:{port}", f"{sub}.{domain}", port)
    other = port % 65535 + 1
    assert not no_proxy_matches(f"{dot}{domain}:{port}", f"{sub}.{domain}", other)
    # A suffix that is not at a label boundary is a different domain.
    assert not no_proxy_matches(dot + domain, f"{sub}{domain}", port)


@given(
    address=st.ip_addresses(),
    prefix=st.integers(min_value=0, max_value=128),
    port=ports,
)
def test_no_proxy_cidr_matches_exactly_its_addresses(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int, port: int
) -> None:
    prefix = min(prefix, address.max_prefixlen)
    network = ipaddress.ip_network((address, prefix), strict=False)
    entry = str(network) if address.version == 4 else f"[{network}]"
    assert no_proxy_matches(entry, str(address), port)
    outside = int(network.broadcast_address) + 1
    if outside <= (2**address.max_prefixlen) - 1:
        other = (
            ipaddress.ip_address(outside)
            if address.version == 4
            else ipaddress.IPv6Address(outside)
        )
        assert not no_proxy_matches(entry, str(other), port)


# --- parse_response_head ------------------------------------------------------


def test_parse_response_head() -> None:
    head = (
        b"HTTP/1.0 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="x"\r\n'
        b"Proxy-Authenticate:\tNTLM  \r\n"
        b"Via: 1.1 squid (caf\xe9)\r\n\r\n"
    )
    response = parse_response_head(head)
    assert response.status == 407
    assert response.reason == "Proxy Authentication Required"
    assert response.values("Proxy-Authenticate") == ['Basic realm="x"', "NTLM"]
    assert response.values("via") == ["1.1 squid (café)"]
    assert parse_response_head(b"HTTP/1.1 200\r\n\r\n").reason == ""
    assert parse_response_head(b"HTTP/1.1 200 Connection established\r\n\r\n").status == 200


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\n\n",
        b"HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\rC: d\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 600 Nope\r\n\r\n",
        b"HTTP/1.1 200 OK\x00\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n  folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 65 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nA: " + b"x" * MAX_HEAD_BYTES + b"\r\n\r\n",
    ],
)
def test_parse_response_head_is_strict(head: bytes) -> None:
    with pytest.raises(ValueError, match=r"response head|status line|header line|more than"):
        parse_response_head(head)


# --- connect_via_proxy against a scripted proxy ---------------------------------


@dataclass
class FakeProxy:
    """Reads one request head per connection, then lets *script* answer."""

    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    port: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def config(self, username: str | None = "bob", password: str | None = SECRET) -> ProxyConfig:
        return ProxyConfig("127.0.0.1", self.port, username, password)


def answer(*chunks: bytes, then_echo: bool = False) -> Callable[..., Awaitable[None]]:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        if then_echo:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    return script


@pytest.fixture
async def fake_proxy() -> AsyncIterator[Callable[..., Awaitable[FakeProxy]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Callable[..., Awaitable[None]]) -> FakeProxy:
        proxy = FakeProxy(script)
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        servers.append(server)
        proxy.port = server.sockets[0].getsockname()[1]
        return proxy

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(5):
        while len(data) < size:
            chunk = await loop.sock_recv(sock, size - len(data))
            assert chunk, "closed early"
            data += chunk
    return data


BANNER = b"SSH-2.0-relay\r\n"


async def test_request_and_bytes_right_after_the_head_are_kept(
    fake_proxy: Callable[..., Awaitable[FakeProxy]],
) -> None:
    # The SSH server speaks first: its banner arrives glued to the proxy's 200.
    proxy = await fake_proxy(
        answer(b"HTTP/1.1 200 Connection established\r\n\r\n" + BANNER, then_echo=True)
    )
    with capture_logs() as logs:
        sock = await connect_via_proxy(proxy.config(), "Relay.Example", 2222, timeout=5)
    with sock:
        assert sock.getblocking() is False
        assert await recv_exactly(sock, len(BANNER)) == BANNER
        await asyncio.get_running_loop().sock_sendall(sock, b"ping")
        assert await recv_exactly(sock, 4) == b"ping"
    token = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert proxy.requests == [
        b"CONNECT Relay.Example:2222 HTTP/1.1\r\nHost: Relay.Example:2222\r\n"
        + f"Proxy-Authorization: Basic {token}\r\n\r\n".encode()
    ]
    assert SECRET not in repr(logs)
    assert token not in repr(logs)
    assert logs == [
        {
            "event": "relay_via_proxy",
            "log_level": "debug",
            "proxy": f"http://bob@127.0.0.1:{proxy.port}",
            "target": "Relay.Example:2222",
            "status": 200,
        }
    ]


async def test_no_credentials_no_authorization_header(
    fake_proxy: Callable[..., Awaitable[FakeProxy]],
) -> None:
    proxy = await fake_proxy(answer(b"HTTP/1.0 200 OK\r\nVia: x\r\n\r\n"))
    sock = await connect_via_proxy(proxy.config(None, None), "::1", 22, timeout=5)
    sock.close()
    assert proxy.requests == [b"CONNECT [::1]:22 HTTP/1.1\r\nHost: [::1]:22\r\n\r\n"]


async def test_head_dribbling_in_byte_by_byte(
    fake_proxy: Callable[..., Awaitable[FakeProxy]],
) -> None:
    head = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n"
    proxy = await fake_proxy(answer(*[bytes([b]) for b in head + BANNER]))
    sock = await connect_via_proxy(proxy.config(), "relay", 22, timeout=5)
    with sock:
        assert await recv_exactly(sock, len(BANNER)) == BANNER


@pytest.mark.parametrize(
    ("reply", "kind", "status", "says"),
    [
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b"Proxy-Authenticate: NTLM\r\nProxy-Authenticate: Negotiate\r\n\r\n",
            ProxyAuthRejected,
            407,
            "offers only negotiate, ntlm authentication and the agent speaks Basic only",
        ),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="corp"\r\n\r\n',
            ProxyAuthRejected,
            407,
            "check the user and password in the proxy setting",
        ),
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
            ProxyRefused,
            403,
            "the proxy refused CONNECT to relay:2222 — allow it in the proxy's ACL",
        ),
        (
            b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ProxyError,
            502,
            "the proxy could not reach relay:2222",
        ),
        (
            b"HTTP/1.1 405 Method Not Allowed\r\n\r\n",
            ProxyError,
            405,
            "the proxy does not accept CONNECT requests",
        ),
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://login.corp/\r\n\r\n",
            ProxyError,
            302,
            "302 Found: the proxy did not open a tunnel; check the proxy setting",
        ),
    ],
)
async def test_refusals(
    fake_proxy: Callable[..., Awaitable[FakeProxy]],
    reply: bytes,
    kind: type[ProxyError],
    status: int,
    says: str,
) -> None:
    proxy = await fake_proxy(answer(reply))
    with pytest.raises(kind) as caught:
        await connect_via_proxy(proxy.config(), "relay", 2222, timeout=5)
    error = caught.value
    assert type(error) is kind
    assert error.status == status
    assert error.needs_operator is (kind is not ProxyError)
    message = str(error)
    assert says in message
    assert message.startswith(f"proxy http://bob@127.0.0.1:{proxy.port} (from the proxy setting)")
    assert SECRET not in message


def test_error_families() -> None:
    # The supervisor retries TunnelErrors; needs_operator slows retries down.
    assert issubclass(ProxyAuthRejected, ProxyError)
    assert issubclass(ProxyRefused, ProxyError)
    assert issubclass(ProxyError, RelayUnreachable)
    assert issubclass(ProxyError, TunnelError)
    assert not ProxyError.needs_operator


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (b"", "closed the connection without answering CONNECT"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection without answering CONNECT"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "gave an answer to CONNECT that is not HTTP"),
        (b"HTTP/1.1 200 OK\r\nA: " + b"x" * MAX_HEAD_BYTES, f"within {MAX_HEAD_BYTES} bytes"),
    ],
)
async def test_broken_answers(
    fake_proxy: Callable[..., Awaitable[FakeProxy]], reply: bytes, says: str
) -> None:
    proxy = await fake_proxy(answer(reply))
    with pytest.raises(ProxyError) as caught:
        await connect_via_proxy(proxy.config(), "relay", 2222, timeout=5)
    assert says in str(caught.value)
    assert not caught.value.needs_operator


async def test_silent_proxy_times_out_with_a_clear_message(
    fake_proxy: Callable[..., Awaitable[FakeProxy]],
) -> None:
    never = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    proxy = await fake_proxy(hang)
    with pytest.raises(ProxyError) as caught:
        await connect_via_proxy(proxy.config(), "relay", 2222, timeout=0.2)
    assert str(caught.value) == (
        f"proxy http://bob@127.0.0.1:{proxy.port} (from the proxy setting) did not answer "
        "CONNECT relay:2222 within 0.2 s; check the proxy's address and that it is up"
    )
    never.set()


async def test_nothing_listening() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        port = unused.getsockname()[1]
        config = ProxyConfig("127.0.0.1", port, "bob", SECRET, source="HTTPS_PROXY")
        with pytest.raises(ProxyError) as caught:
            await connect_via_proxy(config, "relay", 2222, timeout=5)
    assert str(caught.value) == (
        f"cannot connect to proxy http://bob@127.0.0.1:{port} (from HTTPS_PROXY): "
        "Connection refused; check the proxy's host and port in HTTPS_PROXY"
    )


async def test_relay_host_that_cannot_go_in_a_request_line() -> None:
    with pytest.raises(ProxyError, match="xn--"):
        await connect_via_proxy(ProxyConfig("127.0.0.1", 9), "bad host\r\n", 22, timeout=1)


def test_works_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> bytes:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + BANNER)
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(script, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            sock = await connect_via_proxy(ProxyConfig("127.0.0.1", port), "r", 22, timeout=5)
            with sock:
                return await recv_exactly(sock, len(BANNER))

    assert uvloop.run(scenario()) == BANNER


async def test_cancelling_closes_the_socket(
    fake_proxy: Callable[..., Awaitable[FakeProxy]],
) -> None:
    waiting, closed = asyncio.Event(), asyncio.Event()

    async def wait_for_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        waiting.set()
        await reader.read()
        closed.set()

    proxy = await fake_proxy(wait_for_eof)
    task = asyncio.create_task(connect_via_proxy(proxy.config(), "relay", 2222, timeout=30))
    async with asyncio.timeout(5):
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await closed.wait()  # the proxy saw the agent's side close
