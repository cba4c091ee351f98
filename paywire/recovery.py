"""Recovery codes: how the holder of an account proves it after losing the card (issue 11.4).

A recovery code is 125 random bits written as 25 Crockford base32 characters
in five groups (``7K3QF-ZX9M2-...``): typable, and forgiving of case, spaces
and the usual look-alikes (O/0, I/L/1). The code is turned into an Ed25519
key pair (seed = SHA-256 of a domain tag and the code); the center stores only
the public key (the "recovery key") and a claim proves the code by signing
exactly which center, account and new key it is for. So:

- nothing the center stores, logs, audits or answers reveals the code (a public
  key and signatures bound to one new key each: a copy of a claim proves
  nothing for any other key);
- finding the code from the public key is a search of 2^125: no slow hash or
  center secret is needed for a random code of this size (they matter for
  guessable passwords only);
- the same rule serves the member's own code (made by the wallet at
  enrollment, shown once, never stored) and an operator's one-time ticket for
  an account enrolled before codes existed.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
CODE_CHARS = 25  # 125 bits
GROUP_CHARS = 5
RECOVERY_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")  # the raw Ed25519 public key, hex
RECOVERY_PROOF_PATTERN = re.compile(r"[0-9a-f]{128}")  # the raw Ed25519 signature, hex
_SEED_TAG = b"tokenpay-recovery-code-v1\x00"
_CLAIM_TAG = b"tokenpay-recovery-claim-v1\x00"
_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
MAX_INPUT_CHARS = 64


class RecoveryCodeError(ValueError):
    """Text that is not a recovery code (the message says what is wrong, never the text itself)."""


def new_code() -> str:
    """A fresh code, grouped for reading aloud and typing."""
    return group("".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS)))


def group(canonical: str) -> str:
    return "-".join(canonical[i : i + GROUP_CHARS] for i in range(0, len(canonical), GROUP_CHARS))


def normalise(text: str) -> str:
    """The 25 canonical characters of a code as typed (any case, dashes or spaces between groups)."""
    if len(text) > MAX_INPUT_CHARS:
        raise RecoveryCodeError(f"a recovery code has {CODE_CHARS} characters; this text is far longer")
    canonical = "".join(ch for ch in text.upper() if ch not in "- ").translate(_LOOK_ALIKES)
    if len(canonical) != CODE_CHARS:
        raise RecoveryCodeError(
            f"a recovery code has {CODE_CHARS} letters and digits (5 groups of 5); "
            f"this one has {len(canonical)}"
        )
    if any(ch not in ALPHABET for ch in canonical):
        raise RecoveryCodeError(
            "a recovery code holds only digits and the letters A-Z without U; check for a typo"
        )
    return canonical


def recovery_key(code: str) -> str:
    """The public key the center keeps for this code (hex)."""
    return _private_key(code).public_key().public_bytes_raw().hex()


def claim_message(center_id: str, party_id: str, new_kid: str) -> bytes:
    return _CLAIM_TAG + "\x00".join((center_id, party_id, new_kid)).encode()


def prove(code: str, *, center_id: str, party_id: str, new_kid: str) -> str:
    """The proof a rebind enrollment carries: the code's signature over this claim (hex)."""
    return _private_key(code).sign(claim_message(center_id, party_id, new_kid)).hex()


def verify(recovery_key_hex: str, proof_hex: str, *, center_id: str, party_id: str, new_kid: str) -> bool:
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(recovery_key_hex))
        public.verify(bytes.fromhex(proof_hex), claim_message(center_id, party_id, new_kid))
    except (InvalidSignature, ValueError):
        return False
    return True


def _private_key(code: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(_SEED_TAG + normalise(code).encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)
