"""Tests for the password-A vault (token_wallet/vault.py).

Files are built here independently from the module (see craft_vault) so the
format is pinned by the tests, not only by the code that writes it.
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
import subprocess
import sys
import threading
import time
import unicodedata

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from hostkit import sealing
from hostkit.sealing import DEFAULT_KDF, MINIMUM_KDF, KdfParams, kdf_params_from_env
from token_wallet import vault as vault_mod
from token_wallet.vault import (
    Vault,
    VaultBusy,
    VaultConflict,
    VaultCorrupt,
    VaultError,
    VaultNotFound,
    WrongPasswordA,
)
from token_wallet.vault_lock import vault_lock

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple A"
OTHER_PASSWORD = "a different password A"
SECRET_VALUE = "wrapped-key-blob-SECRET-0123456789"
WRONG_A_MESSAGE = "wrong password A: the vault was not opened (nothing changed)"


def sample_data() -> dict:
    return {
        "member_id": "m-42",
        "wrapped_key": SECRET_VALUE,
        "center_url": "https://center.example",
        "history": [{"amount_minor": 1250, "note": "café ☕"}],
        "outbox": [],
    }


def make_vault(tmp_path: pathlib.Path, password: str = PASSWORD) -> Vault:
    return Vault.create(tmp_path / "wallet.vault", password, sample_data(), kdf=MINIMUM_KDF)


def split(blob: bytes) -> tuple[bytes, dict, bytes]:
    """(header bytes, header dict, ciphertext), parsed without the module."""
    assert blob[:8] == b"TPVAULT1"
    (header_len,) = struct.unpack(">I", blob[8:12])
    header_raw = blob[12 : 12 + header_len]
    return header_raw, json.loads(header_raw), blob[12 + header_len :]


def derive(password: str, salt: bytes, m_kib: int, t: int, p: int) -> tuple[bytes, bytes]:
    okm = Argon2id(salt=salt, length=64, iterations=t, lanes=p, memory_cost=m_kib).derive(password.encode())
    check = hmac.new(okm[32:], b"tokenpay-vault-check", hashlib.sha256).digest()[:16]
    return okm[:32], check


def craft_vault(
    password: str,
    doc: dict,
    *,
    kdf: dict | None = None,
    derive_kdf: KdfParams = MINIMUM_KDF,
    nonce: bytes | None = None,
    extra: dict | None = None,
    separators: tuple[str, str] = (",", ":"),
) -> bytes:
    """A vault file written by hand: header fields as given, encrypted with the real AAD.

    derive_kdf chooses the Argon2id parameters the key is derived with, so a
    header can claim parameters Argon2id itself would reject.
    """
    salt = os.urandom(16)
    nonce = os.urandom(12) if nonce is None else nonce
    aes_key, check = derive(password, salt, derive_kdf.memory_kib, derive_kdf.iterations, derive_kdf.lanes)
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
    header.update(extra or {})
    header_raw = json.dumps(header, sort_keys=True, separators=separators).encode()
    aad = b"TPVAULT1" + struct.pack(">I", len(header_raw)) + header_raw
    return aad + AESGCM(aes_key).encrypt(nonce, json.dumps(doc).encode(), aad)


class Argon2Spy:
    """Counts Argon2id derivations done by the vault module."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = sealing.Argon2id

        def counting(**kwargs):
            self.calls += 1
            return real(**kwargs)

        monkeypatch.setattr(sealing, "Argon2id", counting)


def snapshot(path: pathlib.Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


# --- parameters ----------------------------------------------------------------


def test_kdf_constants_and_env(monkeypatch):
    assert KdfParams(memory_kib=131072, iterations=3, lanes=4) == DEFAULT_KDF
    assert KdfParams(memory_kib=19456, iterations=2, lanes=1) == MINIMUM_KDF
    monkeypatch.delenv("TOKENPAY_FAST_KDF", raising=False)
    assert kdf_params_from_env() == DEFAULT_KDF
    monkeypatch.setenv("TOKENPAY_FAST_KDF", "0")
    assert kdf_params_from_env() == DEFAULT_KDF
    monkeypatch.setenv("TOKENPAY_FAST_KDF", "1")
    assert kdf_params_from_env() == MINIMUM_KDF


def test_create_without_kdf_uses_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENPAY_FAST_KDF", "1")
    v = Vault.create(tmp_path / "v", PASSWORD, {})
    _, header, _ = split(v.path.read_bytes())
    assert (header["kdf"]["m_kib"], header["kdf"]["t"], header["kdf"]["p"]) == (19456, 2, 1)


# --- round trip and format -------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "new-dir" / "wallet.vault"
    created = Vault.create(path, PASSWORD, sample_data(), kdf=MINIMUM_KDF)
    assert created.generation == 1
    opened = Vault.open(path, PASSWORD)
    assert opened.data == sample_data()
    assert opened.generation == 1
    assert opened.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(os.listdir(path.parent)) == ["wallet.vault"]  # no .tmp left behind


def test_file_format_is_as_specified(tmp_path):
    v = make_vault(tmp_path)
    blob = v.path.read_bytes()
    header_raw, header, ciphertext = split(blob)
    assert header_raw == json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert set(header) == {"v", "kdf", "nonce", "generation", "check"}
    assert header["v"] == 1 and header["generation"] == 1
    kdf = header["kdf"]
    assert set(kdf) == {"alg", "m_kib", "t", "p", "salt"} and kdf["alg"] == "argon2id"
    salt = base64.b64decode(kdf["salt"])
    nonce = base64.b64decode(header["nonce"])
    assert len(salt) == 16 and len(nonce) == 12
    aes_key, check = derive(PASSWORD, salt, kdf["m_kib"], kdf["t"], kdf["p"])
    assert base64.b64decode(header["check"]) == check
    aad = blob[: 12 + len(header_raw)]
    assert json.loads(AESGCM(aes_key).decrypt(nonce, ciphertext, aad)) == sample_data()


def test_crafted_file_at_minimum_opens(tmp_path):
    # Proves craft_vault writes the real format, so the refusals below are not vacuous.
    path = tmp_path / "v"
    path.write_bytes(craft_vault(PASSWORD, {"x": 1}))
    assert Vault.open(path, PASSWORD).data == {"x": 1}


def test_default_kdf_round_trip(tmp_path):
    path = tmp_path / "v"
    Vault.create(path, PASSWORD, sample_data(), kdf=DEFAULT_KDF)
    _, header, _ = split(path.read_bytes())
    assert (header["kdf"]["m_kib"], header["kdf"]["t"], header["kdf"]["p"]) == (131072, 3, 4)
    assert Vault.open(path, PASSWORD).data == sample_data()


def test_password_is_unicode_normalised(tmp_path):
    composed = unicodedata.normalize("NFC", "pässwört")
    decomposed = unicodedata.normalize("NFD", "pässwört")
    assert composed != decomposed
    path = tmp_path / "v"
    Vault.create(path, composed, {"a": 1}, kdf=MINIMUM_KDF)
    assert Vault.open(path, decomposed).data == {"a": 1}


# --- wrong password and damage ----------------------------------------------------


def test_wrong_password_leaves_file_untouched(tmp_path):
    v = make_vault(tmp_path)
    before = snapshot(v.path)
    time.sleep(0.01)  # so a rewrite would show in mtime_ns
    with pytest.raises(WrongPasswordA) as info:
        Vault.open(v.path, OTHER_PASSWORD)
    assert str(info.value) == WRONG_A_MESSAGE
    assert snapshot(v.path) == before
    assert Vault.open(v.path, PASSWORD).data == sample_data()


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(VaultNotFound):
        Vault.open(tmp_path / "absent", PASSWORD)


@pytest.mark.parametrize("content", [b"", b"TPVAULT", b"NOTVAULT" + b"\0" * 100, b"{}"])
def test_not_a_vault_is_corrupt(tmp_path, content):
    path = tmp_path / "v"
    path.write_bytes(content)
    with pytest.raises(VaultCorrupt):
        Vault.open(path, PASSWORD)


def flip_positions(blob: bytes) -> list[int]:
    header_len = struct.unpack(">I", blob[8:12])[0]
    body = 12 + header_len
    header_sample = [*range(12, body, 3), body - 1]
    cipher_sample = [*range(body, body + 8), (body + len(blob)) // 2]
    tag_sample = list(range(len(blob) - 16, len(blob)))
    return list(range(12)) + header_sample + cipher_sample + tag_sample


def test_any_flipped_byte_is_refused(tmp_path):
    v = make_vault(tmp_path)
    original = v.path.read_bytes()
    positions = flip_positions(original)
    assert len(positions) > 60
    outcomes = set()
    for pos in positions:
        for mask in (0x01, 0xFF) if pos < 12 else (0x01,):
            tampered = bytearray(original)
            tampered[pos] ^= mask
            v.path.write_bytes(bytes(tampered))
            with pytest.raises((WrongPasswordA, VaultCorrupt)) as info:
                Vault.open(v.path, PASSWORD)
            outcomes.add(type(info.value))
            assert v.path.read_bytes() == bytes(tampered), "open must never write"
    assert VaultCorrupt in outcomes
    v.path.write_bytes(original)
    assert Vault.open(v.path, PASSWORD).data == sample_data()


def test_tampered_ciphertext_with_right_password_is_corrupt_not_wrong_password(tmp_path):
    v = make_vault(tmp_path)
    blob = bytearray(v.path.read_bytes())
    blob[-20] ^= 0x40
    v.path.write_bytes(bytes(blob))
    with pytest.raises(VaultCorrupt) as info:
        Vault.open(v.path, PASSWORD)
    assert "tampered" in str(info.value)


def test_tampered_generation_is_caught_by_aad(tmp_path):
    v = make_vault(tmp_path)
    blob = v.path.read_bytes()
    assert blob.count(b'"generation":1,') == 1
    v.path.write_bytes(blob.replace(b'"generation":1,', b'"generation":7,'))
    with pytest.raises(VaultCorrupt):
        Vault.open(v.path, PASSWORD)


def test_truncated_file_is_corrupt(tmp_path):
    v = make_vault(tmp_path)
    blob = v.path.read_bytes()
    header_len = struct.unpack(">I", blob[8:12])[0]
    body = 12 + header_len
    for length in (0, 4, 8, 11, 12, body - 1, body, body + 15, len(blob) - 1, len(blob) - 16):
        v.path.write_bytes(blob[:length])
        with pytest.raises(VaultCorrupt):
            Vault.open(v.path, PASSWORD)


def test_appended_bytes_are_corrupt(tmp_path):
    v = make_vault(tmp_path)
    v.path.write_bytes(v.path.read_bytes() + b"\0")
    with pytest.raises(VaultCorrupt):
        Vault.open(v.path, PASSWORD)


def test_below_minimum_kdf_refused_even_when_correctly_encrypted(tmp_path, monkeypatch):
    # A file really encrypted with m=1024 KiB under the right AAD: cheap to brute force, so refused.
    weak = KdfParams(memory_kib=1024, iterations=2, lanes=1)
    path = tmp_path / "v"
    path.write_bytes(craft_vault(PASSWORD, {"x": 1}, derive_kdf=weak))
    spy = Argon2Spy(monkeypatch)
    with pytest.raises(VaultCorrupt) as info:
        Vault.open(path, PASSWORD)
    assert "memory_kib=1024" in str(info.value)
    assert spy.calls == 0


OUT_OF_LIMITS = {
    "m_kib too small": dict(kdf={"m_kib": 19455}),
    "m_kib too large": dict(kdf={"m_kib": 1048577}),
    "m_kib as text": dict(kdf={"m_kib": "19456"}),
    "t too small": dict(kdf={"t": 1}),
    "t too large": dict(kdf={"t": 17}),
    "t as bool": dict(kdf={"t": True}),
    "p zero": dict(kdf={"p": 0}),
    "p too large": dict(kdf={"p": 17}),
    "p float": dict(kdf={"p": 1.0}),
    "alg argon2i": dict(kdf={"alg": "argon2i"}),
    "salt 15 bytes": dict(kdf={"salt": base64.b64encode(b"s" * 15).decode()}),
    "salt 17 bytes": dict(kdf={"salt": base64.b64encode(b"s" * 17).decode()}),
    "salt not base64": dict(kdf={"salt": "!!!!!!!!!!!!!!!!!!!!!!!!"}),
    "kdf extra field": dict(kdf={"pepper": 1}),
    "nonce 11 bytes": dict(extra={"nonce": base64.b64encode(b"n" * 11).decode()}),
    "nonce 16 bytes": dict(extra={"nonce": base64.b64encode(b"n" * 16).decode()}),
    "check 8 bytes": dict(extra={"check": base64.b64encode(b"c" * 8).decode()}),
    "version 2": dict(extra={"v": 2}),
    "version missing": dict(extra={"v": None}),
    "generation zero": dict(extra={"generation": 0}),
    "generation negative": dict(extra={"generation": -1}),
    "generation huge": dict(extra={"generation": 2**40}),
    "extra header field": dict(extra={"comment": "hi"}),
}


@pytest.mark.parametrize("case", list(OUT_OF_LIMITS), ids=list(OUT_OF_LIMITS))
def test_out_of_limit_header_refused_before_deriving(tmp_path, monkeypatch, case):
    path = tmp_path / "v"
    path.write_bytes(craft_vault(PASSWORD, {"x": 1}, **OUT_OF_LIMITS[case]))
    spy = Argon2Spy(monkeypatch)
    with pytest.raises(VaultCorrupt):
        Vault.open(path, PASSWORD)
    assert spy.calls == 0, "limits must be checked before the expensive KDF runs"


def test_non_canonical_header_refused(tmp_path):
    # Correctly encrypted under its own (spaced) header: only the canonical-form rule refuses it.
    path = tmp_path / "v"
    path.write_bytes(craft_vault(PASSWORD, {"x": 1}, separators=(", ", ": ")))
    with pytest.raises(VaultCorrupt) as info:
        Vault.open(path, PASSWORD)
    assert "canonical" in str(info.value)


def test_header_length_over_limit_refused(tmp_path):
    path = tmp_path / "v"
    path.write_bytes(b"TPVAULT1" + struct.pack(">I", 4097) + b"{" * 5000)
    with pytest.raises(VaultCorrupt) as info:
        Vault.open(path, PASSWORD)
    assert "4096" in str(info.value)


def test_file_over_size_limit_refused(tmp_path):
    v = make_vault(tmp_path)
    with open(v.path, "r+b") as f:
        f.truncate(64 * 1024 * 1024 + 1)  # sparse: costs no disk
    with pytest.raises(VaultCorrupt) as info:
        Vault.open(v.path, PASSWORD)
    assert "limit" in str(info.value)


# --- save ----------------------------------------------------------------------


def test_save_increments_generation_and_keeps_prev(tmp_path, monkeypatch):
    v = make_vault(tmp_path)
    gen1 = v.path.read_bytes()
    spy = Argon2Spy(monkeypatch)
    v.data["history"].append({"amount_minor": 500})
    v.save()
    assert spy.calls == 0, "save must reuse the derived key"
    assert v.generation == 2
    prev = v.path.with_name(v.path.name + ".prev")
    assert prev.read_bytes() == gen1
    assert stat.S_IMODE(v.path.stat().st_mode) == 0o600
    gen2 = v.path.read_bytes()
    _, h1, _ = split(gen1)
    _, h2, _ = split(gen2)
    assert h2["generation"] == 2
    assert h2["nonce"] != h1["nonce"], "every save needs a fresh nonce"
    assert h2["kdf"] == h1["kdf"] and h2["check"] == h1["check"]
    reopened = Vault.open(v.path, PASSWORD)
    assert reopened.generation == 2
    assert reopened.data["history"][-1] == {"amount_minor": 500}
    assert Vault.open(prev, PASSWORD).generation == 1  # manual recovery works

    reopened.data["outbox"].append("signed-msg")
    reopened.save()
    assert prev.read_bytes() == gen2
    assert Vault.open(v.path, PASSWORD).generation == 3
    assert sorted(os.listdir(tmp_path)) == ["wallet.vault", "wallet.vault.prev"]


def test_save_replaces_stale_tmp(tmp_path):
    v = make_vault(tmp_path)
    tmp = v.path.with_name(v.path.name + ".tmp")
    tmp.write_bytes(b"left over from a crash")
    v.save()
    assert not tmp.exists()
    assert Vault.open(v.path, PASSWORD).generation == 2


def test_save_refuses_when_file_changed_by_someone_else(tmp_path):
    first = make_vault(tmp_path)
    second = Vault.open(first.path, PASSWORD)
    second.data["member_id"] = "from-second"
    second.save()
    on_disk = first.path.read_bytes()
    first.data["member_id"] = "from-first"
    with pytest.raises(VaultConflict):
        first.save()
    assert first.path.read_bytes() == on_disk
    assert first.generation == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"blob": SECRET_VALUE.encode()},
        {"pair": (SECRET_VALUE, 1)},
        {"n": float("nan")},
        {"by_int_key": {1: SECRET_VALUE}},
        {"deep": json.loads("[" * 100 + "]" * 100)},
        {"surrogate": SECRET_VALUE + "\ud800"},
    ],
    ids=["bytes", "tuple", "nan", "int-key", "too-deep", "lone-surrogate"],
)
def test_save_refuses_non_json_data_without_writing(tmp_path, bad):
    v = make_vault(tmp_path)
    before = snapshot(v.path)
    v.data.update(bad)
    with pytest.raises(VaultError) as info:
        v.save()
    assert SECRET_VALUE not in str(info.value)
    assert snapshot(v.path) == before
    assert v.generation == 1


def test_saving_a_too_large_document_is_refused(tmp_path):
    v = make_vault(tmp_path)
    before = snapshot(v.path)
    v.data["history"] = ["x" * (64 * 1024 * 1024)]
    with pytest.raises(VaultError) as info:
        v.save()
    assert "too large" in str(info.value)
    assert snapshot(v.path) == before


# --- change_password -------------------------------------------------------------


def test_change_password(tmp_path):
    v = make_vault(tmp_path)
    _, old_header, _ = split(v.path.read_bytes())
    stronger = KdfParams(memory_kib=32768, iterations=2, lanes=2)
    v.change_password(OTHER_PASSWORD, kdf=stronger)
    assert v.generation == 2
    with pytest.raises(WrongPasswordA):
        Vault.open(v.path, PASSWORD)
    reopened = Vault.open(v.path, OTHER_PASSWORD)
    assert reopened.data == sample_data()
    _, new_header, _ = split(v.path.read_bytes())
    assert new_header["kdf"]["salt"] != old_header["kdf"]["salt"]
    assert (new_header["kdf"]["m_kib"], new_header["kdf"]["p"]) == (32768, 2)
    # The old-password copy must not linger as .prev.
    assert not v.path.with_name(v.path.name + ".prev").exists()
    assert reopened.generation == 2


def test_change_password_then_save_keeps_new_password(tmp_path):
    v = make_vault(tmp_path)
    v.change_password(OTHER_PASSWORD, kdf=MINIMUM_KDF)
    v.data["member_id"] = "m-43"
    v.save()
    assert Vault.open(v.path, OTHER_PASSWORD).data["member_id"] == "m-43"
    with pytest.raises(WrongPasswordA):
        Vault.open(v.path, PASSWORD)
    # After a save, .prev is the new-password generation 2.
    assert Vault.open(v.path.with_name(v.path.name + ".prev"), OTHER_PASSWORD).generation == 2


@pytest.mark.parametrize(
    "password,kdf",
    [
        ("", MINIMUM_KDF),
        (OTHER_PASSWORD, KdfParams(memory_kib=8192, iterations=2, lanes=1)),
        (OTHER_PASSWORD, KdfParams(memory_kib=19456, iterations=1, lanes=1)),
        ("x" * 1025, MINIMUM_KDF),
    ],
    ids=["empty", "low-memory", "one-pass", "too-long"],
)
def test_change_password_refuses_weak_choices(tmp_path, password, kdf):
    v = make_vault(tmp_path)
    before = snapshot(v.path)
    with pytest.raises(VaultError):
        v.change_password(password, kdf=kdf)
    assert snapshot(v.path) == before
    v.save()  # the in-memory key is still the old one
    assert Vault.open(v.path, PASSWORD).generation == 2


# --- create --------------------------------------------------------------------


def test_create_refuses_to_overwrite(tmp_path):
    v = make_vault(tmp_path)
    before = snapshot(v.path)
    with pytest.raises(VaultError) as info:
        Vault.create(v.path, OTHER_PASSWORD, {}, kdf=MINIMUM_KDF)
    assert "already exists" in str(info.value)
    assert snapshot(v.path) == before
    assert Vault.open(v.path, PASSWORD).data == sample_data()


def test_create_refuses_to_overwrite_a_non_vault_file(tmp_path):
    path = tmp_path / "v"
    path.write_bytes(b"precious")
    with pytest.raises(VaultError):
        Vault.create(path, PASSWORD, {}, kdf=MINIMUM_KDF)
    assert path.read_bytes() == b"precious"


def test_install_refuses_a_file_that_appears_during_create(tmp_path, monkeypatch):
    # Race: the file appears after the early existence check; the atomic link must still refuse.
    path = tmp_path / "v"
    real_new_keys = vault_mod._new_keys

    def new_keys_then_race(*args, **kwargs):
        keys = real_new_keys(*args, **kwargs)
        path.write_bytes(b"other process")
        return keys

    monkeypatch.setattr(vault_mod, "_new_keys", new_keys_then_race)
    with pytest.raises(VaultError):
        Vault.create(path, PASSWORD, {}, kdf=MINIMUM_KDF)
    assert path.read_bytes() == b"other process"
    assert sorted(os.listdir(tmp_path)) == ["v"]


@pytest.mark.parametrize(
    "password,kdf,data",
    [
        ("", MINIMUM_KDF, {}),
        (PASSWORD, KdfParams(memory_kib=1024, iterations=2, lanes=1), {}),
        (PASSWORD, KdfParams(memory_kib=19456, iterations=2, lanes=17), {}),
        (PASSWORD, MINIMUM_KDF, [1]),
    ],
    ids=["empty-password", "low-memory", "too-many-lanes", "not-a-dict"],
)
def test_create_refuses_bad_input_and_writes_nothing(tmp_path, password, kdf, data):
    with pytest.raises(VaultError):
        Vault.create(tmp_path / "d" / "v", password, data, kdf=kdf)
    assert not (tmp_path / "d" / "v").exists()


# --- secrets stay out of text ------------------------------------------------------


def test_no_secret_in_repr_or_error_text(tmp_path):
    v = make_vault(tmp_path)
    key_hex = v._keys.aes_key.hex()
    texts = [repr(v), str(v), repr(Vault.open(v.path, PASSWORD))]
    errors = []
    for attempt in (
        lambda: Vault.open(v.path, OTHER_PASSWORD),
        lambda: Vault.open(v.path, PASSWORD + "x"),
        lambda: Vault.create(v.path, PASSWORD, sample_data(), kdf=MINIMUM_KDF),
        lambda: Vault.open(tmp_path / "absent", PASSWORD),
    ):
        with pytest.raises(VaultError) as info:
            attempt()
        errors.append(info.value)
    blob = bytearray(v.path.read_bytes())
    blob[-1] ^= 1
    v.path.write_bytes(bytes(blob))
    with pytest.raises(VaultCorrupt) as info:
        Vault.open(v.path, PASSWORD)
    errors.append(info.value)
    for error in errors:
        texts += [str(error), repr(error)]
        assert "\n" not in str(error)
        # Chained exceptions would print their own text in tracebacks.
        assert error.__cause__ is None and (error.__suppress_context__ or error.__context__ is None)
    for text in texts:
        for secret in (PASSWORD, OTHER_PASSWORD, SECRET_VALUE, key_hex, "member_id"):
            assert secret not in text, f"{secret!r} leaked into {text!r}"


def test_error_messages_are_one_line_even_for_odd_paths(tmp_path):
    with pytest.raises(VaultNotFound) as info:
        Vault.open(tmp_path / "line1\nline2", PASSWORD)
    assert "\n" not in str(info.value)


# --- locking -------------------------------------------------------------------

LOCK_HOLDER = """
import sys
from token_wallet.vault_lock import vault_lock
with vault_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the parent closes our stdin
"""


def start_lock_holder(path: pathlib.Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0


def test_lock_held_by_other_process_gives_busy(tmp_path):
    path = tmp_path / "wallet.vault"
    holder = start_lock_holder(path)
    try:
        started = time.monotonic()
        with pytest.raises(VaultBusy) as info, vault_lock(path, timeout_ms=200):
            pytest.fail("lock acquired while another process holds it")
        waited_s = time.monotonic() - started
        assert 0.2 <= waited_s < 2.0
        assert "another process" in str(info.value)
    finally:
        stop(holder)
    with vault_lock(path, timeout_ms=2000):
        pass
    assert stat.S_IMODE(path.with_name("wallet.vault.lock").stat().st_mode) == 0o600


def test_lock_waits_for_release(tmp_path):
    path = tmp_path / "wallet.vault"
    holder = start_lock_holder(path)
    releaser = threading.Timer(0.3, holder.stdin.close)
    releaser.start()
    started = time.monotonic()
    try:
        with vault_lock(path, timeout_ms=5000):
            assert time.monotonic() - started >= 0.25
    finally:
        releaser.join()
        assert holder.wait(timeout=10) == 0


def test_lock_is_released_by_a_killed_holder(tmp_path):
    path = tmp_path / "wallet.vault"
    holder = start_lock_holder(path)
    holder.kill()
    holder.wait(timeout=10)
    with vault_lock(path, timeout_ms=2000):
        pass


def test_lock_released_on_exit_and_on_exception(tmp_path):
    path = tmp_path / "wallet.vault"
    with vault_lock(path, timeout_ms=100):
        pass
    with pytest.raises(RuntimeError), vault_lock(path, timeout_ms=100):
        raise RuntimeError("boom")
    with vault_lock(path, timeout_ms=100):
        pass


def test_lock_timeout_is_bounded(tmp_path):
    with pytest.raises(VaultError), vault_lock(tmp_path / "v", timeout_ms=-1):
        pass
    with pytest.raises(VaultError), vault_lock(tmp_path / "v", timeout_ms=10**9):
        pass
