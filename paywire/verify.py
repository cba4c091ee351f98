"""Verifying envelopes: signature first, with the pinned algorithm, then parse.

Two entry points:
- `verify_envelope`: the signer's key is already known (enrolled or pinned);
  the algorithm comes from that record, never from the message.
- `verify_enrollment` (and `verify_key_proof`, a rotation's new key): proof
  of possession; the key travels inside the signed body, so the body is read
  before the signature is checked, but nothing read from it is trusted until
  the signature over the exact bytes verifies with that very key and the key
  id matches.
"""

from __future__ import annotations

from paywire.algorithms import key_id, load_public_key, verify_signature
from paywire.envelope import Envelope, b64url_decode
from paywire.errors import WireError
from paywire.messages import ENROLL, KEY_PROOF, Header, parse_payload


def verify_envelope(envelope: Envelope, *, spki_der: bytes, algorithm: str) -> tuple[Header, dict]:
    if envelope.alg != algorithm:
        raise WireError(
            "algorithm_mismatch", f"key is pinned to {algorithm}; the message says {envelope.alg}"
        )
    if envelope.kid != key_id(spki_der):
        raise WireError("kid_mismatch", "envelope kid is not the id of the key it is checked against")
    verify_signature(algorithm, load_public_key(spki_der, algorithm), envelope.payload, envelope.sig)
    header, body = parse_payload(envelope.payload)
    if header.kid != envelope.kid:
        raise WireError("kid_mismatch", "signed kid differs from the envelope kid")
    return header, body


def verify_enrollment(envelope: Envelope) -> tuple[Header, dict, bytes]:
    """Return header, body and the SPKI DER of the key that signed it."""
    return _verify_self_signed(envelope, ENROLL)


def verify_key_proof(envelope: Envelope) -> tuple[Header, dict, bytes]:
    """A rotation's new key, proving possession the same way an enrollment does."""
    return _verify_self_signed(envelope, KEY_PROOF)


def _verify_self_signed(envelope: Envelope, expected_type: str) -> tuple[Header, dict, bytes]:
    header, body = parse_payload(envelope.payload)
    if header.type != expected_type:
        raise WireError("wrong_message_type", f"expected a {expected_type!r} message, got {header.type!r}")
    spki_der = b64url_decode(body["public_key"], "public_key", 2048)
    algorithm = body["alg"]
    if envelope.alg != algorithm:
        raise WireError("algorithm_mismatch", "envelope alg differs from the algorithm being enrolled")
    key = load_public_key(spki_der, algorithm)  # refuses a key the algorithm cannot use
    if header.kid != key_id(spki_der) or envelope.kid != header.kid:
        raise WireError("kid_mismatch", "kid is not the SHA-256 of the enclosed public key")
    verify_signature(algorithm, key, envelope.payload, envelope.sig)
    return header, body, spki_der
