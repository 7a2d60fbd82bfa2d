"""Cloud mode's SSRF check judges IPv6 forms that carry an IPv4 address by
the IPv4 address they carry."""

from __future__ import annotations

import pytest

from server.proxy.cloud_http import is_public


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a00:1",  # 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # 169.254.169.254 (cloud metadata)
        "64:ff9b:1::a00:1",  # local-use NAT64: refused whatever it carries
        "64:ff9b:1:ffff::808:808",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:c0a8:101::",  # 6to4 of 192.168.1.1
        "::127.0.0.1",  # IPv4-compatible
        "::10.1.2.3",
        "::169.254.169.254",
        "::ffff:127.0.0.1",  # IPv4-mapped (held before)
        "::1",
        "::",
    ],
)
def test_ipv6_forms_of_private_ipv4_are_not_public(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::808:808", "2002:808:808::1", "::8.8.8.8", "::ffff:8.8.8.8", "2606:4700::1111"],
)
def test_ipv6_forms_of_public_ipv4_stay_public(address: str) -> None:
    assert is_public(address)
