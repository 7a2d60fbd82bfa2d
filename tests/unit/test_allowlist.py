"""Tests for agent.allowlist: which destinations the agent may connect to."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.allowlist import Allowlist, AllowRule, IPAddress, IPNetwork, Verdict

ip = ipaddress.ip_address
net = ipaddress.ip_network


# --- AllowRule.parse ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "lo", "hi", "normalised"),
    [
        ("inventory.internal:8443", "inventory.internal", 8443, 8443, None),
        ("Inventory.Internal.:8443", "inventory.internal", 8443, 8443, "inventory.internal:8443"),
        ("  db-api:80-90 ", "db-api", 80, 90, "db-api:80-90"),
        ("db-api:80-80", "db-api", 80, 80, "db-api:80"),
        ("*.corp.example:443", "*.corp.example", 443, 443, None),
        ("*.CORP.example.:443", "*.corp.example", 443, 443, "*.corp.example:443"),
        ("*.internal:*", "*.internal", 1, 65535, None),
        ("localhost:1-65535", "localhost", 1, 65535, "localhost:*"),
        ("10.20.0.0/16:*", net("10.20.0.0/16"), 1, 65535, None),
        ("10.20.0.7:443", net("10.20.0.7/32"), 443, 443, None),
        ("10.20.0.7/32:443", net("10.20.0.7/32"), 443, 443, "10.20.0.7:443"),
        ("0.0.0.0/0:443", net("0.0.0.0/0"), 443, 443, None),
        ("[fd00::1]:443", net("fd00::1/128"), 443, 443, None),
        ("[FD00:0::1/128]:443", net("fd00::1/128"), 443, 443, "[fd00::1]:443"),
        ("[fd00::/8]:*", net("fd00::/8"), 1, 65535, None),
        ("[::/0]:22", net("::/0"), 22, 22, None),
        # An IPv4-mapped rule is the IPv4 rule it spells, as addresses are checked.
        ("[::ffff:10.0.0.1]:80", net("10.0.0.1/32"), 80, 80, "10.0.0.1:80"),
        ("[::ffff:10.0.0.0/104]:80", net("10.0.0.0/8"), 80, 80, "10.0.0.0/8:80"),
    ],
)
def test_parse_valid(
    text: str, host: str | IPNetwork, lo: int, hi: int, normalised: str | None
) -> None:
    rule = AllowRule.parse(text)
    assert rule == AllowRule(host, lo, hi)
    assert str(rule) == (normalised or text)
    assert AllowRule.parse(str(rule)) == rule


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty rule"),
        ("   ", "empty rule"),
        ("inventory.internal", "add ':PORT' or ':*'"),
        ("10.20.0.0/16", "add ':PORT' or ':*'"),
        ("[fd00::1]", "add ':PORT' or ':*'"),
        ("*.corp.example", "add ':PORT' or ':*'"),
        ("inventory.internal:", "invalid port ''"),
        ("inventory.internal:0", "invalid port '0'"),
        ("inventory.internal:65536", "invalid port '65536'"),
        ("inventory.internal:http", "invalid port 'http'"),
        ("inventory.internal:-5", "invalid port ''"),
        ("inventory.internal:80-", "invalid port ''"),
        ("inventory.internal:80-90-100", "invalid port '90-100'"),
        ("inventory.internal:90-80", "runs backwards"),
        ("inventory.internal:**", "invalid port '**'"),
        ("10.0.0.0/33:*", "invalid CIDR prefix length"),
        ("10.0.0.0/-1:*", "invalid CIDR prefix length"),
        ("10.0.0.0/:*", "invalid CIDR prefix length"),
        ("10.0.0.0/255.0.0.0:*", "invalid CIDR prefix length"),
        ("[fd00::/129]:*", "invalid CIDR prefix length"),
        ("10.20.0.1/16:*", "did you mean 10.20.0.0/16?"),
        ("[fd00::1/8]:*", "did you mean [fd00::/8]?"),
        ("10.0.0.256:80", "invalid IPv4 address"),
        ("10.1:80", "invalid IPv4 address"),
        ("010.0.0.1:80", "invalid IPv4 address"),
        ("fd00::/8:*", "needs brackets"),
        ("fd00::1:443", "needs brackets"),
        ("[10.0.0.1]:443", "invalid IPv6 address"),
        ("[fd00::1:443", "unclosed"),
        ("[fd00::1]443", "expected ':PORTS'"),
        ("[fe80::1%eth0]:443", "zone IDs"),
        ("*:443", "bare '*'"),
        ("*corp.example:443", "'*.' and a domain"),
        ("a.*.example:443", "'*.' and a domain"),
        ("*.*.example:443", "'*.' and a domain"),
        ("*.10.0.0.1:443", "domain name after '*.'"),
        ("*.:443", "empty host"),
        ("-bad.example:443", "invalid label"),
        ("bad_name:443", "invalid label"),
        ("b\u00fccher.example:443", "xn--"),
        ("0x0a000001:443", "dotted-quad"),
    ],
)
def test_parse_invalid_names_the_rule_and_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as info:
        AllowRule.parse(text)
    assert str(info.value).startswith(f"{text!r}: ")


def test_parse_error_example_from_the_brief() -> None:
    with pytest.raises(ValueError, match=r"^'10\.0\.0\.0/33:\*': invalid CIDR prefix length$"):
        AllowRule.parse("10.0.0.0/33:*")


def test_rule_rejects_bad_ports_when_built_directly() -> None:
    with pytest.raises(ValueError, match="port range"):
        AllowRule("example.com", 0, 80)
    with pytest.raises(ValueError, match="port range"):
        AllowRule("example.com", 90, 80)


# --- Allowlist ---------------------------------------------------------------

RULES = [
    "inventory.internal:8443",
    "*.corp.example:443",
    "10.20.0.0/16:*",
    "db-api:80-90",
    "[fd00::/8]:443",
]


@pytest.fixture
def allowlist() -> Allowlist:
    return Allowlist.parse(RULES)


@pytest.mark.parametrize(
    ("host", "port", "verdict", "rule"),
    [
        ("inventory.internal", 8443, Verdict.ALLOWED, "inventory.internal:8443"),
        ("INVENTORY.Internal.", 8443, Verdict.ALLOWED, "inventory.internal:8443"),
        ("api.corp.example", 443, Verdict.ALLOWED, "*.corp.example:443"),
        ("a.b.corp.example", 443, Verdict.ALLOWED, "*.corp.example:443"),
        ("db-api", 80, Verdict.ALLOWED, "db-api:80-90"),
        ("db-api", 90, Verdict.ALLOWED, "db-api:80-90"),
        ("10.20.255.1", 5432, Verdict.ALLOWED, "10.20.0.0/16:*"),
        ("::ffff:10.20.0.1", 22, Verdict.ALLOWED, "10.20.0.0/16:*"),
        ("[::ffff:10.20.0.1]", 22, Verdict.ALLOWED, "10.20.0.0/16:*"),
        ("fd12::1", 443, Verdict.ALLOWED, "[fd00::/8]:443"),
        ("[FD12::1]", 443, Verdict.ALLOWED, "[fd00::/8]:443"),
        # A name that no name rule matches may still resolve into 10.20.0.0/16.
        ("corp.example", 443, Verdict.CHECK_ADDRESSES, None),
        ("inventory.internal", 443, Verdict.CHECK_ADDRESSES, None),
        ("db-api", 91, Verdict.CHECK_ADDRESSES, None),
        ("evilcorp.example", 443, Verdict.CHECK_ADDRESSES, None),
        # IP literals are decided at once, never "resolved".
        ("10.21.0.1", 443, Verdict.DENIED, None),
        ("fd12::1", 444, Verdict.DENIED, None),
        ("fe80::1", 443, Verdict.DENIED, None),
        ("::ffff:10.21.0.1", 443, Verdict.DENIED, None),
        # Not a valid host at all: nothing to resolve.
        ("bad host", 443, Verdict.DENIED, None),
        ("", 443, Verdict.DENIED, None),
        ("127.1", 443, Verdict.DENIED, None),
        ("db-api", 0, Verdict.DENIED, None),
        ("db-api", 70000, Verdict.DENIED, None),
    ],
)
def test_check_name(
    allowlist: Allowlist, host: str, port: int, verdict: Verdict, rule: str | None
) -> None:
    got_verdict, got_rule = allowlist.check_name(host, port)
    assert got_verdict is verdict
    assert (None if got_rule is None else str(got_rule)) == rule


def test_check_name_denies_without_resolving_when_no_address_rule_covers_the_port() -> None:
    allowlist = Allowlist.parse(["*.corp.example:443", "10.0.0.0/8:80"])
    assert allowlist.check_name("other.example", 443) == (Verdict.DENIED, None)
    assert allowlist.check_name("other.example", 80) == (Verdict.CHECK_ADDRESSES, None)
    assert Allowlist.parse(["db-api:80"]).check_name("db-api.", 81) == (Verdict.DENIED, None)


def test_wildcard_never_matches_its_own_suffix() -> None:
    allowlist = Allowlist.parse(["*.corp.example:443"])
    assert allowlist.check_name("corp.example", 443) == (Verdict.DENIED, None)
    assert allowlist.check_name("xcorp.example", 443) == (Verdict.DENIED, None)
    assert allowlist.check_name("x.corp.example", 443)[0] is Verdict.ALLOWED


@pytest.mark.parametrize(
    ("address", "port", "rule"),
    [
        ("10.20.0.1", 1, "10.20.0.0/16:*"),
        ("::ffff:10.20.0.1", 1, "10.20.0.0/16:*"),
        ("fd00::1", 443, "[fd00::/8]:443"),
        ("fd00::1", 80, None),
        ("10.21.0.1", 443, None),
        ("::ffff:a14:1", 443, "10.20.0.0/16:*"),
        ("::10.20.0.1", 443, None),  # IPv4-compatible, not mapped: an IPv6 address
        ("64:ff9b::10.20.0.1", 443, None),  # NAT64 goes through a gateway
    ],
)
def test_check_address(allowlist: Allowlist, address: str, port: int, rule: str | None) -> None:
    got = allowlist.check_address(ip(address), port)
    assert (None if got is None else str(got)) == rule


def test_check_address_ignores_name_rules() -> None:
    allowlist = Allowlist.parse(["10.0.0.1.nip.example:80", "inventory.internal:*"])
    assert allowlist.check_address(ip("10.0.0.1"), 80) is None


def test_ipv6_rule_does_not_cover_mapped_ipv4() -> None:
    allowlist = Allowlist.parse(["[::/0]:*"])
    assert allowlist.check_address(ip("::ffff:10.0.0.1"), 80) is None
    assert allowlist.check_name("::ffff:10.0.0.1", 80) == (Verdict.DENIED, None)
    assert allowlist.check_address(ip("2001:db8::1"), 80) is not None


def test_first_matching_rule_is_reported() -> None:
    allowlist = Allowlist.parse(["10.0.0.0/8:*", "10.1.0.0/16:443", "a.example:*", "*.example:*"])
    assert str(allowlist.check_address(ip("10.1.0.1"), 443)) == "10.0.0.0/8:*"
    assert str(allowlist.check_name("a.example", 1)[1]) == "a.example:*"


def test_empty_allowlist_denies_everything() -> None:
    allowlist = Allowlist([])
    assert len(allowlist) == 0
    assert allowlist.check_name("anything.example", 443) == (Verdict.DENIED, None)
    assert allowlist.check_name("10.0.0.1", 443) == (Verdict.DENIED, None)
    assert allowlist.check_address(ip("10.0.0.1"), 443) is None


def test_len_iter_repr(allowlist: Allowlist) -> None:
    assert len(allowlist) == len(RULES)
    assert [str(rule) for rule in allowlist] == RULES
    assert repr(allowlist) == f"<Allowlist [{', '.join(RULES)}]>"
    many = Allowlist.parse([f"h{i}.example:{i + 1}" for i in range(20)])
    assert repr(many).endswith(", ... 12 more]>")


def test_parse_names_every_bad_rule() -> None:
    with pytest.raises(ValueError, match="invalid allowlist rule") as info:
        Allowlist.parse(["ok.example:443", "inventory.internal", "10.0.0.0/33:*"])
    message = str(info.value)
    assert "'inventory.internal': no port: add ':PORT' or ':*'" in message
    assert "'10.0.0.0/33:*': invalid CIDR prefix length" in message
    assert "ok.example" not in message


def test_parse_refuses_a_single_string() -> None:
    with pytest.raises(TypeError, match="sequence of rules"):
        Allowlist.parse("inventory.internal:443")


# --- property: Allowlist agrees with a brute-force reference model ---------------

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_LABELS = ["a", "b", "corp", "internal", "x-1"]
_PORTS = [1, 79, 80, 443, 444, 8080, 65535]


@dataclass(frozen=True)
class RefRule:
    """A rule as the test generated it, before it became text."""

    kind: str  # "name", "wildcard" or "network"
    name: str  # for "name" the name, for "wildcard" the suffix
    network: IPNetwork | None
    lo: int
    hi: int


def ref_name_allows(rule: RefRule, name: str, port: int) -> bool:
    if not rule.lo <= port <= rule.hi:
        return False
    if rule.kind == "name":
        return name == rule.name
    if rule.kind == "wildcard":
        return name.endswith("." + rule.name)
    return False


def ref_address_allows(rule: RefRule, address: IPAddress, port: int) -> bool:
    if rule.network is None or not rule.lo <= port <= rule.hi:
        return False
    # An IPv4 destination, however it is written, is covered by an IPv4 rule
    # containing it or by an IPv6 rule inside ::ffff:0:0/96 containing its
    # mapped form; an IPv6 rule outside that block never covers IPv4.
    v4 = address if address.version == 4 else address.ipv4_mapped
    if v4 is None:
        return address in rule.network
    if rule.network.version == 4:
        return v4 in rule.network
    return rule.network.subnet_of(_MAPPED) and ip(f"::ffff:{v4}") in rule.network


def ref_allows(
    rules: Sequence[RefRule], host: str, port: int, resolved: Sequence[IPAddress]
) -> bool:
    """Whether a connection to host:port may go ahead, by brute force."""
    name = host.strip("[]").lower().removesuffix(".")
    try:
        literal = ip(name)
    except ValueError:
        pass
    else:
        return any(ref_address_allows(rule, literal, port) for rule in rules)
    if any(ref_name_allows(rule, name, port) for rule in rules):
        return True
    return bool(resolved) and all(
        any(ref_address_allows(rule, address, port) for rule in rules) for address in resolved
    )


def impl_allows(allowlist: Allowlist, host: str, port: int, resolved: Sequence[IPAddress]) -> bool:
    """The decision the agent's proxy makes with the allowlist."""
    verdict, _ = allowlist.check_name(host, port)
    if verdict is Verdict.CHECK_ADDRESSES:
        return bool(resolved) and all(
            allowlist.check_address(address, port) is not None for address in resolved
        )
    return verdict is Verdict.ALLOWED


names = st.lists(st.sampled_from(_LABELS), min_size=1, max_size=3).map(".".join)
ipv4s = st.integers(0, 15).map(lambda i: ipaddress.IPv4Address(f"10.0.0.{i}"))
ipv6s = st.integers(0, 15).map(lambda i: ipaddress.IPv6Address(f"fd00::{i:x}"))
mapped = ipv4s.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))
addresses: st.SearchStrategy[IPAddress] = st.one_of(ipv4s, ipv6s, mapped)


def _network(address: IPAddress, prefix: int) -> IPNetwork:
    return ipaddress.ip_network((address, prefix), strict=False)


networks = st.one_of(
    st.builds(_network, ipv4s, st.integers(26, 32)),
    st.builds(_network, ipv6s, st.integers(122, 128)),
    st.builds(_network, mapped, st.integers(122, 128)),
    st.sampled_from([net("0.0.0.0/0"), net("::/0"), net("::ffff:0:0/96"), net("fd00::/8")]),
)


@st.composite
def port_ranges(draw: st.DrawFn) -> tuple[int, int]:
    lo, hi = sorted(draw(st.lists(st.sampled_from(_PORTS), min_size=2, max_size=2)))
    return draw(st.sampled_from([(lo, hi), (lo, lo), (1, 65535)]))


@st.composite
def ref_rules(draw: st.DrawFn) -> RefRule:
    kind = draw(st.sampled_from(["name", "wildcard", "network"]))
    lo, hi = draw(port_ranges())
    if kind == "network":
        return RefRule(kind, "", draw(networks), lo, hi)
    return RefRule(kind, draw(names), None, lo, hi)


def spell_host(name: str, draw: st.DrawFn) -> str:
    """Write a name the way a user might: any case, maybe a trailing dot."""
    cased = "".join(draw(st.sampled_from([c, c.upper()])) for c in name)
    return cased + draw(st.sampled_from(["", "."]))


@st.composite
def rule_texts(draw: st.DrawFn, rule: RefRule) -> str:
    if rule.kind == "name":
        host = spell_host(rule.name, draw)
    elif rule.kind == "wildcard":
        host = "*." + spell_host(rule.name, draw)
    else:
        assert rule.network is not None
        single = rule.network.prefixlen == rule.network.max_prefixlen
        host = str(rule.network.network_address if single and draw(st.booleans()) else rule.network)
        if rule.network.version == 6:
            host = f"[{host}]"
    if (rule.lo, rule.hi) == (1, 65535) and draw(st.booleans()):
        ports = "*"
    elif rule.lo == rule.hi and draw(st.booleans()):
        ports = str(rule.lo)
    else:
        ports = f"{rule.lo}-{rule.hi}"
    return f"{host}:{ports}"


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, int, list[IPAddress]]:
    if draw(st.booleans()):
        host = spell_host(draw(names), draw)
    else:
        address = draw(addresses)
        host = str(address)
        if address.version == 6 and draw(st.booleans()):
            host = f"[{host}]"
    return host, draw(st.sampled_from(_PORTS)), draw(st.lists(addresses, max_size=3))


@settings(max_examples=300)
@given(st.data(), st.lists(ref_rules(), max_size=6), queries())
def test_allowlist_agrees_with_reference_model(
    data: st.DataObject, rules: list[RefRule], query: tuple[str, int, list[IPAddress]]
) -> None:
    texts = [data.draw(rule_texts(rule)) for rule in rules]
    allowlist = Allowlist.parse(texts)
    host, port, resolved = query

    # The decision the agent takes, end to end.
    assert impl_allows(allowlist, host, port, resolved) == ref_allows(rules, host, port, resolved)

    # Each step on its own.
    verdict, matched = allowlist.check_name(host, port)
    name = host.strip("[]").lower().removesuffix(".")
    literal: IPAddress | None
    try:
        literal = ip(name)
    except ValueError:
        literal = None
    if literal is not None:
        assert verdict is not Verdict.CHECK_ADDRESSES
    else:
        name_match = any(ref_name_allows(rule, name, port) for rule in rules)
        some_address_rule = any(
            rule.kind == "network" and rule.lo <= port <= rule.hi for rule in rules
        )
        expected = (
            Verdict.ALLOWED
            if name_match
            else Verdict.CHECK_ADDRESSES
            if some_address_rule
            else Verdict.DENIED
        )
        assert verdict is expected
    if verdict is Verdict.ALLOWED:
        assert matched is not None
        ref = rules[list(allowlist).index(matched)]
        if literal is None:
            assert ref_name_allows(ref, name, port)
        else:
            assert ref_address_allows(ref, literal, port)
    else:
        assert matched is None
    for address in resolved:
        rule = allowlist.check_address(address, port)
        expected_allowed = any(ref_address_allows(r, address, port) for r in rules)
        assert (rule is not None) == expected_allowed
        if rule is not None:
            ref = rules[list(allowlist).index(rule)]
            assert ref_address_allows(ref, address, port)


@settings(max_examples=200)
@given(st.data(), ref_rules())
def test_rule_text_round_trips(data: st.DataObject, rule: RefRule) -> None:
    parsed = AllowRule.parse(data.draw(rule_texts(rule)))
    assert AllowRule.parse(str(parsed)) == parsed
    assert str(AllowRule.parse(str(parsed))) == str(parsed)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.3.4.5", "169.254.169.254", "::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1"],
)
def test_name_rules_refuse_loopback_and_link_local_answers(address: str) -> None:
    allow = Allowlist.parse(["*.corp.test:443", "api.corp.test:443"])
    assert allow.check_name("evil.corp.test", 443)[0] is Verdict.ALLOWED
    assert not allow.allows_for_name(ipaddress.ip_address(address), 443)


def test_an_address_rule_names_a_loopback_answer_explicitly() -> None:
    allow = Allowlist.parse(["localhost:8080", "127.0.0.1:8080", "[fe80::/10]:8080"])
    assert allow.allows_for_name(ipaddress.ip_address("127.0.0.1"), 8080)
    assert allow.allows_for_name(ipaddress.ip_address("fe80::9"), 8080)
    assert not allow.allows_for_name(ipaddress.ip_address("127.0.0.1"), 9090)
    assert not allow.allows_for_name(ipaddress.ip_address("127.0.0.2"), 8080)


def test_name_rules_keep_private_and_public_answers() -> None:
    allow = Allowlist.parse(["*.corp.test:443"])
    for address in ["10.1.2.3", "192.168.0.9", "fd00::5", "8.8.8.8"]:
        assert allow.allows_for_name(ipaddress.ip_address(address), 443), address
