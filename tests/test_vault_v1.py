"""Tests for the vault's first format (token_wallet/vault_v1.py, class VaultV1).

The v1 code is now read only to migrate old vaults to the record store (token_wallet.vault), and
the migration tests write v1 files with VaultV1.create; so these tests pin what that needs: the
file format (built here independently with craft_vault), the refusals of a damaged or tampered
file, and the write path (.tmp, .prev, conflicts) that produced the files in the field.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pathlib
import stat
import struct
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from hostkit import sealing
from hostkit.sealing import MINIMUM_KDF, KdfParams
from token_wallet.vault_base import VaultConflict, VaultCorrupt, VaultError, VaultNotFound, WrongPasswordA
from token_wallet.vault_v1 import VaultV1

PASSWORD = "correct horse battery staple A"
OTHER_PASSWORD = "a different password A"
SECRET_VALUE = "wrapped-key-blob-SECRET-0123456789"


def sample_data() -> dict:
    return {
        "member_id": "m-42",
        "wrapped_key": SECRET_VALUE,
        "history": [{"amount_minor": 1250, "note": "café ☕"}],
        "outbox": [],
    }


def make_vault(tmp_path: pathlib.Path) -> VaultV1:
    return VaultV1.create(tmp_path / "wallet.vault", PASSWORD, sample_data(), kdf=MINIMUM_KDF)


def split(blob: bytes) -> tuple[bytes, dict, bytes]:
    """(header bytes, header dict, ciphertext), parsed without the module."""
    assert blob[:8] == b"TPVAULT1"
    (header_len,) = struct.unpack(">I", blob[8:12])
    header_raw = blob[12 : 12 + header_len]
    return header_raw, json.loads(header_raw), blob[12 + header_len :]


def derive(password: str, salt: bytes, kdf: KdfParams) -> tuple[bytes, bytes]:
    okm = Argon2id(
        salt=salt, length=64, iterations=kdf.iterations, lanes=kdf.lanes, memory_cost=kdf.memory_kib
    ).derive(password.encode())
    check = hmac.new(okm[32:], b"tokenpay-vault-check", hashlib.sha256).digest()[:16]
    return okm[:32], check


def craft_vault(
    password: str, doc: dict, *, kdf: dict | None = None, derive_kdf: KdfParams = MINIMUM_KDF
) -> bytes:
    """A v1 file written by hand with the real AAD; kdf overrides header fields after derivation."""
    salt, nonce = os.urandom(16), os.urandom(12)
    aes_key, check = derive(password, salt, derive_kdf)
    header = {
        "v": 1,
        "generation": 1,
        "nonce": base64.b64encode(nonce).decode(),
        "check": base64.b64encode(check).decode(),
        "kdf": {
            "alg": "argon2id",
            "m_kib": derive_kdf.memory_kib,
            "t": derive_kdf.iterations,
            "p": derive_kdf.lanes,
            "salt": base64.b64encode(salt).decode(),
        },
    }
    header["kdf"].update(kdf or {})
    header_raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    aad = b"TPVAULT1" + struct.pack(">I", len(header_raw)) + header_raw
    return aad + AESGCM(aes_key).encrypt(nonce, json.dumps(doc).encode(), aad)


def snapshot(path: pathlib.Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


def test_round_trip_and_file_format(tmp_path):
    v = make_vault(tmp_path)
    assert stat.S_IMODE(v.path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["wallet.vault"]
    blob = v.path.read_bytes()
    header_raw, header, ciphertext = split(blob)
    assert set(header) == {"v", "kdf", "nonce", "generation", "check"} and header["generation"] == 1
    salt, nonce = base64.b64decode(header["kdf"]["salt"]), base64.b64decode(header["nonce"])
    aes_key, check = derive(PASSWORD, salt, MINIMUM_KDF)
    assert base64.b64decode(header["check"]) == check
    aad = blob[: 12 + len(header_raw)]
    assert json.loads(AESGCM(aes_key).decrypt(nonce, ciphertext, aad)) == sample_data()
    assert VaultV1.open(v.path, PASSWORD).data == sample_data()


def test_crafted_file_opens(tmp_path):
    # Proves craft_vault writes the real format, so the refusal below is not vacuous.
    path = tmp_path / "v"
    path.write_bytes(craft_vault(PASSWORD, {"x": 1}))
    assert VaultV1.open(path, PASSWORD).data == {"x": 1}


def test_wrong_password_leaves_file_untouched(tmp_path):
    v = make_vault(tmp_path)
    before = snapshot(v.path)
    time.sleep(0.01)  # so a rewrite would show in mtime_ns
    with pytest.raises(WrongPasswordA):
        VaultV1.open(v.path, OTHER_PASSWORD)
    assert snapshot(v.path) == before


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(VaultNotFound):
        VaultV1.open(tmp_path / "absent", PASSWORD)


def test_any_flipped_byte_is_refused(tmp_path):
    v = make_vault(tmp_path)
    original = v.path.read_bytes()
    body = 12 + struct.unpack(">I", original[8:12])[0]
    positions = [*range(12), *range(12, body, 7), body, len(original) // 2, len(original) - 1]
    for pos in positions:
        tampered = bytearray(original)
        tampered[pos] ^= 0x01
        v.path.write_bytes(bytes(tampered))
        with pytest.raises((WrongPasswordA, VaultCorrupt)):
            VaultV1.open(v.path, PASSWORD)
    v.path.write_bytes(original[:-1])
    with pytest.raises(VaultCorrupt):
        VaultV1.open(v.path, PASSWORD)


def test_out_of_limit_kdf_refused_before_deriving(tmp_path, monkeypatch):
    path = tmp_path / "v"
    path.write_bytes(craft_vault(PASSWORD, {"x": 1}, kdf={"m_kib": 1024}))
    calls = []
    real = sealing.Argon2id
    monkeypatch.setattr(sealing, "Argon2id", lambda **kw: calls.append(kw) or real(**kw))
    with pytest.raises(VaultCorrupt):
        VaultV1.open(path, PASSWORD)
    assert calls == [], "limits must be checked before the expensive KDF runs"


def test_save_keeps_prev_and_refuses_a_conflicting_save(tmp_path):
    first = make_vault(tmp_path)
    gen1 = first.path.read_bytes()
    second = VaultV1.open(first.path, PASSWORD)
    second.data["member_id"] = "from-second"
    second.save()
    assert sibling_bytes(first.path, ".prev") == gen1
    on_disk = first.path.read_bytes()
    first.data["member_id"] = "from-first"
    with pytest.raises(VaultConflict):
        first.save()
    assert first.path.read_bytes() == on_disk
    assert VaultV1.open(first.path, PASSWORD).data["member_id"] == "from-second"
    assert sorted(os.listdir(tmp_path)) == ["wallet.vault", "wallet.vault.prev"]


def sibling_bytes(path: pathlib.Path, suffix: str) -> bytes:
    return path.with_name(path.name + suffix).read_bytes()


def test_save_refuses_non_json_data_without_writing(tmp_path):
    v = make_vault(tmp_path)
    before = snapshot(v.path)
    v.data["blob"] = SECRET_VALUE.encode()
    with pytest.raises(VaultError) as info:
        v.save()
    assert SECRET_VALUE not in str(info.value)
    assert snapshot(v.path) == before and v.generation == 1


def test_change_password_removes_prev(tmp_path):
    v = make_vault(tmp_path)
    v.save()
    v.change_password(OTHER_PASSWORD, kdf=MINIMUM_KDF)
    assert not v.path.with_name(v.path.name + ".prev").exists()
    with pytest.raises(WrongPasswordA):
        VaultV1.open(v.path, PASSWORD)
    assert VaultV1.open(v.path, OTHER_PASSWORD).data == sample_data()


def test_create_refuses_to_overwrite(tmp_path):
    v = make_vault(tmp_path)
    before = snapshot(v.path)
    with pytest.raises(VaultError):
        VaultV1.create(v.path, OTHER_PASSWORD, {}, kdf=MINIMUM_KDF)
    assert snapshot(v.path) == before


def test_no_secret_in_repr_or_error_text(tmp_path):
    v = make_vault(tmp_path)
    texts = [repr(v)]
    with pytest.raises(WrongPasswordA) as info:
        VaultV1.open(v.path, OTHER_PASSWORD)
    texts.append(str(info.value))
    for text in texts:
        for secret in (PASSWORD, OTHER_PASSWORD, SECRET_VALUE):
            assert secret not in text
