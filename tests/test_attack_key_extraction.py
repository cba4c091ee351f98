"""Attack: copying a member's signing key off the token in wrapped mode (issue 11, point 1).

Whoever holds password B and the vault's wrapped blob (password A, or malware on
the wallet host) calls C_UnwrapKey on the token's trusted wrap key with a
template of their own. Against a wrap key without CKA_UNWRAP_TEMPLATE (tokens set
up before the fix: built here the way the old code built them) that yields an
extractable copy of the key that signs without the token. Against the protected
wrap key, SoftHSM refuses every such template, and the key unwrapped the
wallet's way can be neither read nor wrapped out. Real SoftHSM, no mocks; the
last test drives real `wallet` and `center` processes.
"""

from __future__ import annotations

import base64
import dataclasses
import json

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11
from support import SOFTHSM_MODULE
from test_key_lifecycle_e2e import pay
from test_payments_e2e import fund
from test_wallet_e2e import WalletUser

from hostkit.sealing import MINIMUM_KDF
from token_wallet.document import new_document
from token_wallet.vault import Vault
from token_wallet.vault_lock import vault_lock
from tokens import pkcs11_token
from tokens.base import KeyMode, KeyRecord, KeyType
from tokens.pkcs11_token import (
    LIBRARY_LOCK,
    Pkcs11Token,
    open_pkcs11_token,
)

# What the code before the fix called its (only) wrap key; its tokens keep it.
OLD_WRAP_KEY_LABEL = "tokenpay-wrap"
KWP = Mechanism.AES_KEY_WRAP_PAD
MESSAGE = b"pay 1234 JPY to store 42"


@dataclasses.dataclass
class Token:
    label: str
    so_pin: str
    pin: str
    token: Pkcs11Token
    raw: pkcs11.Token  # python-pkcs11's view, for the attacker's own calls (under LIBRARY_LOCK)


def open_token(make_softhsm_token, module: str) -> Token:
    label, so_pin, pin = make_softhsm_token()
    token = open_pkcs11_token(module, label=label)
    with LIBRARY_LOCK:
        raw = pkcs11_token.load_module(module).get_token(token_label=label)
    return Token(label, so_pin, pin, token, raw)


# --- a token as the code before the fix left it ---------------------------------------------


def make_old_wrap_key(t: Token) -> None:
    """The wrap key exactly as the old _ensure_wrap_key made it: trusted, locked down, no unwrap template."""
    with LIBRARY_LOCK, t.raw.open(rw=True, so_pin=t.so_pin) as session:
        if list(session.get_objects({Attribute.LABEL: OLD_WRAP_KEY_LABEL, Attribute.TRUSTED: True})):
            return
        session.generate_key(
            P11KeyType.AES,
            256,
            label=OLD_WRAP_KEY_LABEL,
            store=True,
            capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
            template={
                Attribute.PRIVATE: False,
                Attribute.TRUSTED: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.MODIFIABLE: False,
                Attribute.COPYABLE: False,
                Attribute.DESTROYABLE: False,
            },
        )


def make_old_key_record(t: Token) -> KeyRecord:
    """A P-256 key wrapped under the old wrap key, with the handle the old code wrote into the vault."""
    spec = pkcs11_token._KEY_SPECS[KeyType.P256]
    with LIBRARY_LOCK, t.raw.open(rw=True, user_pin=t.pin) as session:
        wrap_key = session.get_key(label=OLD_WRAP_KEY_LABEL)
        public_key, private_key = session.generate_keypair(
            P11KeyType.EC,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            store=False,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.PRIVATE: False, Attribute.EC_PARAMS: pkcs11_token.EC_PARAMS_SECP256R1},
            private_template={
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: True,
                Attribute.WRAP_WITH_TRUSTED: True,
            },
        )
        spki_der = spec.spki_der(public_key)
        blob = wrap_key.wrap_key(private_key, mechanism=KWP)
    handle = {
        "format": "pkcs11-wrapped-v1",
        "token_serial": t.token.serial,
        "wrap_key_label": OLD_WRAP_KEY_LABEL,
        "wrap_mechanism": KWP.name,
        "wrapped_key_b64": base64.b64encode(blob).decode(),
        "key_label": "tokenpay-signing",
    }
    return KeyRecord(
        mode=KeyMode.WRAPPED, key_type=KeyType.P256, algorithm="ES256", spki_der=spki_der, handle=handle
    )


# --- what the attacker does -----------------------------------------------------------------

READABLE = {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}
# Templates an attacker with password B and the blob may try on the wrap key.
INSECURE_UNWRAPS = {
    "readable": (ObjectClass.PRIVATE_KEY, P11KeyType.EC, READABLE),
    "extractable, to wrap out later": (
        ObjectClass.PRIVATE_KEY,
        P11KeyType.EC,
        {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
    ),
    "sensitivity left to the token": (ObjectClass.PRIVATE_KEY, P11KeyType.EC, {}),
    "a copy kept on the token": (
        ObjectClass.PRIVATE_KEY,
        P11KeyType.EC,
        {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.TOKEN: True},
    ),
    "as a readable secret key": (ObjectClass.SECRET_KEY, P11KeyType.GENERIC_SECRET, READABLE),
}


def attacker_unwrap(session, wrap_label: str, blob: bytes, object_class, key_type, template: dict):
    wrap_key = session.get_key(label=wrap_label)
    capabilities = MechanismFlag.SIGN if object_class is ObjectClass.PRIVATE_KEY else 0
    # python-pkcs11 would send ENCRYPT/WRAP/VERIFY=False, which SoftHSM refuses on a private key.
    defaults = dict.fromkeys((Attribute.ENCRYPT, Attribute.WRAP, Attribute.VERIFY), pkcs11.DEFAULT)
    return wrap_key.unwrap_key(
        object_class,
        key_type,
        blob,
        mechanism=KWP,
        capabilities=capabilities,
        store=bool(template.get(Attribute.TOKEN)),
        template={**defaults, **template},
    )


def private_key_from_value(value: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(value, "big"), ec.SECP256R1())


def spki_of(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def blob_of(record: KeyRecord) -> bytes:
    return base64.b64decode(record.handle["wrapped_key_b64"])


@pytest.fixture(scope="module")
def upgraded(make_softhsm_token, softhsm_module):
    """A token made before the fix (old wrap key, a blob under it), then given a key by today's code."""
    t = open_token(make_softhsm_token, softhsm_module)
    make_old_wrap_key(t)
    old_record = make_old_key_record(t)
    new_record = t.token.generate_key(KeyType.P256, t.pin, so_pin=t.so_pin, mode=KeyMode.WRAPPED)
    return t, old_record, new_record


# --- (a) the unwrap attack ------------------------------------------------------------------


def test_the_attack_reads_the_key_under_an_old_wrap_key(upgraded):
    # The control: on a wrap key without an unwrap template the attack works, so the test below can fail.
    t, old_record, _ = upgraded
    with LIBRARY_LOCK, t.raw.open(rw=True, user_pin=t.pin) as session:
        stolen = attacker_unwrap(
            session, OLD_WRAP_KEY_LABEL, blob_of(old_record), *INSECURE_UNWRAPS["readable"]
        )
        value = stolen[Attribute.VALUE]
    assert (
        spki_of(private_key_from_value(value)) == old_record.spki_der
    )  # a copy that signs without the token


@pytest.mark.parametrize("attempt", list(INSECURE_UNWRAPS))
def test_unwrap_with_an_insecure_template_is_refused_by_the_token(upgraded, attempt):
    t, _, record = upgraded
    with LIBRARY_LOCK, t.raw.open(rw=True, user_pin=t.pin) as session:
        with pytest.raises(p11.TemplateInconsistent):
            attacker_unwrap(
                session, record.handle["wrap_key_label"], blob_of(record), *INSECURE_UNWRAPS[attempt]
            )
        # Nothing was made that could be read.
        assert list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})) == []
        assert (
            list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.PRIVATE: True}))
            == []
        )


def test_unwrap_into_an_extractable_key_and_wrap_it_out_is_refused(upgraded):
    # The same theft in two steps: unwrap extractable (but sensitive), wrap it under the attacker's own
    # AES key, whose value the attacker can read, and undo the wrap off the token.
    t, old_record, record = upgraded
    for target, works in ((old_record, True), (record, False)):
        with LIBRARY_LOCK, t.raw.open(rw=True, user_pin=t.pin) as session:
            own = session.generate_key(
                P11KeyType.AES,
                256,
                template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
                capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
            )
            try:
                copy = attacker_unwrap(
                    session,
                    target.handle["wrap_key_label"],
                    blob_of(target),
                    *INSECURE_UNWRAPS["extractable, to wrap out later"],
                )
                pkcs8 = aes_key_unwrap_with_padding(own[Attribute.VALUE], own.wrap_key(copy, mechanism=KWP))
            except p11.TemplateInconsistent:
                pkcs8 = None
        assert (pkcs8 is not None) is works, target.handle["wrap_key_label"]
        if works:  # SoftHSM pads the PKCS#8 DER to 8 bytes before the KWP wrap: cut at its own length
            assert spki_of(serialization.load_der_private_key(pkcs8[: 2 + pkcs8[1]], None)) == target.spki_der


# --- (b) the key unwrapped the wallet's way -------------------------------------------------


@pytest.fixture(scope="module")
def other_trusted_key(upgraded):
    """A second trusted wrap key, made by the SO (the old wrap key is a third)."""
    t, _, _ = upgraded
    with LIBRARY_LOCK, t.raw.open(rw=True, so_pin=t.so_pin) as session:
        session.generate_key(
            P11KeyType.AES,
            256,
            label="another-trusted",
            store=True,
            capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
            template={Attribute.PRIVATE: False, Attribute.TRUSTED: True},
        )
    return "another-trusted"


def test_the_wallets_unwrapped_key_cannot_be_read_or_wrapped_out(upgraded, other_trusted_key):
    t, _, record = upgraded
    spec = pkcs11_token._KEY_SPECS[KeyType.P256]
    with LIBRARY_LOCK, t.raw.open(rw=True, user_pin=t.pin) as session:
        wrap_key = session.get_key(label=record.handle["wrap_key_label"])
        key = Pkcs11Token._unwrap(wrap_key, spec, blob_of(record))  # exactly the wallet's own unwrap call
        assert key.get_attributes([Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.TOKEN]) == {
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.TOKEN: False,
        }
        with pytest.raises(p11.AttributeSensitive):
            key[Attribute.VALUE]
        own = session.generate_key(
            P11KeyType.AES, 256, capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP
        )
        trusted = [
            session.get_key(label=label)
            for label in (OLD_WRAP_KEY_LABEL, other_trusted_key, record.handle["wrap_key_label"])
        ]
        for wrapping_key in [own, *trusted]:
            with pytest.raises((p11.KeyUnextractable, p11.KeyNotWrappable)):
                wrapping_key.wrap_key(key, mechanism=KWP)
        # Nor can it be made extractable afterwards, or copied into an extractable key.
        # (SoftHSM answers CKR_ACTION_PROHIBITED, which python-pkcs11 maps to no subclass.)
        for attribute, value in ((Attribute.EXTRACTABLE, True), (Attribute.SENSITIVE, False)):
            with pytest.raises(p11.PKCS11Error):
                key[attribute] = value
            assert key[attribute] is not value
        with pytest.raises(p11.AttributeReadOnly):
            key.copy({Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False})
        # It still signs, which is all the wallet needs.
        assert len(spec.sign(key, MESSAGE)) > 64


def test_old_blobs_still_sign_and_new_keys_use_only_the_protected_wrap_key(upgraded):
    t, old_record, record = upgraded
    assert record.handle["wrap_key_label"] != OLD_WRAP_KEY_LABEL
    for key in (old_record, record):
        signature = t.token.sign(key, MESSAGE, t.pin)
        public_key = serialization.load_der_public_key(key.spki_der)
        public_key.verify(signature, MESSAGE, ec.ECDSA(hashes.SHA256()))


# --- (c) `wallet status` on a wallet made before the fix, and the way out --------------------


def make_old_wallet(member: WalletUser, softhsm_module: str) -> None:
    """A wallet home as `wallet init` made it before the fix: its blob under the token's old wrap key."""
    token = open_pkcs11_token(softhsm_module, label=member.label)
    with LIBRARY_LOCK:
        raw = pkcs11_token.load_module(softhsm_module).get_token(token_label=member.label)
    t = Token(member.label, _first_line(member.files["so"]), member.pin, token, raw)
    make_old_wrap_key(t)
    record = make_old_key_record(t)
    token_doc = {"kind": "pkcs11", "module": SOFTHSM_MODULE, "label": member.label, "serial": t.token.serial}
    member.home.mkdir(mode=0o700)
    path = member.vault
    with vault_lock(path):
        Vault.create(path, _first_line(member.files["a"]), new_document(token_doc, record), kdf=MINIMUM_KDF)


def _first_line(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\n")


def status_warning(member: WalletUser) -> list[str]:
    result = member.run("status")
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if "EXTRACTABLE" in line]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # one database is enough for this story
def test_status_names_an_extractable_key_and_rotate_key_moves_it_under_the_protected_wrap_key(
    tmp_path, make_softhsm_token, softhsm_module, live_center
):
    member = WalletUser(tmp_path, make_softhsm_token, "old")
    make_old_wallet(member, softhsm_module)
    assert member.enroll_member(live_center).returncode == 0  # the old blob still signs
    store = WalletUser(tmp_path, make_softhsm_token, "s")
    store.init("--key-type", "ed25519")
    enrolled = store.run(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(live_center.cert),
        "--store",
        "--name",
        "Corner Shop",
        "--address",
        "2-2 Shibuya",
        "--bank-account",
        "JP-0009-7654321",
        "--json",
    )
    assert enrolled.returncode == 0, enrolled.stderr
    store_id = json.loads(enrolled.stdout)["member_id"]
    fund(member, live_center, "5000")
    assert json.loads(pay(member, store_id, "1000", "old-key").stdout)["balance_minor"] == 4000

    status = member.json("status")
    assert status["key_protection"] == "extractable_legacy_wrap"
    [warning] = status_warning(member)  # one line, naming the way out
    assert "wallet rotate-key" in warning and "password B" in warning

    rotated = member.json("rotate-key", "--so-pin-file", member.files["so"])
    assert rotated["status"] == "rotated" and rotated["old_kid"] == status["kid"]
    status = member.json("status")
    assert (status["kid"], status["key_protection"]) == (rotated["new_kid"], "protected")
    assert status_warning(member) == []
    assert json.loads(pay(member, store_id, "500", "new-key").stdout)["balance_minor"] == 3500
