"""PKCS#11 token backend (SoftHSM in tests; YubiKey, Nitrokey, HSMs in real use).

Two key modes (DESIGN.md, "The two passwords on hardware"):

* WRAPPED: the key pair is generated on the token as session objects, the
  private key is wrapped (CKM_AES_KEY_WRAP_PAD) under a token-resident,
  trusted, non-extractable AES key that the security officer created, and
  only the blob leaves the token (into the password-A vault). Signing logs
  in with the user PIN (password B), unwraps into a session object, signs
  and destroys it. Token + PIN without the blob cannot sign; blob without
  the token and PIN cannot sign. The wrap key carries CKA_UNWRAP_TEMPLATE
  (made through ctypes, pkcs11_raw), so even token + PIN + blob cannot
  unwrap a copy that can be read or wrapped out; tokens set up before that
  keep their old wrap key for their old blobs only (key_protection).
* RESIDENT: the key pair lives on the token, private key non-extractable.
  An OpenPGP card behind OpenSC's PKCS#11 module (its PKCS#15 emulation)
  generates only after the admin PIN (PW3, the token's SO PIN) and only into
  its fixed signature slot, CKA_ID 01; RSA-2048 there (OpenSC 0.23 offers no
  Ed25519 key generation for it).

Rules this module keeps:

* Every call into a PKCS#11 library holds ONE process-wide lock. python-pkcs11
  calls C_Initialize without locking flags, and concurrent signing through
  it on SoftHSM crashes the process (measured: segfault, double free).
* Each operation opens its own session and closes it: a session in which a
  PIN was refused can stay in OperationActive, and session objects (the
  unwrapped key) vanish with the session.
* We log in ourselves (C_Login through ctypes on the same module) instead of
  through python-pkcs11's `Token.open(user_pin=...)`: that one loses the
  session handle when the PIN is wrong, and a leaked read-only session later
  blocks the SO login (CKR_SESSION_READ_ONLY_EXISTS).
* PINs never appear in messages or logs.

Long because the rules above are one discipline around one class: every
method takes the library lock, opens its own session and logs in through the
same ctypes path, and key generation, wrapping and signing each need all of
that; the raw ctypes layer is already apart (pkcs11_raw). Not split yet:
key specs and SPKI/signature conversion could move to a pure module.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass, TokenFlag
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11

from . import pkcs11_raw
from .base import (
    ALGORITHM_FOR_KEY_TYPE,
    PROTECTION_LEGACY_WRAP,
    PROTECTION_PROTECTED,
    KeyMode,
    KeyNotFound,
    KeyRecord,
    KeyType,
    PinLocked,
    PinStatus,
    Token,
    TokenError,
    TokenInfo,
    TokenNotFound,
    TokenRemoved,
    WrongPin,
)

log = logging.getLogger(__name__)

# Held around every call into any PKCS#11 library in this process (see the
# module docstring). Re-entrant so that helpers can nest. Code outside this
# module that talks to a module loaded here (tests, tools) must hold it too.
LIBRARY_LOCK = threading.RLock()

# The wrap key every new key is wrapped under: it carries CKA_UNWRAP_TEMPLATE,
# so whatever it unwraps is a sensitive, non-extractable session signing key.
WRAP_KEY_LABEL = "tokenpay-wrap-protected"
# The wrap key of tokens set up before that (no unwrap template): whoever has
# password B and a blob made under it can unwrap the key extractable and read
# it. It cannot be destroyed (DESTROYABLE=False), so it stays on those tokens;
# it still unwraps its old blobs, and never wraps a new key.
LEGACY_WRAP_KEY_LABEL = "tokenpay-wrap"
WRAP_KEY_BITS = 256
WRAP_MECHANISM = Mechanism.AES_KEY_WRAP_PAD

# What the protected wrap key lets an unwrapped key be, and exactly what our
# own unwrap asks for (one place for both). SoftHSM 2.6.1 refuses an unwrap
# (CKR_TEMPLATE_INCONSISTENT) unless every attribute here is in the caller's
# template with this value: no one can unwrap a blob into a key that can be
# read, wrapped out, kept on the token, used to derive or decrypt, or changed.
UNWRAPPED_KEY_TEMPLATE = {
    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.MODIFIABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}

HANDLE_FORMAT_WRAPPED = "pkcs11-wrapped-v1"
HANDLE_FORMAT_RESIDENT = "pkcs11-resident-v1"
HANDLE_FORMATS = {KeyMode.WRAPPED: HANDLE_FORMAT_WRAPPED, KeyMode.RESIDENT: HANDLE_FORMAT_RESIDENT}

KEY_ID_BYTES = 16
RSA_KEY_BITS = 2048

# OpenSC's OpenPGP card emulation (pkcs15-openpgp.c) names its tokens after the
# PINs: "OpenPGP card (User PIN)" (PW1 mode 82) and "OpenPGP card (User PIN
# (sig))" (PW1 mode 81, the one that signs with the signature key).
OPENSC_EMULATED_MODEL = "PKCS#15 emulated"
OPENPGP_LABEL_PREFIX = "OpenPGP card"
OPENPGP_SIGNING_LABEL_SUFFIX = "(sig))"
OPENPGP_SIGNATURE_KEY_ID = b"\x01"  # key slots have fixed ids: 01 sign, 02 decrypt, 03 authenticate

# A process starting while another one writes the token directory can see
# GeneralError or miss the token once (DESIGN.md); SoftHSM also only sees
# tokens that existed when it was initialised. Between attempts we
# re-initialise the library so that it rescans its token directory.
OPEN_RETRY_DELAYS_S = (0.01, 0.2)

# DER of the curve names the token takes as CKA_EC_PARAMS.
EC_PARAMS_SECP256R1 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7
EC_PARAMS_EDWARDS25519 = b"\x13\x0c" + b"edwards25519"  # PrintableString

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_COORDINATE_BYTES = 32

# Constants python-pkcs11 does not export under these names.
_CKU_SO = 0
_CKU_USER = 1
_CKR_OK = 0x000
_CKR_PIN_INCORRECT = 0x0A0
_CKR_PIN_INVALID = 0x0A1
_CKR_PIN_LEN_RANGE = 0x0A2
_CKR_PIN_EXPIRED = 0x0A3
_CKR_PIN_LOCKED = 0x0A4
_CKR_DEVICE_REMOVED = 0x032
_CKR_SESSION_HANDLE_INVALID = 0x0B3
_CKR_SESSION_READ_ONLY_EXISTS = 0x0B7
_CKR_TOKEN_NOT_PRESENT = 0x0E0
_CKR_USER_ALREADY_LOGGED_IN = 0x100
_CKR_USER_PIN_NOT_INITIALIZED = 0x102
_CKR_USER_ANOTHER_ALREADY_LOGGED_IN = 0x104


# --------------------------------------------------------------------------
# Loading modules (once per process)


_LIBS: dict[str, pkcs11.lib] = {}
_RAW: dict[str, pkcs11_raw.RawModule] = {}


def load_module(module_path: str) -> pkcs11.lib:
    """The process-wide python-pkcs11 object for this module, loaded once.

    Keyed by the real path: two spellings of one .so (a symlink, as Debian's
    /usr/lib/softhsm/libsofthsm2.so is) would otherwise load it twice, and
    the second C_Initialize fails (CRYPTOKI_ALREADY_INITIALIZED).
    """
    real_path = os.path.realpath(module_path)
    with LIBRARY_LOCK:
        lib = _LIBS.get(real_path) or _loaded_by_python_pkcs11(real_path)
        if lib is None:
            if not os.path.exists(real_path):
                raise TokenError(f"PKCS#11 module not found: {module_path}")
            lib = pkcs11.lib(real_path)
        _LIBS[real_path] = lib
        _alias_in_python_pkcs11(lib, module_path, real_path)
        if not lib.initialized:  # a re-initialisation failed half-way before
            lib.initialize()
        return lib


def _loaded_by_python_pkcs11(real_path: str) -> pkcs11.lib | None:
    # Someone may have called pkcs11.lib() directly, under any spelling.
    loaded = getattr(pkcs11, "_loaded", None)
    if not isinstance(loaded, dict):
        return None
    for path, lib in loaded.items():
        if os.path.realpath(path) == real_path:
            return lib
    return None


def _alias_in_python_pkcs11(lib: pkcs11.lib, *paths: str) -> None:
    # python-pkcs11 caches by the exact string it was given (pkcs11._loaded,
    # 0.10.1); registering our spellings makes a later direct pkcs11.lib()
    # call return this object instead of initialising the module again.
    loaded = getattr(pkcs11, "_loaded", None)
    if isinstance(loaded, dict):
        for path in paths:
            loaded.setdefault(path, lib)


def _raw_module(module_path: str) -> pkcs11_raw.RawModule:
    real_path = os.path.realpath(module_path)
    with LIBRARY_LOCK:
        if real_path not in _RAW:
            load_module(real_path)  # C_Initialize must have run first
            try:
                _RAW[real_path] = pkcs11_raw.RawModule(real_path)
            except pkcs11_raw.RawError as error:
                raise TokenError(f"{error} in {real_path}") from None
        return _RAW[real_path]


# --------------------------------------------------------------------------
# Finding a token


def open_pkcs11_token(
    module_path: str, *, label: str | None = None, serial: str | None = None
) -> Pkcs11Token:
    """Find a token by label and/or serial (slot ids change after init).

    With neither given, the only initialised token is taken. If the token is
    not seen at first, the library is re-initialised (C_Finalize +
    C_Initialize) so that SoftHSM rescans its directory: that closes every
    session of this module in the process. Pkcs11Token keeps no session
    between calls, so only code holding its own python-pkcs11 sessions
    (tests, tools) has to mind it.
    """
    delays_s = (0.0, *OPEN_RETRY_DELAYS_S)
    seen: list[str] = []
    for attempt, delay_s in enumerate(delays_s):
        time.sleep(delay_s)
        try:
            with LIBRARY_LOCK:
                lib = load_module(module_path)
                if attempt > 0:
                    lib.reinitialize()  # rescan the token directory
                found, seen = _match_tokens(lib, label, serial)
        except (p11.GeneralError, p11.NoSuchToken, p11.TokenNotRecognised):
            continue
        if len(found) == 1:
            return Pkcs11Token(module_path, found[0])
        if len(found) > 1:
            raise TokenNotFound(
                f"{len(found)} tokens match {_describe_wanted(label, serial)}; give the serial to choose one"
            )
    raise TokenNotFound(
        f"no PKCS#11 token {_describe_wanted(label, serial)} in {module_path}; "
        f"tokens seen: {', '.join(seen) if seen else 'none'}"
    )


def _match_tokens(
    lib: pkcs11.lib, label: str | None, serial: str | None
) -> tuple[list[pkcs11.Token], list[str]]:
    found, seen = [], []
    for slot in lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except (p11.TokenNotPresent, p11.TokenNotRecognised):
            continue
        if not token.flags & TokenFlag.TOKEN_INITIALIZED:
            continue
        token_serial = _serial_text(token)
        seen.append(f"{token.label!r} (serial {token_serial})")
        if label is not None and token.label != label:
            continue
        if serial is not None and token_serial != serial:
            continue
        found.append(token)
    return found, seen


def _describe_wanted(label: str | None, serial: str | None) -> str:
    parts = [f"label {label!r}"] if label is not None else []
    parts += [f"serial {serial!r}"] if serial is not None else []
    return "with " + " and ".join(parts) if parts else "initialised"


def _serial_text(token: pkcs11.Token) -> str:
    return token.serial.decode("ascii", errors="replace").strip()


# --------------------------------------------------------------------------
# Key types


@dataclass(frozen=True)
class _KeySpec:
    p11_key_type: P11KeyType
    generate_mechanism: Mechanism
    key_length_bits: int | None
    public_template: dict
    spki_der: Callable[[pkcs11.PublicKey], bytes]
    sign: Callable[[pkcs11.PrivateKey, bytes], bytes]


def _p256_spki_der(public_key: pkcs11.PublicKey) -> bytes:
    point = _strip_octet_string(public_key[Attribute.EC_POINT], 1 + 2 * P256_COORDINATE_BYTES)
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return _spki_der(key)


def _ed25519_spki_der(public_key: pkcs11.PublicKey) -> bytes:
    raw = _strip_octet_string(public_key[Attribute.EC_POINT], 32)
    return _spki_der(ed25519.Ed25519PublicKey.from_public_bytes(raw))


def _rsa_spki_der(public_key: pkcs11.PublicKey) -> bytes:
    numbers = rsa.RSAPublicNumbers(
        e=int.from_bytes(public_key[Attribute.PUBLIC_EXPONENT], "big"),
        n=int.from_bytes(public_key[Attribute.MODULUS], "big"),
    )
    return _spki_der(numbers.public_key())


def _spki_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _strip_octet_string(value: bytes, raw_length: int) -> bytes:
    # CKA_EC_POINT is a DER OCTET STRING per the standard, but some modules
    # return the raw point; accept both (short-form DER length only: <128).
    if len(value) == raw_length + 2 and value[0] == 0x04 and value[1] == raw_length:
        return value[2:]
    if len(value) == raw_length:
        return value
    raise TokenError(f"unexpected CKA_EC_POINT of {len(value)} bytes from the token")


def _sign_p256(private_key: pkcs11.PrivateKey, message: bytes) -> bytes:
    # SoftHSM has no CKM_ECDSA_SHA256: hash here, sign the digest raw.
    digest = hashlib.sha256(message).digest()
    raw = private_key.sign(digest, mechanism=Mechanism.ECDSA)
    return _ecdsa_der_low_s(raw)


def _ecdsa_der_low_s(raw_signature: bytes) -> bytes:
    # Tokens return r||s. Low-S makes the encoding unique (the center
    # rejects malleable high-S forms).
    if len(raw_signature) != 2 * P256_COORDINATE_BYTES:
        raise TokenError(f"unexpected ECDSA signature of {len(raw_signature)} bytes from the token")
    half = P256_COORDINATE_BYTES
    r = int.from_bytes(raw_signature[:half], "big")
    s = int.from_bytes(raw_signature[half:], "big")
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def _sign_ed25519(private_key: pkcs11.PrivateKey, message: bytes) -> bytes:
    return private_key.sign(message, mechanism=Mechanism.EDDSA)


def _sign_rsa(private_key: pkcs11.PrivateKey, message: bytes) -> bytes:
    return private_key.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS)


_KEY_SPECS = {
    KeyType.P256: _KeySpec(
        P11KeyType.EC,
        Mechanism.EC_KEY_PAIR_GEN,
        None,
        {Attribute.EC_PARAMS: EC_PARAMS_SECP256R1},
        _p256_spki_der,
        _sign_p256,
    ),
    KeyType.ED25519: _KeySpec(
        P11KeyType.EC_EDWARDS,
        Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
        None,
        {Attribute.EC_PARAMS: EC_PARAMS_EDWARDS25519},
        _ed25519_spki_der,
        _sign_ed25519,
    ),
    KeyType.RSA2048: _KeySpec(
        P11KeyType.RSA,
        Mechanism.RSA_PKCS_KEY_PAIR_GEN,
        RSA_KEY_BITS,
        {},
        _rsa_spki_der,
        _sign_rsa,
    ),
}

_SIGN_ONLY = MechanismFlag.SIGN | MechanismFlag.VERIFY


def _wrap_key_template() -> pkcs11_raw.Template:
    """CK_ATTRIBUTEs of the protected wrap key (made by the SO through ctypes)."""
    attributes = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: P11KeyType.AES,
        Attribute.VALUE_LEN: WRAP_KEY_BITS // 8,
        Attribute.LABEL: WRAP_KEY_LABEL,
        Attribute.TOKEN: True,
        # Public so that the user session sees it; an SO session cannot see
        # the user's private objects anyway.
        Attribute.PRIVATE: False,
        Attribute.TRUSTED: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.WRAP: True,
        Attribute.UNWRAP: True,
        Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False,
        # Every wrapped blob on this token depends on this key, and its unwrap
        # template is what keeps unwrapped keys on the token: nobody may
        # change, copy or delete it.
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: False,
    }
    template = _raw_template(attributes)
    template.append((int(Attribute.UNWRAP_TEMPLATE), _raw_template(UNWRAPPED_KEY_TEMPLATE)))
    return template


def _raw_template(attributes: dict) -> pkcs11_raw.Template:
    # Enums become plain CK_ULONGs; bools stay CK_BBOOL; labels byte strings.
    return [
        (int(key), value if isinstance(value, (bool, str, bytes)) else int(value))
        for key, value in attributes.items()
    ]


# --------------------------------------------------------------------------
# How well a key record's key is kept


def _wrap_key_label_of(key: KeyRecord) -> str:
    # Records made before wrap keys were protected name the legacy label;
    # a record naming anything else was not made by us.
    label = key.handle.get("wrap_key_label", LEGACY_WRAP_KEY_LABEL)
    if label not in (WRAP_KEY_LABEL, LEGACY_WRAP_KEY_LABEL):
        raise KeyNotFound(f"key record names an unknown wrap key {str(label)[:40]!r}")
    return label


def key_protection(key: KeyRecord) -> str:
    """PROTECTION_LEGACY_WRAP for a blob under a token's old wrap key, else PROTECTION_PROTECTED.

    A legacy blob can be unwrapped into an extractable key by whoever holds
    the vault (password A) and password B; resident and card keys, and blobs
    under the protected wrap key, never leave the token in the clear.
    """
    if key.handle.get("format") != HANDLE_FORMAT_WRAPPED:
        return PROTECTION_PROTECTED
    if key.handle.get("wrap_key_label", LEGACY_WRAP_KEY_LABEL) == WRAP_KEY_LABEL:
        return PROTECTION_PROTECTED
    return PROTECTION_LEGACY_WRAP


# --------------------------------------------------------------------------
# The token


class Pkcs11Token(Token):
    """One token in one PKCS#11 module. Holds no session between calls."""

    def __init__(self, module_path: str, token: pkcs11.Token):
        self._token = token
        self._raw = _raw_module(module_path)
        self._module_path = module_path
        self._label = token.label
        self._serial = _serial_text(token)
        self._openpgp = token.model.strip() == OPENSC_EMULATED_MODEL and token.label.startswith(
            OPENPGP_LABEL_PREFIX
        )

    def __repr__(self) -> str:
        return f"<Pkcs11Token label={self._label!r} serial={self._serial}>"

    @property
    def label(self) -> str:
        return self._label

    @property
    def serial(self) -> str:
        return self._serial

    # -- information --------------------------------------------------------

    def info(self) -> TokenInfo:
        with LIBRARY_LOCK, self._errors():
            fresh = self._token.slot.get_token()
            return TokenInfo(
                kind="pkcs11",
                label=fresh.label,
                serial=_serial_text(fresh),
                manufacturer=fresh.manufacturer_id,
                model=fresh.model,
            )

    def pin_status(self) -> PinStatus:
        with LIBRARY_LOCK, self._errors():
            flags = self._token.slot.get_token().flags
        return PinStatus(
            tries_left=None,  # PKCS#11 only tells flags, never a count
            locked=bool(flags & TokenFlag.USER_PIN_LOCKED),
            count_low=bool(flags & TokenFlag.USER_PIN_COUNT_LOW),
            final_try=bool(flags & TokenFlag.USER_PIN_FINAL_TRY),
        )

    def generation_needs_so_pin(self) -> bool:
        """True if even a resident key needs the SO PIN: an OpenPGP card's admin PIN (PW3) via OpenSC."""
        return self._openpgp

    def supports_wrapping(self) -> bool:
        """True if the token offers AES key generation and AES_KEY_WRAP_PAD both ways."""
        with LIBRARY_LOCK, self._errors():
            slot = self._token.slot
            mechanisms = slot.get_mechanisms()
            if Mechanism.AES_KEY_GEN not in mechanisms or WRAP_MECHANISM not in mechanisms:
                return False
            flags = slot.get_mechanism_info(WRAP_MECHANISM).flags
        both = MechanismFlag.WRAP | MechanismFlag.UNWRAP
        return flags & both == both

    # -- key generation -----------------------------------------------------

    def generate_key(
        self,
        key_type: KeyType,
        pin: str,
        *,
        so_pin: str | None = None,
        entropy: bytes | None = None,
        label: str = "tokenpay-signing",
        mode: KeyMode | None = None,
    ) -> KeyRecord:
        """Generate a signing key on the token and describe it in a KeyRecord.

        mode None = WRAPPED if the token can wrap and so_pin is given, else
        RESIDENT; also RESIDENT when the token turns out unable to wrap this
        key type (check `KeyRecord.mode`). WRAPPED needs the SO PIN once per
        token, to create the trusted wrap key; once that exists, so_pin may
        be omitted.
        """
        key_type = KeyType(key_type)
        with LIBRARY_LOCK, self._errors():
            chosen = self._choose_mode(mode, so_pin)
            if chosen is KeyMode.RESIDENT:
                return self._generate_resident(key_type, pin, entropy, label, so_pin)
            if so_pin is not None:
                self._ensure_wrap_key(so_pin)
            try:
                return self._generate_wrapped(key_type, pin, entropy, label)
            except p11.KeyNotWrappable:
                # A token may wrap some key types only (SoftHSM 2.6.1: not
                # Ed25519). Automatic mode falls back; the record says so.
                if mode is not None:
                    raise TokenError(
                        f"token {self._label!r} cannot wrap {key_type.value} keys; "
                        "use resident mode or another key type"
                    ) from None
                log.info("token %r cannot wrap %s keys; key made resident", self._label, key_type.value)
                return self._generate_resident(key_type, pin, entropy, label, so_pin)

    def _choose_mode(self, mode: KeyMode | None, so_pin: str | None) -> KeyMode:
        if mode is None:
            wrapped = so_pin is not None and self.supports_wrapping()
            return KeyMode.WRAPPED if wrapped else KeyMode.RESIDENT
        mode = KeyMode(mode)
        if mode is KeyMode.WRAPPED:
            if not self.supports_wrapping():
                raise TokenError(
                    f"token {self._label!r} cannot wrap keys (no AES_KEY_WRAP_PAD); use resident mode"
                )
            if so_pin is None and not self._wrap_key_exists():
                # Also on a token set up before wrap keys were protected: its
                # old wrap key never wraps a new key.
                raise TokenError(
                    f"wrapped mode needs the SO PIN of token {self._label!r} once "
                    "(--so-pin-file), to create its protected wrap key"
                )
        return mode

    def _wrap_key_exists(self) -> bool:
        with self._session() as session:
            return len(self._find_wrap_keys(session, WRAP_KEY_LABEL)) == 1

    def has_protected_wrap_key(self) -> bool:
        """True once the SO has made this token's protected wrap key."""
        with LIBRARY_LOCK, self._errors():
            return self._wrap_key_exists()

    @staticmethod
    def _find_wrap_keys(session, label: str) -> list:
        # TRUSTED in the search: only the SO can set it, so a public AES key a
        # user made with the same label cannot stand in for ours.
        return list(
            session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.LABEL: label,
                    Attribute.TRUSTED: True,
                }
            )
        )

    def _ensure_wrap_key(self, so_pin: str) -> None:
        """Create the token's protected wrap key as SO unless it is already there.

        A legacy wrap key on the token is left alone (it cannot be destroyed)
        and never used for new keys.
        """
        with self._session(rw=True, pin=so_pin, user_type=_CKU_SO) as session:
            existing = self._find_wrap_keys(session, WRAP_KEY_LABEL)
            if len(existing) > 1:
                raise TokenError(
                    f"token {self._label!r} has {len(existing)} wrap keys "
                    f"labelled {WRAP_KEY_LABEL!r}; expected one"
                )
            if existing:
                return
            try:
                self._raw.generate_key(session.handle, Mechanism.AES_KEY_GEN, _wrap_key_template())
            except pkcs11_raw.RawError as error:
                raise TokenError(
                    f"token {self._label!r} could not create its protected wrap key ({error})"
                ) from None

    def _generate_wrapped(self, key_type: KeyType, pin: str, entropy: bytes | None, label: str) -> KeyRecord:
        spec = _KEY_SPECS[key_type]
        with self._session(rw=True, pin=pin) as session:
            wrap_key = self._wrap_key(session, WRAP_KEY_LABEL)
            self._seed(session, entropy)
            public_key, private_key = self._generate_pair(
                session,
                spec,
                label,
                key_id=None,
                store=False,
                private_extra={
                    Attribute.EXTRACTABLE: True,  # or it cannot be wrapped at all
                    Attribute.WRAP_WITH_TRUSTED: True,  # ... and only under our key
                },
            )
            try:
                spki_der = spec.spki_der(public_key)
                blob = wrap_key.wrap_key(private_key, mechanism=WRAP_MECHANISM)
            finally:
                # Session objects vanish with the session anyway; destroying
                # them now keeps the key's time on the token minimal.
                private_key.destroy()
                public_key.destroy()
        return self._key_record(
            KeyMode.WRAPPED,
            key_type,
            spki_der,
            label,
            {
                "wrap_key_label": WRAP_KEY_LABEL,  # the protected key, never the legacy one
                "wrap_mechanism": WRAP_MECHANISM.name,
                "wrapped_key_b64": base64.b64encode(blob).decode("ascii"),
            },
        )

    def _generate_resident(
        self, key_type: KeyType, pin: str, entropy: bytes | None, label: str, so_pin: str | None
    ) -> KeyRecord:
        if self._openpgp:
            return self._generate_on_openpgp_card(key_type, pin, entropy, label, so_pin)
        spec = _KEY_SPECS[key_type]
        key_id = secrets.token_bytes(KEY_ID_BYTES)
        with self._session(rw=True, pin=pin) as session:
            self._seed(session, entropy)
            public_key = self._generate_stored_pair(session, spec, label, key_id)
            spki_der = spec.spki_der(public_key)
        return self._key_record(KeyMode.RESIDENT, key_type, spki_der, label, {"key_id_hex": key_id.hex()})

    def _generate_stored_pair(self, session, spec: _KeySpec, label: str, key_id: bytes):
        public_key, _ = self._generate_pair(
            session, spec, label, key_id=key_id, store=True, private_extra={Attribute.EXTRACTABLE: False}
        )
        return public_key

    def _generate_on_openpgp_card(
        self, key_type: KeyType, pin: str, entropy: bytes | None, label: str, so_pin: str | None
    ) -> KeyRecord:
        """A resident key in the card's signature slot, made as SO (the admin PIN, PW3).

        Making a key needs no password B (PW1), so it is checked first, with a
        login of its own: a typo shows at init, before the slot is taken, not
        at the first payment.
        """
        spec = _KEY_SPECS[key_type]
        self._check_generates(spec, key_type)
        admin_pin = self._openpgp_admin_pin(so_pin)
        with self._session() as session:
            self._check_signature_slot_free(session)
        self._check_pin(pin)
        key_id = OPENPGP_SIGNATURE_KEY_ID
        with self._session(rw=True, pin=admin_pin, user_type=_CKU_SO) as session:
            self._seed(session, entropy)
            self._generate_stored_pair(session, spec, label, key_id)
        spki_der = self._reload_after_generation(spec, key_id)
        return self._key_record(KeyMode.RESIDENT, key_type, spki_der, label, {"key_id_hex": key_id.hex()})

    def _check_pin(self, pin: str) -> None:
        with self._session(pin=pin):
            return  # C_Login checked it (WrongPin otherwise); leaving the session logs out

    def _reload_after_generation(self, spec: _KeySpec, key_id: bytes) -> bytes:
        """The new key's SPKI, read after OpenSC has re-read the card.

        OpenSC 0.23 keeps wrong objects in memory after generating on an
        OpenPGP card (measured: modulus and exponent zero-padded to their
        length in bits, 2048 and 24 bytes; signing with the key then fails
        with CKR_ARGUMENTS_BAD); a new process sees the card right. So does
        this one after C_Finalize + C_Initialize, which ends every session of
        this module in the process (Pkcs11Token keeps none between calls).
        """
        load_module(self._module_path).reinitialize()
        with self._session() as session:
            found = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}))
            if len(found) != 1:
                raise KeyNotFound(f"{len(found)} public keys with id {key_id.hex()} on token {self._label!r}")
            return spec.spki_der(found[0])

    def _check_generates(self, spec: _KeySpec, key_type: KeyType) -> None:
        # OpenSC 0.23 lists EDDSA for signing on an OpenPGP card but no
        # EC_EDWARDS_KEY_PAIR_GEN, and refuses it (CKR_DOMAIN_PARAMS_INVALID).
        if spec.generate_mechanism not in self._token.slot.get_mechanisms():
            raise TokenError(
                f"token {self._label!r} cannot generate {key_type.value} keys through PKCS#11 "
                f"(no {spec.generate_mechanism.name}); choose rsa2048, or `wallet init --card` for ed25519"
            )

    def _openpgp_admin_pin(self, so_pin: str | None) -> str:
        # Only the PW1 mode-81 token signs with the signature key; a key made
        # through the other one could never be used with password B.
        if not self._label.endswith(OPENPGP_SIGNING_LABEL_SUFFIX):
            raise TokenError(
                f"on an OpenPGP card choose its signing token, 'OpenPGP card (User PIN (sig))', "
                f"not {self._label!r}"
            )
        if so_pin is None:
            raise TokenError(
                f"token {self._label!r} (an OpenPGP card) generates keys only with its admin PIN "
                "(PW3) as the SO PIN: give --so-pin-file"
            )
        return so_pin

    def _check_signature_slot_free(self, session) -> None:
        # OpenSC's pkcs15init refuses to generate over an existing key
        # (SC_ERROR_NON_UNIQUE_ID, CKR_GENERAL_ERROR to us): say why instead.
        existing = session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: OPENPGP_SIGNATURE_KEY_ID}
        )
        if list(existing):
            raise TokenError(
                f"the OpenPGP card behind {self._label!r} already holds a signature key, and OpenSC does "
                "not replace it: use `wallet init --card`, which does, or reset the card"
            )

    def _key_record(
        self, mode: KeyMode, key_type: KeyType, spki_der: bytes, label: str, where: dict
    ) -> KeyRecord:
        """The record of a key made on this token; `where` finds it again (a wrapped blob or an id)."""
        return KeyRecord(
            mode=mode,
            key_type=key_type,
            algorithm=ALGORITHM_FOR_KEY_TYPE[key_type],
            spki_der=spki_der,
            handle={
                "format": HANDLE_FORMATS[mode],
                "token_serial": self._serial,
                **where,
                "key_label": label,
            },
        )

    @staticmethod
    def _generate_pair(session, spec: _KeySpec, label: str, *, key_id, store, private_extra):
        return session.generate_keypair(
            spec.p11_key_type,
            spec.key_length_bits,
            id=key_id,
            label=label,
            store=store,
            capabilities=_SIGN_ONLY,
            mechanism=spec.generate_mechanism,
            public_template={Attribute.PRIVATE: False, **spec.public_template},
            private_template={
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                **private_extra,
            },
        )

    def _seed(self, session, entropy: bytes | None) -> None:
        if not entropy:
            return
        try:
            session.seed_random(entropy)
        except (p11.RandomSeedNotSupported, p11.FunctionNotSupported):
            # The token's own RNG still makes the key; the caller's entropy
            # is an extra, not the only source. (OpenSC answers
            # CKR_FUNCTION_NOT_SUPPORTED for C_SeedRandom.)
            log.warning("token %r does not accept seed material; entropy ignored", self._label)

    # -- signing ------------------------------------------------------------

    def sign(self, key: KeyRecord, message: bytes, pin: str) -> bytes:
        spec = _KEY_SPECS[KeyType(key.key_type)]
        with LIBRARY_LOCK, self._errors():
            self._check_key_belongs_here(key)
            if key.mode is KeyMode.WRAPPED:
                return self._sign_wrapped(spec, key, message, pin)
            return self._sign_resident(spec, key, message, pin)

    def _check_key_belongs_here(self, key: KeyRecord) -> None:
        mode = KeyMode(key.mode)
        if key.handle.get("format") != HANDLE_FORMATS[mode]:
            raise KeyNotFound(f"key record is not a PKCS#11 {mode.value} key")
        needed = ("wrapped_key_b64",) if mode is KeyMode.WRAPPED else ("key_id_hex",)
        if not all(isinstance(key.handle.get(name), str) for name in needed):
            raise KeyNotFound(f"key record is damaged: it lacks {', '.join(needed)}")
        owner = key.handle.get("token_serial")
        if owner != self._serial:
            raise KeyNotFound(
                f"key belongs to token serial {owner}, not to {self._label!r} (serial {self._serial})"
            )

    def _sign_wrapped(self, spec: _KeySpec, key: KeyRecord, message: bytes, pin: str) -> bytes:
        try:
            blob = base64.b64decode(key.handle["wrapped_key_b64"], validate=True)
        except ValueError:
            raise KeyNotFound("key record is damaged: the wrapped key is not base64") from None
        with self._session(pin=pin) as session:
            wrap_key = self._wrap_key(session, _wrap_key_label_of(key))
            try:
                private_key = self._unwrap(wrap_key, spec, blob)
            except (p11.WrappedKeyInvalid, p11.EncryptedDataInvalid, p11.GeneralError) as exc:
                # A failed AES key-wrap integrity check; SoftHSM reports it
                # as GeneralError.
                raise KeyNotFound(
                    f"token {self._label!r} cannot unwrap this key blob "
                    f"({type(exc).__name__}): it was made under another wrap key "
                    "or is damaged"
                ) from None
            try:
                return spec.sign(private_key, message)
            finally:
                private_key.destroy()

    @staticmethod
    def _unwrap(wrap_key, spec: _KeySpec, blob: bytes):
        return wrap_key.unwrap_key(
            ObjectClass.PRIVATE_KEY,
            spec.p11_key_type,
            blob,
            mechanism=WRAP_MECHANISM,
            store=False,
            capabilities=MechanismFlag.SIGN,
            template={
                # python-pkcs11 would send these as False, which SoftHSM
                # refuses on a private key (AttributeTypeInvalid): leave unset.
                Attribute.ENCRYPT: pkcs11.DEFAULT,
                Attribute.WRAP: pkcs11.DEFAULT,
                Attribute.VERIFY: pkcs11.DEFAULT,
                # Exactly what the protected wrap key's unwrap template
                # demands (unwrapped keys come back non-sensitive otherwise).
                **UNWRAPPED_KEY_TEMPLATE,
            },
        )

    def _sign_resident(self, spec: _KeySpec, key: KeyRecord, message: bytes, pin: str) -> bytes:
        try:
            key_id = bytes.fromhex(key.handle["key_id_hex"])
        except ValueError:
            raise KeyNotFound("key record is damaged: the key id is not hex") from None
        with self._session(pin=pin) as session:
            found = list(
                session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
            )
            if len(found) != 1:
                raise KeyNotFound(
                    f"{len(found)} private keys with id {key_id.hex()} on token {self._label!r}; expected one"
                )
            return spec.sign(found[0], message)

    def resident_signer(self, key: KeyRecord, pin: str) -> ResidentSigner:
        """A signer that logs in once and keeps the session: for a service's own key.

        Per-call login costs ~1 ms on SoftHSM (745 signatures/s against ~9.5k/s
        raw). PKCS#11 login state belongs to the whole process, so this must be
        the only user of this token in the process (the center's case).
        """
        if KeyMode(key.mode) is not KeyMode.RESIDENT:
            raise TokenError("a long-lived signer is only for resident keys")
        with LIBRARY_LOCK, self._errors():
            self._check_key_belongs_here(key)
        return ResidentSigner(self, key, pin)

    def _wrap_key(self, session, label: str):
        found = self._find_wrap_keys(session, label)
        if len(found) != 1:
            raise KeyNotFound(
                f"token {self._label!r} has {len(found)} trusted wrap keys labelled {label!r}; expected one"
            )
        return found[0]

    # -- PIN ----------------------------------------------------------------

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        """C_SetPIN in a read/write public session (python-pkcs11 binds it)."""
        with LIBRARY_LOCK, self._errors(), self._session(rw=True) as session:
            try:
                session.set_pin(old_pin, new_pin)
            except (p11.PinLenRange, p11.PinInvalid):
                # C_SetPIN checks the old PIN first, so this is the new one.
                raise TokenError(
                    f"token {self._label!r} does not accept the new PIN (length or characters)"
                ) from None

    # -- sessions and errors ------------------------------------------------

    @contextlib.contextmanager
    def _session(self, *, rw: bool = False, pin: str | None = None, user_type: int = _CKU_USER):
        """A fresh session for one operation, logged in if a PIN is given."""
        session = self._token.open(rw=rw)
        try:
            if pin is None:
                yield session
                return
            self._login(session, user_type, pin)
            try:
                yield session
            finally:
                self._raw.logout(session.handle)
        finally:
            session.close()

    def _login(self, session, user_type: int, pin: str) -> None:
        rv = self._raw.login(session.handle, user_type, pin)
        if rv != _CKR_OK:
            who = "SO PIN" if user_type == _CKU_SO else "password B (token PIN)"
            raise self._login_error(rv, who)

    def _login_error(self, rv: int, who: str) -> TokenError:
        if rv in (_CKR_PIN_INCORRECT, _CKR_PIN_INVALID, _CKR_PIN_LEN_RANGE):
            status = self.pin_status()
            if status.locked:
                return PinLocked(self._locked_message(who))
            hint = " (the next wrong one locks it)" if status.final_try else ""
            return WrongPin(f"wrong {who} for token {self._label!r}{hint}", status)
        if rv == _CKR_PIN_LOCKED:
            return PinLocked(self._locked_message(who))
        if rv == _CKR_PIN_EXPIRED:
            return TokenError(f"the {who} of token {self._label!r} has expired; change it first")
        if rv in (_CKR_USER_ALREADY_LOGGED_IN, _CKR_USER_ANOTHER_ALREADY_LOGGED_IN):
            # Login state is per process, not per session: someone else here
            # holds a logged-in session, and we will not sign on their login.
            return TokenError(
                f"token {self._label!r} is already logged in by another session "
                "of this process; close it first"
            )
        if rv == _CKR_SESSION_READ_ONLY_EXISTS:
            return TokenError(f"SO login on token {self._label!r} refused: a read-only session is open")
        if rv == _CKR_USER_PIN_NOT_INITIALIZED:
            return TokenError(f"token {self._label!r} has no user PIN set")
        if rv in (_CKR_DEVICE_REMOVED, _CKR_TOKEN_NOT_PRESENT, _CKR_SESSION_HANDLE_INVALID):
            return TokenRemoved(f"token {self._label!r} was removed")
        return TokenError(f"login to token {self._label!r} failed (CKR 0x{rv:x})")

    def _locked_message(self, who: str) -> str:
        return f"the {who} of token {self._label!r} is locked; the security officer must reset it"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn python-pkcs11 exceptions into one-line TokenErrors."""
        try:
            yield
        except TokenError:
            raise
        except p11.PinIncorrect:
            # C_SetPIN with a wrong old PIN lands here (login goes via _login).
            raise WrongPin(
                f"wrong password B (token PIN) for token {self._label!r}",
                self.pin_status(),
            ) from None
        except p11.PinLocked:
            raise PinLocked(self._locked_message("password B (token PIN)")) from None
        except (p11.TokenNotPresent, p11.DeviceRemoved, p11.SlotIDInvalid):
            raise TokenRemoved(f"token {self._label!r} was removed") from None
        except p11.UserNotLoggedIn:
            raise TokenError(f"token {self._label!r} refused: not logged in") from None
        except p11.PKCS11Error as exc:
            raise TokenError(f"PKCS#11 error on token {self._label!r}: {type(exc).__name__}") from exc


class ResidentSigner:
    """Signs many messages with one logged-in session; reopens it once after a failure."""

    def __init__(self, token: Pkcs11Token, key: KeyRecord, pin: str):
        self._token, self._key, self._pin = token, key, pin
        self._spec = _KEY_SPECS[KeyType(key.key_type)]
        self._session = None
        self._private_key = None

    def __repr__(self) -> str:
        return f"ResidentSigner(token={self._token.label!r})"

    def sign(self, message: bytes) -> bytes:
        with LIBRARY_LOCK, self._token._errors():
            for attempt in range(2):
                try:
                    if self._private_key is None:
                        self._open()
                    return self._spec.sign(self._private_key, message)
                except p11.PKCS11Error:
                    # Session lost (token re-initialised, device hiccup): start over once.
                    self._close_quietly()
                    if attempt == 1:
                        raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with LIBRARY_LOCK:
            self._close_quietly()

    def _open(self) -> None:
        token = self._token
        session = token._token.open()
        try:
            token._login(session, _CKU_USER, self._pin)
            key_id = bytes.fromhex(self._key.handle["key_id_hex"])
            found = list(
                session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
            )
            if len(found) != 1:
                raise KeyNotFound(
                    f"{len(found)} private keys with id {key_id.hex()} on token {token.label!r}"
                )
        except BaseException:
            session.close()
            raise
        self._session, self._private_key = session, found[0]

    def _close_quietly(self) -> None:
        session, self._session, self._private_key = self._session, None, None
        if session is None:
            return
        try:
            self._token._raw.logout(session.handle)
            session.close()
        except p11.PKCS11Error:
            pass
