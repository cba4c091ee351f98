"""The signed envelope: exact payload bytes, algorithm, key id, signature.

On the wire it is a JSON object with exactly four members:
    {"payload": b64url, "alg": "ES256", "kid": "<64 hex>", "sig": b64url}
Base64url without padding, canonical (re-encoding gives the same text). The
signature covers the payload bytes only; `alg` and `kid` are routing hints
that the verifier checks against the enrolled key and the signed header.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from paywire.algorithms import ALGORITHMS, MAX_SIGNATURE_BYTES
from paywire.canonical import MAX_PAYLOAD_BYTES, canonical_bytes
from paywire.errors import WireError

KID_PATTERN = re.compile(r"[0-9a-f]{64}")
ENVELOPE_FIELDS = frozenset({"payload", "alg", "kid", "sig"})


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    alg: str
    kid: str
    sig: bytes

    def to_json(self) -> dict:
        return {
            "payload": b64url_encode(self.payload),
            "alg": self.alg,
            "kid": self.kid,
            "sig": b64url_encode(self.sig),
        }

    @classmethod
    def from_json(cls, document: object) -> Envelope:
        if not isinstance(document, dict) or set(document) != ENVELOPE_FIELDS:
            raise WireError(
                "malformed_envelope", f"envelope must be an object with exactly {sorted(ENVELOPE_FIELDS)}"
            )
        alg, kid = document["alg"], document["kid"]
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise WireError("unsupported_algorithm", f"alg must be one of {', '.join(ALGORITHMS)}")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise WireError(
                "malformed_envelope", "kid must be 64 lower-case hex digits (SHA-256 of the SPKI)"
            )
        payload = b64url_decode(document["payload"], "payload", MAX_PAYLOAD_BYTES)
        sig = b64url_decode(document["sig"], "sig", MAX_SIGNATURE_BYTES)
        return cls(payload=payload, alg=alg, kid=kid, sig=sig)


def seal(payload: dict, *, alg: str, kid: str, sign: Callable[[bytes], bytes]) -> Envelope:
    """Canonicalise `payload`, have `sign` sign those exact bytes, wrap it up."""
    data = canonical_bytes(payload)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise WireError(
            "payload_too_large", f"payload is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}"
        )
    return Envelope(payload=data, alg=alg, kid=kid, sig=sign(data))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object, field: str, max_bytes: int) -> bytes:
    if not isinstance(text, str) or len(text) > (max_bytes * 4) // 3 + 4:
        raise WireError(
            "malformed_envelope", f"{field} must be a base64url string of at most {max_bytes} bytes"
        )
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise WireError("malformed_envelope", f"{field} is not valid base64url") from None
    # One spelling per value: no padding, no non-zero trailing bits.
    if b64url_encode(data) != text:
        raise WireError(
            "malformed_envelope", f"{field} is not canonical base64url (no padding, no stray bits)"
        )
    return data
