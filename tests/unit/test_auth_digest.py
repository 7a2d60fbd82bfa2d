"""RFC 7616 digest answers, checked against the RFC's own examples (§3.9.1)."""

from __future__ import annotations

from server.proxy.auth.basic import basic_credentials
from server.proxy.auth.digest import Challenge, answer, parse_challenges

RFC_CHALLENGES = [
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
]
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def _field(header: str, name: str) -> str:
    for part in header.removeprefix("Digest ").split(", "):
        key, _, value = part.partition("=")
        if key == name:
            return value.strip('"')
    raise AssertionError(f"{name} not in {header}")


def test_rfc_7616_examples_md5_and_sha256() -> None:
    challenges = parse_challenges(RFC_CHALLENGES)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    expected = {
        "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    }
    for challenge in challenges:
        header = answer(
            challenge, "Mufasa", "Circle of Life", "GET", "/dir/index.html", cnonce=CNONCE
        )
        assert _field(header, "response") == expected[challenge.algorithm]
        assert _field(header, "nc") == "00000001"
        assert _field(header, "qop") == "auth"
        assert _field(header, "opaque") == challenge.opaque


def test_nc_counts_up_on_a_reused_nonce() -> None:
    challenge = Challenge(realm="r", nonce="n", qop="auth")
    answer(challenge, "u", "p", "GET", "/")
    second = answer(challenge, "u", "p", "GET", "/")
    assert _field(second, "nc") == "00000002"


def test_parse_picks_digest_among_other_schemes_and_reads_stale() -> None:
    found = parse_challenges(
        ['Basic realm="x", Digest realm="r", nonce="abc", qop="auth", stale=TRUE']
    )
    assert len(found) == 1
    assert found[0].stale
    assert found[0].nonce == "abc"
    assert parse_challenges(['Digest realm="r", nonce="n", qop="auth-int"']) == []
    assert parse_challenges(['Digest realm="r", nonce="n", algorithm=SHA-1']) == []


def test_basic_is_utf8() -> None:
    # RFC 7617 §2.1's example: test / 123£ with charset UTF-8.
    assert basic_credentials("test", "123\u00a3") == "Basic dGVzdDoxMjPCow=="


def test_an_unsaved_connections_state_goes_with_its_handle() -> None:
    import gc

    from server.proxy.auth.base import States

    class FakeHandle:
        id: str | None = None

    states: States[list[str]] = States(list)
    handle = FakeHandle()
    states.get(handle).append("token")  # type: ignore[arg-type]
    assert states.get(handle) == ["token"]  # type: ignore[arg-type]
    saved = FakeHandle()
    saved.id = "con_1"
    states.get(saved)  # type: ignore[arg-type]
    assert len(states) == 2
    del handle
    gc.collect()
    assert len(states) == 1  # the saved one stays until forgotten
    states.forget("con_1")
    assert len(states) == 0
