"""PKCS#11 backend on a real SoftHSM token (no mocks)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import threading
from pathlib import Path

import pkcs11
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import KeyType as P11KeyType

from tokens import key_protection, pkcs11_raw, pkcs11_token, softhsm
from tokens.base import (
    ALGORITHM_FOR_KEY_TYPE,
    KeyMode,
    KeyNotFound,
    KeyRecord,
    KeyType,
    TokenError,
    TokenNotFound,
    WrongPin,
)
from tokens.pkcs11_token import (
    LIBRARY_LOCK,
    WRAP_KEY_LABEL,
    Pkcs11Token,
    open_pkcs11_token,
)

REPO = Path(__file__).resolve().parents[1]
P256_ORDER = pkcs11_token.P256_ORDER
MESSAGE = b"pay 1234 JPY to store 42, order A-17"

# What SoftHSM 2.6.1 can do: it cannot wrap Ed25519 private keys
# (C_WrapKey answers KeyNotWrappable under every mechanism).
SUPPORTED = [
    (KeyMode.WRAPPED, KeyType.P256),
    (KeyMode.WRAPPED, KeyType.RSA2048),
    (KeyMode.RESIDENT, KeyType.P256),
    (KeyMode.RESIDENT, KeyType.ED25519),
    (KeyMode.RESIDENT, KeyType.RSA2048),
]


@dataclasses.dataclass
class Fresh:
    token: Pkcs11Token
    label: str
    so_pin: str
    pin: str


@pytest.fixture
def fresh(make_softhsm_token, softhsm_module) -> Fresh:
    label, so_pin, pin = make_softhsm_token()
    return Fresh(open_pkcs11_token(softhsm_module, label=label), label, so_pin, pin)


@pytest.fixture
def raw_token(softhsm_module):
    """python-pkcs11 Token for direct inspection (call under LIBRARY_LOCK)."""

    def get(label: str) -> pkcs11.Token:
        with LIBRARY_LOCK:
            return pkcs11_token.load_module(softhsm_module).get_token(token_label=label)

    return get


def verify(record: KeyRecord, message: bytes, signature: bytes) -> None:
    """Verify with cryptography from the record's SPKI; raise if invalid."""
    public_key = serialization.load_der_public_key(record.spki_der)
    if record.key_type is KeyType.P256:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert isinstance(public_key.curve, ec.SECP256R1)
        r, s = decode_dss_signature(signature)
        assert s <= P256_ORDER // 2, "high-S signature"
        assert encode_dss_signature(r, s) == signature, "not minimal DER"
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    elif record.key_type is KeyType.ED25519:
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        assert len(signature) == 64
        public_key.verify(signature, message)
    else:
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert public_key.key_size == 2048
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def private_keys_on_token(raw: pkcs11.Token, **login) -> list:
    # An SO login needs a read/write session.
    with LIBRARY_LOCK, raw.open(rw="so_pin" in login, **login) as session:
        return list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))


def record_from_json(record: KeyRecord) -> KeyRecord:
    """The round trip the vault does: JSON out, JSON in."""
    data = json.loads(
        json.dumps(
            {
                "mode": record.mode.value,
                "key_type": record.key_type.value,
                "algorithm": record.algorithm,
                "spki_der": base64.b64encode(record.spki_der).decode(),
                "handle": record.handle,
            }
        )
    )
    return KeyRecord(
        mode=KeyMode(data["mode"]),
        key_type=KeyType(data["key_type"]),
        algorithm=data["algorithm"],
        spki_der=base64.b64decode(data["spki_der"]),
        handle=data["handle"],
    )


# --------------------------------------------------------------------------
# Generate, sign, verify


@pytest.mark.parametrize("mode,key_type", SUPPORTED, ids=lambda v: v.value)
def test_generate_sign_verify(fresh, mode, key_type):
    record = fresh.token.generate_key(key_type, fresh.pin, so_pin=fresh.so_pin, mode=mode)

    assert record.mode is mode
    assert record.key_type is key_type
    assert record.algorithm == ALGORITHM_FOR_KEY_TYPE[key_type]
    assert all(isinstance(v, str) for v in record.handle.values())
    # ECDSA: enough signatures that about half needed the low-S flip.
    for i in range(12 if key_type is KeyType.P256 else 2):
        message = MESSAGE + bytes([i])
        verify(record, message, fresh.token.sign(record, message, fresh.pin))


@pytest.mark.parametrize("mode,key_type", SUPPORTED, ids=lambda v: v.value)
def test_signature_does_not_verify_for_other_message(fresh, mode, key_type):
    record = fresh.token.generate_key(key_type, fresh.pin, so_pin=fresh.so_pin, mode=mode)
    signature = fresh.token.sign(record, MESSAGE, fresh.pin)
    with pytest.raises(InvalidSignature):
        verify(record, MESSAGE + b"!", signature)


def test_high_s_is_normalised_to_low_s():
    r, high_s = 12345, P256_ORDER - 7
    raw = r.to_bytes(32, "big") + high_s.to_bytes(32, "big")
    assert decode_dss_signature(pkcs11_token._ecdsa_der_low_s(raw)) == (r, 7)


def test_wrapping_ed25519_is_refused_clearly_and_auto_mode_falls_back(fresh):
    with pytest.raises(TokenError, match="cannot wrap ed25519"):
        fresh.token.generate_key(KeyType.ED25519, fresh.pin, so_pin=fresh.so_pin, mode=KeyMode.WRAPPED)
    record = fresh.token.generate_key(KeyType.ED25519, fresh.pin, so_pin=fresh.so_pin)
    assert record.mode is KeyMode.RESIDENT
    verify(record, MESSAGE, fresh.token.sign(record, MESSAGE, fresh.pin))


def test_entropy_is_fed_to_the_token(fresh):
    for mode in KeyMode:
        record = fresh.token.generate_key(
            KeyType.P256, fresh.pin, so_pin=fresh.so_pin, mode=mode, entropy=os.urandom(64)
        )
        verify(record, MESSAGE, fresh.token.sign(record, MESSAGE, fresh.pin))


# --------------------------------------------------------------------------
# Mode choice and the SO PIN


def test_default_mode_is_wrapped_with_so_pin_resident_without(fresh):
    assert fresh.token.supports_wrapping()
    wrapped = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    resident = fresh.token.generate_key(KeyType.P256, fresh.pin)
    assert (wrapped.mode, resident.mode) == (KeyMode.WRAPPED, KeyMode.RESIDENT)


def test_wrapped_without_so_pin_needs_it_until_the_wrap_key_exists(fresh):
    with pytest.raises(TokenError, match="SO PIN"):
        fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.WRAPPED)
    fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin, mode=KeyMode.WRAPPED)
    # The trusted wrap key is there now: later keys need only the user PIN.
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.WRAPPED)
    verify(record, MESSAGE, fresh.token.sign(record, MESSAGE, fresh.pin))


def test_wrong_so_pin_is_refused(fresh):
    with pytest.raises(WrongPin, match="SO PIN") as caught:
        fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin="not-the-so-pin")
    assert "not-the-so-pin" not in str(caught.value)


def test_wrap_key_is_created_once_public_trusted_and_locked_down(fresh, raw_token):
    for _ in range(3):
        fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    raw = raw_token(fresh.label)
    with LIBRARY_LOCK, raw.open() as public_session:  # no login: it is public
        keys = list(public_session.get_objects({Attribute.LABEL: WRAP_KEY_LABEL}))
        assert len(keys) == 1
        attrs = keys[0].get_attributes(
            [
                Attribute.TOKEN,
                Attribute.PRIVATE,
                Attribute.TRUSTED,
                Attribute.EXTRACTABLE,
                Attribute.SENSITIVE,
                Attribute.WRAP,
                Attribute.UNWRAP,
                Attribute.ENCRYPT,
                Attribute.DECRYPT,
                Attribute.MODIFIABLE,
                Attribute.COPYABLE,
                Attribute.DESTROYABLE,
                Attribute.VALUE_LEN,
            ]
        )
    assert attrs == {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.TRUSTED: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SENSITIVE: True,
        Attribute.WRAP: True,
        Attribute.UNWRAP: True,
        Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: False,
        Attribute.VALUE_LEN: 32,
    }


def test_token_with_only_the_old_wrap_key_gets_the_protected_one(fresh, raw_token):
    # A token set up before the fix: its old wrap key stays (undeletable) and still opens its blobs,
    # but new keys need the protected wrap key, which only the SO can make.
    from test_attack_key_extraction import Token, make_old_key_record, make_old_wrap_key

    old = Token(fresh.label, fresh.so_pin, fresh.pin, fresh.token, raw_token(fresh.label))
    make_old_wrap_key(old)
    old_record = make_old_key_record(old)
    assert key_protection(old_record) == "extractable_legacy_wrap"
    verify(old_record, MESSAGE, fresh.token.sign(old_record, MESSAGE, fresh.pin))
    assert not fresh.token.has_protected_wrap_key()
    with pytest.raises(TokenError, match="SO PIN") as caught:
        fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.WRAPPED)
    assert fresh.pin not in str(caught.value)

    record = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    assert (record.mode, record.handle["wrap_key_label"]) == (KeyMode.WRAPPED, WRAP_KEY_LABEL)
    assert key_protection(record) == "protected" and fresh.token.has_protected_wrap_key()
    # Later keys need only the user PIN, and still go under the protected key.
    again = fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.WRAPPED)
    assert again.handle["wrap_key_label"] == WRAP_KEY_LABEL
    for key in (old_record, record, again):
        verify(key, MESSAGE, fresh.token.sign(key, MESSAGE, fresh.pin))


def test_key_protection_of_each_kind_of_record(fresh):
    resident = fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.RESIDENT)
    wrapped = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    legacy = dataclasses.replace(wrapped, handle={**wrapped.handle, "wrap_key_label": "tokenpay-wrap"})
    card = dataclasses.replace(resident, handle={"format": "openpgp-card-v1"})
    assert [key_protection(k) for k in (resident, wrapped, legacy, card)] == [
        "protected",
        "protected",
        "extractable_legacy_wrap",
        "protected",
    ]
    # A record naming some other wrap key is refused, not tried.
    forged = dataclasses.replace(wrapped, handle={**wrapped.handle, "wrap_key_label": "attacker-key"})
    with pytest.raises(KeyNotFound, match="unknown wrap key"):
        fresh.token.sign(forged, MESSAGE, fresh.pin)


def test_raw_templates_are_bounded():
    def pack(template):
        return pkcs11_raw._pack_template(template, [], depth=0)

    label = int(Attribute.LABEL)
    assert pack([(label, "x" * pkcs11_raw.MAX_VALUE_BYTES)])[1] == 1
    with pytest.raises(ValueError, match="bytes expected"):
        pack([(label, "x" * (pkcs11_raw.MAX_VALUE_BYTES + 1))])
    with pytest.raises(ValueError, match="attributes"):
        pack([(label, "x")] * (pkcs11_raw.MAX_TEMPLATE_ATTRIBUTES + 1))
    with pytest.raises(ValueError, match="attributes"):
        pack([])
    with pytest.raises(ValueError, match="cannot hold a template"):  # only array attributes nest
        pack([(label, [(label, "x")])])
    nested = [(int(Attribute.UNWRAP_TEMPLATE), [(int(Attribute.UNWRAP_TEMPLATE), [(label, "x")])])]
    with pytest.raises(ValueError, match="cannot hold a template"):  # one level only
        pack(nested)


# --------------------------------------------------------------------------
# Wrapped mode: what the token holds and what the blob is worth


def test_wrapped_key_leaves_no_private_key_on_token(fresh, raw_token):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin, mode=KeyMode.WRAPPED)
    fresh.token.sign(record, MESSAGE, fresh.pin)  # unwraps into a session object
    raw = raw_token(fresh.label)
    assert private_keys_on_token(raw, user_pin=fresh.pin) == []
    assert private_keys_on_token(raw, so_pin=fresh.so_pin) == []


def test_resident_key_stays_on_token_non_extractable(fresh, raw_token):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.RESIDENT)
    with LIBRARY_LOCK, raw_token(fresh.label).open(user_pin=fresh.pin) as session:
        [key] = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        attrs = key.get_attributes(
            [Attribute.ID, Attribute.TOKEN, Attribute.EXTRACTABLE, Attribute.SENSITIVE, Attribute.PRIVATE]
        )
    assert attrs == {
        Attribute.ID: bytes.fromhex(record.handle["key_id_hex"]),
        Attribute.TOKEN: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SENSITIVE: True,
        Attribute.PRIVATE: True,
    }


def test_wrapped_blob_is_useless_without_login_or_under_another_key(fresh, raw_token):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin, mode=KeyMode.WRAPPED)
    blob = base64.b64decode(record.handle["wrapped_key_b64"])
    raw = raw_token(fresh.label)
    unwrap_args = dict(
        object_class=ObjectClass.PRIVATE_KEY,
        key_type=P11KeyType.EC,
        key_data=blob,
        mechanism=Mechanism.AES_KEY_WRAP_PAD,
        capabilities=MechanismFlag.SIGN,
        template=dict.fromkeys((Attribute.ENCRYPT, Attribute.WRAP, Attribute.VERIFY), pkcs11.DEFAULT),
    )
    with LIBRARY_LOCK:
        # The trusted key itself, but no user login: refused.
        with raw.open() as public_session:
            trusted = public_session.get_key(label=WRAP_KEY_LABEL)
            with pytest.raises(pkcs11.UserNotLoggedIn):
                trusted.unwrap_key(**unwrap_args)
        # Logged in, but under an AES key the user made: refused.
        with raw.open(user_pin=fresh.pin) as session:
            other = session.generate_key(
                P11KeyType.AES, 256, capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP
            )
            with pytest.raises(pkcs11.PKCS11Error):
                other.unwrap_key(**unwrap_args)


def test_key_bound_to_trusted_key_cannot_be_wrapped_under_another(fresh, raw_token):
    # The same attributes our wrapped keys get: extractable, WRAP_WITH_TRUSTED.
    fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    with LIBRARY_LOCK, raw_token(fresh.label).open(user_pin=fresh.pin) as session:
        _, private_key = session.generate_keypair(
            P11KeyType.EC,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: pkcs11_token.EC_PARAMS_SECP256R1},
            private_template={Attribute.EXTRACTABLE: True, Attribute.WRAP_WITH_TRUSTED: True},
        )
        untrusted = session.generate_key(
            P11KeyType.AES, 256, capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP
        )
        with pytest.raises(pkcs11.KeyNotWrappable):
            untrusted.wrap_key(private_key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        trusted = session.get_key(label=WRAP_KEY_LABEL)
        assert trusted.wrap_key(private_key, mechanism=Mechanism.AES_KEY_WRAP_PAD)


def test_blob_from_one_token_does_not_sign_on_another(fresh, make_softhsm_token, softhsm_module):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    label, so_pin, pin = make_softhsm_token()
    other = open_pkcs11_token(softhsm_module, label=label)
    other.generate_key(KeyType.P256, pin, so_pin=so_pin)  # gives it a wrap key
    with pytest.raises(KeyNotFound, match="belongs to token serial"):
        other.sign(record, MESSAGE, pin)
    # Even with the serial forged, the other token's wrap key cannot open it.
    forged = dataclasses.replace(record, handle={**record.handle, "token_serial": other.serial})
    with pytest.raises(KeyNotFound, match="cannot unwrap"):
        other.sign(forged, MESSAGE, pin)


def test_blob_and_pin_sign_after_vault_round_trip_and_reopen(fresh, softhsm_module):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    restored = record_from_json(record)
    reopened = open_pkcs11_token(softhsm_module, serial=fresh.token.serial)
    verify(record, MESSAGE, reopened.sign(restored, MESSAGE, fresh.pin))


def test_unknown_resident_key_id_is_key_not_found(fresh):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.RESIDENT)
    missing = dataclasses.replace(record, handle={**record.handle, "key_id_hex": "00" * 16})
    with pytest.raises(KeyNotFound):
        fresh.token.sign(missing, MESSAGE, fresh.pin)


# --------------------------------------------------------------------------
# PINs


@pytest.mark.parametrize("mode", list(KeyMode), ids=lambda m: m.value)
def test_wrong_pin_then_right_pin(fresh, mode):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin, mode=mode)
    for _ in range(3):
        with pytest.raises(WrongPin) as caught:
            fresh.token.sign(record, MESSAGE, "wrong-pin-9876")
    message = str(caught.value)
    assert message.startswith("wrong password B (token PIN)")
    assert "wrong-pin-9876" not in message and fresh.pin not in message
    status = caught.value.status
    assert status.tries_left is None and status.count_low and not status.locked

    verify(record, MESSAGE, fresh.token.sign(record, MESSAGE, fresh.pin))
    assert not fresh.token.pin_status().count_low


def test_wrong_pin_leaves_no_session_that_blocks_the_so(fresh):
    # A read-only session left open by a refused login would make the next
    # SO login fail with SessionReadOnlyExists.
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.RESIDENT)
    with pytest.raises(WrongPin):
        fresh.token.sign(record, MESSAGE, "wrong-pin")
    wrapped = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    assert wrapped.mode is KeyMode.WRAPPED


def test_change_pin(fresh):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin)
    new_pin = "new-pin-4321"
    with pytest.raises(WrongPin):
        fresh.token.change_pin("not-the-old-pin", new_pin)
    fresh.token.change_pin(fresh.pin, new_pin)
    with pytest.raises(WrongPin):
        fresh.token.sign(record, MESSAGE, fresh.pin)
    verify(record, MESSAGE, fresh.token.sign(record, MESSAGE, new_pin))


def test_change_pin_to_unacceptable_pin_is_token_error(fresh):
    with pytest.raises(TokenError, match="new PIN") as caught:
        fresh.token.change_pin(fresh.pin, "12")  # SoftHSM wants 4..255 bytes
    assert not isinstance(caught.value, WrongPin)


# --------------------------------------------------------------------------
# Finding tokens, information


def test_token_not_found_lists_the_labels_seen(fresh, softhsm_module):
    with pytest.raises(TokenNotFound) as caught:
        open_pkcs11_token(softhsm_module, label="no-such-token")
    message = str(caught.value)
    assert "no-such-token" in message and repr(fresh.label) in message


def test_open_by_serial_and_info(fresh, softhsm_module):
    by_serial = open_pkcs11_token(softhsm_module, serial=fresh.token.serial)
    info = by_serial.info()
    assert (info.kind, info.label, info.serial) == ("pkcs11", fresh.label, fresh.token.serial)
    assert info.manufacturer == "SoftHSM project"
    assert info.model.startswith("SoftHSM")
    with pytest.raises(TokenNotFound):
        open_pkcs11_token(softhsm_module, label=fresh.label, serial="0" * 16)


def test_module_is_loaded_once_per_process(softhsm_module):
    lib = pkcs11_token.load_module(softhsm_module)
    assert pkcs11_token.load_module(os.path.realpath(softhsm_module)) is lib
    # Code calling python-pkcs11 directly, with either spelling of the
    # (symlinked) path, must get the same object, not a second C_Initialize.
    assert pkcs11.lib(softhsm_module) is lib
    assert pkcs11.lib(os.path.realpath(softhsm_module)) is lib


# --------------------------------------------------------------------------
# Threads


@pytest.mark.parametrize("mode", list(KeyMode), ids=lambda m: m.value)
def test_threads_share_one_token_without_crashing(fresh, mode):
    # Without the process-wide lock this crashes the interpreter on SoftHSM.
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin, mode=mode)
    threads_count, per_thread = 8, 50
    results: list[tuple[bytes, bytes]] = []
    errors: list[BaseException] = []
    results_lock = threading.Lock()
    start = threading.Barrier(threads_count)

    def worker(worker_id: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                message = b"%d/%d" % (worker_id, i)
                signature = fresh.token.sign(record, message, fresh.pin)
                with results_lock:
                    results.append((message, signature))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == threads_count * per_thread
    for message, signature in results:
        verify(record, message, signature)


# --------------------------------------------------------------------------
# SoftHSM helpers and script


def test_config_template_file_matches_helper():
    template = (REPO / "softhsm_config" / "softhsm2.conf.template").read_text()
    assert template == softhsm.CONFIG_TEMPLATE
    assert "@TOKENDIR@" in template


def test_make_token_script(tmp_path):
    (tmp_path / "so").write_text("so-pin-5678\n")
    (tmp_path / "pin").write_text("user-pin-5678\n")
    token_dir = tmp_path / "hsm"
    result = subprocess.run(
        [
            str(REPO / "softhsm_config" / "make-token.sh"),
            "--dir",
            str(token_dir),
            "--label",
            "scripted",
            "--so-pin-file",
            str(tmp_path / "so"),
            "--pin-file",
            str(tmp_path / "pin"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    conf = token_dir / "softhsm2.conf"
    assert result.stdout.strip() == f"export SOFTHSM2_CONF={conf}"
    assert f"directories.tokendir = {token_dir / 'tokens'}" in conf.read_text()
    # Look from a child: this process's SoftHSM is bound to another directory.
    slots = subprocess.run(
        ["softhsm2-util", "--show-slots"],
        env=dict(os.environ, SOFTHSM2_CONF=str(conf)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "scripted" in slots


# --------------------------------------------------------------------------
# Long-lived signer (the center's own resident key)


def test_resident_signer_signs_many_with_one_login(fresh):
    record = fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.RESIDENT)
    signer = fresh.token.resident_signer(record, fresh.pin)
    try:
        for i in range(50):
            message = MESSAGE + i.to_bytes(2, "big")
            verify(record, message, signer.sign(message))
    finally:
        signer.close()
    # Closed: the process is logged out again, so a per-call signature still works.
    verify(record, MESSAGE, fresh.token.sign(record, MESSAGE, fresh.pin))


def test_resident_signer_refuses_wrapped_keys_and_wrong_pin(fresh):
    wrapped = fresh.token.generate_key(KeyType.P256, fresh.pin, so_pin=fresh.so_pin, mode=KeyMode.WRAPPED)
    with pytest.raises(TokenError):
        fresh.token.resident_signer(wrapped, fresh.pin)
    resident = fresh.token.generate_key(KeyType.P256, fresh.pin, mode=KeyMode.RESIDENT)
    with pytest.raises(WrongPin):
        fresh.token.resident_signer(resident, "not-the-pin").sign(MESSAGE)
