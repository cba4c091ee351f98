"""The one password sealing recipe: Argon2id turns a password into an AES-256-GCM key.

Both the wallet's vault (token_wallet.vault) and the center's encrypted backups
(center.ops.backup_crypto) seal with it, so their files share one header and one
set of limits; each adds its own magic and body layout around it::

    magic (8 bytes) | header length (4 bytes, big-endian) | header | sealed body

The header is ASCII JSON with sorted keys and no spaces (exactly one encoding)::

    {"check": b64, "generation": int,
     "kdf": {"alg": "argon2id", "m_kib": int, "p": int, "salt": b64, "t": int},
     "nonce": b64, "v": 1}

Argon2id turns the password and the salt into 64 bytes: the first 32 are the
AES-256-GCM key, the last 32 a subkey whose HMAC over a fixed label is stored
as ``check``. A check mismatch means "wrong password"; a matching check with a
failing GCM tag means the file was damaged or tampered with. The associated
data of every AES-GCM call is the magic, the length and the header bytes
(`associated_data`), so no header byte can change unnoticed.

Every value read from a file is bounded before any work is done: KDF
parameters outside the limits are refused before Argon2id runs, so a planted
file cannot make a program spend memory or time.

Errors: `SealingError` (one line); `HeaderCorrupt` for a damaged or foreign
header. Messages name the header, not the file kind: each caller says which
file it was ("vault ...", "the encryption header is damaged: ...").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import struct
import unicodedata
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from hostkit import timing

# --- format constants ------------------------------------------------------------------------

FORMAT_VERSION = 1
KDF_ALG = "argon2id"
CHECK_LABEL = b"tokenpay-vault-check"  # the vault's name for it; kept, since files carry its HMAC

MAGIC_SIZE = 8
LENGTH_SIZE = 4
PREFIX_SIZE = MAGIC_SIZE + LENGTH_SIZE
SALT_SIZE = 16
NONCE_SIZE = 12
CHECK_SIZE = 16
TAG_SIZE = 16
AES_KEY_SIZE = 32
CHECK_KEY_SIZE = 32

HEADER_KEYS = frozenset({"check", "generation", "kdf", "nonce", "v"})
KDF_KEYS = frozenset({"alg", "m_kib", "p", "salt", "t"})

# --- limits (every input from disk or caller is bounded) -------------------------------------

HEADER_MAX_BYTES = 4096
MEMORY_KIB_MIN = 19456
MEMORY_KIB_MAX = 1024 * 1024
ITERATIONS_MIN = 2
ITERATIONS_MAX = 16
LANES_MIN = 1
LANES_MAX = 16
# Random 96-bit nonces under one key are safe for 2**32 encryptions (NIST SP
# 800-38D); a generation count below that keeps every key far under the bound.
GENERATION_MAX = 2**32 - 1
# Long enough for any passphrase, short enough that hashing it costs nothing.
PASSWORD_MAX_BYTES = 1024

FAST_KDF_ENV = "TOKENPAY_FAST_KDF"


@dataclass(frozen=True)
class KdfParams:
    memory_kib: int
    iterations: int
    lanes: int


# ~250-350 ms on the 2-core machines here: slow enough to hurt guessing.
DEFAULT_KDF = KdfParams(memory_kib=131072, iterations=3, lanes=4)
# OWASP's Argon2id floor; files asking for less are refused as corrupt.
MINIMUM_KDF = KdfParams(memory_kib=MEMORY_KIB_MIN, iterations=ITERATIONS_MIN, lanes=LANES_MIN)


def kdf_params_from_env() -> KdfParams:
    """DEFAULT_KDF, or MINIMUM_KDF when TOKENPAY_FAST_KDF=1 (tests save time)."""
    return MINIMUM_KDF if os.environ.get(FAST_KDF_ENV) == "1" else DEFAULT_KDF


# --- errors ----------------------------------------------------------------------------------


class SealingError(Exception):
    """str(e) is one line: what is wrong."""


class HeaderCorrupt(SealingError):
    """The header is damaged, in a foreign format or out of limits."""


class PasswordTooLong(SealingError):
    pass


# --- small helpers ---------------------------------------------------------------------------


def is_int(value: object) -> bool:
    # bool is an int subclass; true/false in a header is never a number.
    return isinstance(value, int) and not isinstance(value, bool)


def show(value: object) -> str:
    """A short repr of a value read from disk, for error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def reject_constant(name: str) -> object:
    """json.loads hook: NaN and infinities are not numbers of ours."""
    raise ValueError("non-finite number")


def canonical_json(value: object, *, ascii_only: bool) -> bytes:
    """Sorted keys, no spaces, no NaN: one encoding per value."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only, allow_nan=False)
    return text.encode("utf-8")


def b64_text(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64_field(text: object, size: int, name: str) -> bytes:
    if not isinstance(text, str):
        raise HeaderCorrupt(f"header field {name} is not text: the file is damaged")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise HeaderCorrupt(f"header field {name} is not base64: the file is damaged") from None
    # Exactly one encoding per value, so the header has no malleable bytes.
    if len(raw) != size or b64_text(raw) != text:
        raise HeaderCorrupt(f"header field {name} must be {size} bytes: the file is damaged or unsupported")
    return raw


def password_bytes(password: str) -> bytes:
    """NFC UTF-8, so the same password typed on different systems gives the same bytes.

    TypeError for a non-str; PasswordTooLong over PASSWORD_MAX_BYTES."""
    if not isinstance(password, str):
        raise TypeError("a password must be text")
    raw = unicodedata.normalize("NFC", password).encode("utf-8", "strict")
    if len(raw) > PASSWORD_MAX_BYTES:
        raise PasswordTooLong(f"the password is longer than {PASSWORD_MAX_BYTES} bytes")
    return raw


def kdf_problem(kdf: KdfParams) -> str | None:
    """Why these KDF parameters are out of limits, or None when they are fine."""
    bounds = (
        ("memory_kib", kdf.memory_kib, MEMORY_KIB_MIN, MEMORY_KIB_MAX),
        ("iterations", kdf.iterations, ITERATIONS_MIN, ITERATIONS_MAX),
        ("lanes", kdf.lanes, LANES_MIN, LANES_MAX),
    )
    for name, value, low, high in bounds:
        if not is_int(value) or not low <= value <= high:
            return f"KDF {name}={show(value)} is outside [{low}, {high}]"
    return None


# --- keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealingKeys:
    """Derived secrets, kept in memory so a re-seal does not re-run Argon2id."""

    kdf: KdfParams
    salt: bytes = field(repr=False)
    aes_key: bytes = field(repr=False)
    check: bytes = field(repr=False)

    def aead(self) -> AESGCM:
        return AESGCM(self.aes_key)

    def matches(self, header: SealHeader) -> bool:
        """Whether the password that made these keys is the one the header was sealed with."""
        return hmac.compare_digest(self.check, header.check)

    def new_header(self, generation: int) -> SealHeader:
        """A header for one sealing under these keys, with a fresh random nonce."""
        return SealHeader(
            kdf=self.kdf,
            salt=self.salt,
            nonce=secrets.token_bytes(NONCE_SIZE),
            generation=generation,
            check=self.check,
        )


def derive_keys(password: bytes, kdf: KdfParams, salt: bytes) -> SealingKeys:
    """Argon2id (password, salt) -> AES key and check value. KDF parameters must be within limits."""
    assert kdf_problem(kdf) is None, "KDF parameters are validated before deriving"
    assert len(salt) == SALT_SIZE
    with timing.span("kdf"):
        okm = Argon2id(
            salt=salt,
            length=AES_KEY_SIZE + CHECK_KEY_SIZE,
            iterations=kdf.iterations,
            lanes=kdf.lanes,
            memory_cost=kdf.memory_kib,
        ).derive(password)
    aes_key, check_key = okm[:AES_KEY_SIZE], okm[AES_KEY_SIZE:]
    check = hmac.new(check_key, CHECK_LABEL, hashlib.sha256).digest()[:CHECK_SIZE]
    return SealingKeys(kdf=kdf, salt=salt, aes_key=aes_key, check=check)


def derive_new_keys(password: bytes, kdf: KdfParams) -> SealingKeys:
    """Keys under a fresh random salt, for a new file or a new password."""
    return derive_keys(password, kdf, secrets.token_bytes(SALT_SIZE))


# --- header ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealHeader:
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    generation: int
    check: bytes

    def to_json(self) -> dict:
        return {
            "check": b64_text(self.check),
            "generation": self.generation,
            "kdf": kdf_section(self.kdf, self.salt),
            "nonce": b64_text(self.nonce),
            "v": FORMAT_VERSION,
        }

    def encode(self) -> bytes:
        raw = canonical_json(self.to_json(), ascii_only=True)
        assert 1 <= len(raw) <= HEADER_MAX_BYTES
        return raw


def associated_data(magic: bytes, header_raw: bytes) -> bytes:
    """magic | length | header: what every AES-GCM call of the file authenticates."""
    assert len(magic) == MAGIC_SIZE
    return magic + struct.pack(">I", len(header_raw)) + header_raw


def header_length(prefix: bytes) -> int:
    """The header length stored in a file's PREFIX_SIZE-byte prefix (not yet checked)."""
    assert len(prefix) == PREFIX_SIZE
    (length,) = struct.unpack(">I", prefix[MAGIC_SIZE:])
    return length


def parse_canonical_json(raw: bytes) -> dict:
    try:
        obj = json.loads(raw.decode("ascii"), parse_constant=reject_constant, parse_float=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HeaderCorrupt("header is not valid JSON: the file is damaged") from None
    if not isinstance(obj, dict):
        raise HeaderCorrupt("header is not a JSON object: the file is damaged")
    # Canonical form only: rules out duplicate keys, spaces and other variants.
    if canonical_json(obj, ascii_only=True) != raw:
        raise HeaderCorrupt("header is not in canonical form: the file is damaged")
    return obj


def _check_version(obj: dict) -> None:
    version = obj.get("v")
    if version != FORMAT_VERSION or not is_int(version):
        raise HeaderCorrupt(
            f"format version {show(version)} is not supported (expected {FORMAT_VERSION}): "
            "use a release that wrote this file"
        )


def kdf_section(kdf: KdfParams, salt: bytes) -> dict:
    """The header's "kdf" object: what `parse_kdf_section` reads back."""
    return {
        "alg": KDF_ALG,
        "m_kib": kdf.memory_kib,
        "p": kdf.lanes,
        "salt": b64_text(salt),
        "t": kdf.iterations,
    }


def parse_kdf_section(obj: object) -> tuple[KdfParams, bytes]:
    if not isinstance(obj, dict) or set(obj) != KDF_KEYS:
        raise HeaderCorrupt("header kdf section has unexpected fields: the file is damaged")
    if obj["alg"] != KDF_ALG:
        raise HeaderCorrupt(f"KDF {show(obj['alg'])} is not supported (expected {KDF_ALG})")
    kdf = KdfParams(memory_kib=obj["m_kib"], iterations=obj["t"], lanes=obj["p"])
    problem = kdf_problem(kdf)
    if problem is not None:
        raise HeaderCorrupt(f"refused: {problem}; the file is damaged or was not written by this program")
    return kdf, b64_field(obj["salt"], SALT_SIZE, "kdf.salt")


def parse_header(raw: bytes) -> SealHeader:
    """The header bytes of a sealed file, checked field by field; HeaderCorrupt otherwise."""
    obj = parse_canonical_json(raw)
    _check_version(obj)
    if set(obj) != HEADER_KEYS:
        raise HeaderCorrupt("header has unexpected fields: the file is damaged")
    generation = obj["generation"]
    if not is_int(generation) or not 1 <= generation <= GENERATION_MAX:
        raise HeaderCorrupt(f"generation {show(generation)} is out of range: the file is damaged")
    kdf, salt = parse_kdf_section(obj["kdf"])
    return SealHeader(
        kdf=kdf,
        salt=salt,
        nonce=b64_field(obj["nonce"], NONCE_SIZE, "nonce"),
        generation=generation,
        check=b64_field(obj["check"], CHECK_SIZE, "check"),
    )
