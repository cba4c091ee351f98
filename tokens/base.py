"""The one interface every kind of token offers the wallet and the center.

A token holds (or can unwrap) a signing key and guards its use with a PIN,
which the product calls password B. Backends: PKCS#11 (`pkcs11_token.py`) and
OpenPGP smartcards over PC/SC (later). Callers never see backend objects:
they get plain data (`KeyRecord`, `TokenInfo`, `PinStatus`) that can be kept
in the vault as JSON.
"""

from __future__ import annotations

import abc
import base64
import enum
from dataclasses import dataclass, field


# str + Enum, not StrEnum: str(KeyType.P256) stays "KeyType.P256" wherever it is formatted today.
class KeyType(str, enum.Enum):  # noqa: UP042
    P256 = "p256"
    ED25519 = "ed25519"
    RSA2048 = "rsa2048"


class KeyMode(str, enum.Enum):  # noqa: UP042  (as KeyType)
    # Generated on the token, wrapped there under a token-resident trusted
    # AES key; the blob lives in the password-A vault (DESIGN.md).
    WRAPPED = "wrapped"
    # Generated on the token and never leaves it.
    RESIDENT = "resident"


# How well a key is kept (`wallet status` shows it). PROTECTED: it never
# leaves the token in the clear (resident, card, or wrapped under a wrap key
# with an unwrap template). LEGACY_WRAP: wrapped under a token's pre-template
# wrap key, so vault + password A + password B can unwrap a readable copy.
PROTECTION_PROTECTED = "protected"
PROTECTION_LEGACY_WRAP = "extractable_legacy_wrap"

# Wire algorithm each key type signs with (see paywire.algorithms).
ALGORITHM_FOR_KEY_TYPE = {
    KeyType.P256: "ES256",
    KeyType.ED25519: "Ed25519",
    KeyType.RSA2048: "RS256",
}


@dataclass(frozen=True)
class TokenInfo:
    kind: str  # "pkcs11" or "openpgp-card"
    label: str
    serial: str
    manufacturer: str
    model: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PinStatus:
    # None where the token does not tell a count (PKCS#11 only has flags).
    tries_left: int | None
    locked: bool
    count_low: bool = False
    final_try: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class KeyRecord:
    """What the vault keeps about a key: enough to find or unwrap it again.

    `handle` is backend-specific and JSON-serialisable (str values only).
    For a wrapped key it holds the wrapped blob; never private key material
    in the clear.
    """

    mode: KeyMode
    key_type: KeyType
    algorithm: str
    spki_der: bytes
    handle: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "mode": self.mode.value,
            "key_type": self.key_type.value,
            "algorithm": self.algorithm,
            "spki_der": base64.b64encode(self.spki_der).decode(),
            "handle": dict(self.handle),
        }

    @classmethod
    def from_json(cls, document: dict) -> KeyRecord:
        return cls(
            mode=KeyMode(document["mode"]),
            key_type=KeyType(document["key_type"]),
            algorithm=document["algorithm"],
            spki_der=base64.b64decode(document["spki_der"]),
            handle=dict(document["handle"]),
        )


class TokenError(Exception):
    """Base class: the message is one line a user can act on."""


class TokenNotFound(TokenError):
    pass


class KeyNotFound(TokenError):
    pass


class WrongPin(TokenError):
    def __init__(self, message: str, status: PinStatus | None = None):
        super().__init__(message)
        self.status = status


class PinLocked(TokenError):
    pass


class TokenRemoved(TokenError):
    pass


class Token(abc.ABC):
    """A connected token. Implementations serialise their own calls."""

    @abc.abstractmethod
    def info(self) -> TokenInfo: ...

    @abc.abstractmethod
    def pin_status(self) -> PinStatus: ...

    @abc.abstractmethod
    def generate_key(
        self,
        key_type: KeyType,
        pin: str,
        *,
        so_pin: str | None = None,
        entropy: bytes | None = None,
        label: str = "tokenpay-signing",
    ) -> KeyRecord:
        """Generate a signing key on the token; `so_pin` only where the mode needs it."""

    @abc.abstractmethod
    def sign(self, key: KeyRecord, message: bytes, pin: str) -> bytes:
        """Sign `message` (not a digest) and return the signature in wire form.

        ECDSA: DER, low-S. Ed25519: 64 raw bytes. RSA: the PKCS#1 v1.5 block.
        Raises WrongPin (with tries left where known) or PinLocked.
        """

    @abc.abstractmethod
    def change_pin(self, old_pin: str, new_pin: str) -> None: ...

    def close(self) -> None:  # noqa: B027  (optional: most tokens hold nothing open)
        pass
