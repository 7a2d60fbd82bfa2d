from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.secrets.crypto import (
    DecryptionError,
    MasterKey,
    SecretBox,
    load_or_create_master_key,
)

CONTEXT = "connection:con_1:http.auth.token"


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def box(key: MasterKey) -> SecretBox:
    return SecretBox(key)


@given(plaintext=st.text())
def test_round_trip(plaintext: str) -> None:
    box = SecretBox(MasterKey(b"k" * 32))
    token = box.encrypt(plaintext, context=CONTEXT)
    assert box.decrypt(token, context=CONTEXT) == plaintext


def test_token_is_self_describing(key: MasterKey, box: SecretBox) -> None:
    token = box.encrypt("s3cret", context=CONTEXT)
    version, key_id, nonce, _sealed = token.split(".")
    assert version == "v1"
    assert key_id == key.key_id
    assert len(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))) == 12
    assert "s3cret" not in token


def test_fresh_nonce_per_value(box: SecretBox) -> None:
    tokens = {box.encrypt("same", context=CONTEXT) for _ in range(50)}
    assert len(tokens) == 50
    nonces = {token.split(".")[2] for token in tokens}
    assert len(nonces) == 50


def test_wrong_context_fails(box: SecretBox) -> None:
    token = box.encrypt("s3cret", context="connection:con_1:http.auth.token")
    with pytest.raises(DecryptionError) as info:
        box.decrypt(token, context="connection:con_1:http.encrypted.password")
    assert "s3cret" not in str(info.value)
    assert "http.encrypted.password" in str(info.value)


def test_other_connection_context_fails(box: SecretBox) -> None:
    token = box.encrypt("s3cret", context="connection:con_1:http.auth.token")
    with pytest.raises(DecryptionError):
        box.decrypt(token, context="connection:con_2:http.auth.token")


def test_tampered_ciphertext_fails(box: SecretBox) -> None:
    token = box.encrypt("s3cret", context=CONTEXT)
    version, key_id, nonce, sealed = token.split(".")
    flipped = ("A" if sealed[0] != "A" else "B") + sealed[1:]
    with pytest.raises(DecryptionError) as info:
        box.decrypt(".".join([version, key_id, nonce, flipped]), context=CONTEXT)
    assert "altered" in str(info.value)


def test_tampered_nonce_fails(box: SecretBox) -> None:
    token = box.encrypt("s3cret", context=CONTEXT)
    version, key_id, nonce, sealed = token.split(".")
    flipped = ("A" if nonce[0] != "A" else "B") + nonce[1:]
    with pytest.raises(DecryptionError):
        box.decrypt(".".join([version, key_id, flipped, sealed]), context=CONTEXT)


@pytest.mark.parametrize(
    "token",
    ["", "s3cret", "v2.abcdef01.AAAA.AAAA", "v1.abcdef01.AAAA", "v1.nothex!!.AAAAAAAAAAAAAAAA.AA"],
)
def test_malformed_token_fails(box: SecretBox, token: str) -> None:
    with pytest.raises(DecryptionError) as info:
        box.decrypt(token, context=CONTEXT)
    assert "not a sealed value" in str(info.value)
    with pytest.raises(DecryptionError):
        box.needs_rotation(token)


def test_rotation() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    old_token = SecretBox(old).encrypt("s3cret", context=CONTEXT)

    rotating = SecretBox(new, [old])
    assert rotating.decrypt(old_token, context=CONTEXT) == "s3cret"
    assert rotating.needs_rotation(old_token)

    new_token = rotating.rotate(old_token, context=CONTEXT)
    assert not rotating.needs_rotation(new_token)
    assert new_token.split(".")[1] == new.key_id
    assert rotating.rotate(new_token, context=CONTEXT) == new_token
    assert SecretBox(new).decrypt(new_token, context=CONTEXT) == "s3cret"


def test_unknown_key_names_the_key_id() -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    old_token = SecretBox(old).encrypt("s3cret", context=CONTEXT)
    with pytest.raises(DecryptionError) as info:
        SecretBox(new).decrypt(old_token, context=CONTEXT)
    assert old.key_id in str(info.value)
    assert "not configured" in str(info.value)


def test_same_key_twice_is_harmless(key: MasterKey) -> None:
    box = SecretBox(key, [key, MasterKey.from_text(key.to_text())])
    assert box.key_ids == (key.key_id,)


def test_master_key_id_and_repr(key: MasterKey) -> None:
    assert len(key.key_id) == 8
    assert key.to_text() not in repr(key)
    assert key.key_id in repr(key)
    assert key.to_text() not in repr(SecretBox(key))


def test_master_key_from_hex_and_base64() -> None:
    raw = bytes(range(32))
    from_hex = MasterKey.from_text(raw.hex())
    from_b64 = MasterKey.from_text(base64.b64encode(raw).decode() + "\n")
    from_urlsafe = MasterKey.from_text(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    assert from_hex == from_b64 == from_urlsafe == MasterKey(raw)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("not a key at all!!", "expected 64 hex characters"),
        (base64.b64encode(b"sixteen byte key").decode(), "decodes to 16 bytes"),
        ("ab" * 31 + "zz", "decodes to 48 bytes"),
    ],
)
def test_bad_master_key_text(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="master_key") as info:
        MasterKey.from_text(text)
    message = str(info.value)
    assert reason in message
    if text:
        assert text not in message


def test_load_prefers_the_setting(tmp_path: Path) -> None:
    raw = bytes(range(32))
    key_file = tmp_path / "other.key"
    key_file.write_text(MasterKey.generate().to_text())
    loaded = load_or_create_master_key(tmp_path, raw.hex(), key_file)
    assert loaded == MasterKey(raw)
    assert not (tmp_path / "master.key").exists()


def test_load_from_key_file(tmp_path: Path) -> None:
    key = MasterKey.generate()
    key_file = tmp_path / "given.key"
    key_file.write_text(key.to_text() + "\n")
    assert load_or_create_master_key(tmp_path, None, key_file) == key


def test_missing_key_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="master_key_file") as info:
        load_or_create_master_key(tmp_path, None, tmp_path / "absent.key")
    assert "does not exist" in str(info.value)


def test_bad_key_file_does_not_echo_contents(tmp_path: Path) -> None:
    key_file = tmp_path / "bad.key"
    key_file.write_text("hunter2-not-a-key")
    with pytest.raises(ValueError, match="master_key_file") as info:
        load_or_create_master_key(tmp_path, None, key_file)
    assert "hunter2" not in str(info.value)


def test_generated_key_file_is_0600_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_or_create_master_key(data_dir, None, None)
    path = data_dir / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert MasterKey.from_text(path.read_text()) == first
    assert load_or_create_master_key(data_dir, None, None) == first
    assert [p.name for p in data_dir.iterdir()] == ["master.key"]
