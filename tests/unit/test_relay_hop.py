"""The relay-to-relay header: signed with a key from the master key, fresh, bound to the request."""

from __future__ import annotations

from server.cluster.forward import HOP_MAX_AGE, HopAuth
from server.secrets.crypto import MasterKey, SecretBox


def _hop(key: MasterKey, relay_id: str, now: float) -> HopAuth:
    return HopAuth(SecretBox(key).derive("sluice/relay-hop/v1"), relay_id, clock=lambda: now)


def test_a_signature_verifies_only_for_its_request_its_key_and_its_time() -> None:
    key = MasterKey.generate()
    sender = _hop(key, "rly_a", 1000.0)
    value = sender.sign("GET", "con_1", "/hello?x=1")
    receiver = _hop(key, "rly_b", 1010.0)
    assert receiver.check(value, "GET", "con_1", "/hello?x=1") == ("rly_a", "")
    assert receiver.check(value, "POST", "con_1", "/hello?x=1") is None
    assert receiver.check(value, "GET", "con_2", "/hello?x=1") is None
    assert receiver.check(value, "GET", "con_1", "/hello?x=2") is None
    assert receiver.check(value.replace("rly_a", "rly_c"), "GET", "con_1", "/hello?x=1") is None
    late = _hop(key, "rly_b", 1000.0 + HOP_MAX_AGE + 1)
    assert late.check(value, "GET", "con_1", "/hello?x=1") is None
    other_cluster = _hop(MasterKey.generate(), "rly_b", 1000.0)
    assert other_cluster.check(value, "GET", "con_1", "/hello?x=1") is None
    for junk in ("", "a.b", "a.b.c", "rly_a.1000", "rly_a.x.00"):
        assert receiver.check(junk, "GET", "con_1", "/hello?x=1") is None
