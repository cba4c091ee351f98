"""Signature algorithms the center accepts, and their strict verification.

The algorithm always comes from the enrolled key record, never from a message:
`verify_signature` takes the pinned algorithm and the stored key. Accepted:

- ES256: ECDSA P-256 / SHA-256, DER signature. BER and non-minimal DER are
  refused (a re-encoding must give the same bytes); high-S is accepted as
  Wycheproof says it is valid, but our signers always produce low-S.
- Ed25519.
- RS256: RSA PKCS#1 v1.5 / SHA-256, keys of 2048 to 8192 bits.
- PS256: RSA-PSS / SHA-256, MGF1-SHA-256, salt length 32.

RSA keys must have the public exponent 65537: a verification costs time in
proportion to the exponent's bits, and an enrolled key with a 3,070-bit
exponent cost 7 ms per (bad) signature, a hundred times an ES256 check. With
e = 65537 the dearest accepted key (RSA-8192) costs ~0.2 ms. Every signer we
support (PKCS#11 tokens, OpenPGP cards, `cryptography`) uses 65537.
"""

from __future__ import annotations

import functools
import hashlib

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from paywire.errors import WireError

ES256 = "ES256"
ED25519 = "Ed25519"
RS256 = "RS256"
PS256 = "PS256"
ALGORITHMS = (ES256, ED25519, RS256, PS256)

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
PSS_SALT_BYTES = 32
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 8192
RSA_EXPONENT = 65537
MAX_SPKI_BYTES = 2048
MAX_SIGNATURE_BYTES = RSA_MAX_BITS // 8

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def key_id(spki_der: bytes) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex."""
    return hashlib.sha256(spki_der).hexdigest()


# Parsing and re-encoding an SPKI costs ~15 us; a center verifies the same keys again and again.
# Keys are immutable and refusals are raised, never cached.
@functools.lru_cache(maxsize=4096)
def load_public_key(spki_der: bytes, algorithm: str) -> PublicKey:
    """Load an SPKI and insist it is a key the named algorithm may use."""
    if algorithm not in ALGORITHMS:
        raise WireError(
            "unsupported_algorithm", f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}"
        )
    if len(spki_der) > MAX_SPKI_BYTES:
        raise WireError("bad_public_key", "public key is too large")
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, UnsupportedAlgorithm):
        raise WireError("bad_public_key", "public key is not a valid DER SubjectPublicKeyInfo") from None
    if (
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        != spki_der
    ):
        raise WireError("bad_public_key", "public key is not in canonical DER form")
    _check_key_fits(key, algorithm)
    return key


def algorithm_for_key(key: PublicKey) -> str:
    """The default algorithm for a key (RSA keys default to PKCS#1 v1.5)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ES256
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(key, rsa.RSAPublicKey):
        return RS256
    raise WireError("unsupported_algorithm", f"keys of type {type(key).__name__} are not accepted")


def verify_signature(algorithm: str, key: PublicKey, message: bytes, signature: bytes) -> None:
    """Raise WireError('bad_signature') unless `signature` is valid for `message`."""
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise WireError("bad_signature", "signature is too large")
    _check_key_fits(key, algorithm)
    try:
        _VERIFIERS[algorithm](key, message, signature)
    except InvalidSignature:
        raise WireError("bad_signature", "signature does not verify") from None


def ecdsa_der_low_s(r: int, s: int) -> bytes:
    """DER-encode an ECDSA P-256 signature with s normalised to the low half."""
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def ecdsa_raw_to_der_low_s(raw: bytes) -> bytes:
    """PKCS#11 tokens return r||s; the wire carries DER with low S."""
    if len(raw) != 64:
        raise ValueError(f"expected 64 bytes of r||s, got {len(raw)}")
    return ecdsa_der_low_s(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _check_key_fits(key: PublicKey, algorithm: str) -> None:
    if algorithm == ES256:
        fits = isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    elif algorithm == ED25519:
        fits = isinstance(key, ed25519.Ed25519PublicKey)
    elif algorithm in (RS256, PS256):
        fits = isinstance(key, rsa.RSAPublicKey) and RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS
    else:
        raise WireError("unsupported_algorithm", f"algorithm {algorithm!r} is not accepted")
    if not fits:
        raise WireError("algorithm_mismatch", f"the key cannot be used with {algorithm}")
    if isinstance(key, rsa.RSAPublicKey):
        check_rsa_exponent(key)


def check_rsa_exponent(key: rsa.RSAPublicKey) -> None:
    """Refuse an RSA key whose public exponent is not 65537 (its verifications would cost more)."""
    exponent = key.public_numbers().e
    if exponent != RSA_EXPONENT:
        shown = str(exponent) if exponent.bit_length() <= 64 else f"of {exponent.bit_length()} bits"
        raise WireError(
            "key_not_allowed", f"RSA public exponent {shown} is not allowed; only {RSA_EXPONENT} is"
        )


def _verify_es256(key, message: bytes, signature: bytes) -> None:
    # Strict DER: the parser must accept it AND re-encoding must give the same
    # bytes, so BER, long-form lengths and padded integers are all refused.
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        raise InvalidSignature() from None
    if encode_dss_signature(r, s) != signature or not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise InvalidSignature()
    key.verify(signature, message, ec.ECDSA(hashes.SHA256()))


def _verify_ed25519(key, message: bytes, signature: bytes) -> None:
    if len(signature) != 64:
        raise InvalidSignature()
    key.verify(signature, message)


def _verify_rs256(key, message: bytes, signature: bytes) -> None:
    if len(signature) != (key.key_size + 7) // 8:
        raise InvalidSignature()
    key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def _verify_ps256(key, message: bytes, signature: bytes) -> None:
    if len(signature) != (key.key_size + 7) // 8:
        raise InvalidSignature()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_BYTES)
    key.verify(signature, message, pss, hashes.SHA256())


_VERIFIERS = {ES256: _verify_es256, ED25519: _verify_ed25519, RS256: _verify_rs256, PS256: _verify_ps256}
