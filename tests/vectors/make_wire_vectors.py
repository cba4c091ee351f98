"""Generate tests/vectors/wire_vectors.json: pinned envelopes for paywire.

Run once from the repository root; the output is committed as data and the
tests read only the JSON:

    python tests/vectors/make_wire_vectors.py            # (re)write the JSON
    python tests/vectors/make_wire_vectors.py --check    # regenerate, compare

The output is byte-for-byte reproducible, so no private key is stored anywhere:
every test key is derived from a fixed label (P-256 scalar and Ed25519 seed by
SHA-256, RSA primes by a deterministic search), ECDSA signs with RFC 6979
nonces, and RSA-PSS uses a fixed salt (EMSA-PSS encoded here, signed with the
raw RSA private operation, then checked with `cryptography`).

The expected error `code` of every invalid vector is written by hand from the
design (DESIGN.md "Wire format" and the paywire docstrings); this script never
asks paywire's verifier what it thinks. Each vector carries exactly one defect:
the script checks independently (with `cryptography`) that every "signed
properly" vector really has a good signature over its bytes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's paywire, uninstalled too

from paywire.canonical import canonical_bytes
from paywire.messages import build_payload

OUTPUT = Path(__file__).resolve().parent / "wire_vectors.json"

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
LIFETIME = 7 * 24 * 3600
CENTER_ID = "center-test.example"


# --------------------------------------------------------------------------
# Deterministic test keys


def _stream(label: str):
    counter = 0
    while True:
        yield from hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1


def _take(stream, n: int) -> bytes:
    return bytes(next(stream) for _ in range(n))


_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p**0.5) + 1))]


def _probably_prime(n: int) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for a in _SMALL_PRIMES[:40]:  # 40 fixed bases: plenty for test keys
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(stream, bits: int, e: int) -> int:
    while True:
        candidate = int.from_bytes(_take(stream, bits // 8), "big") | (3 << (bits - 2)) | 1
        if math.gcd(candidate - 1, e) == 1 and _probably_prime(candidate):
            return candidate


def rsa_key(label: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    e = 65537
    stream = _stream(label)
    p = _prime(stream, bits // 2, e)
    q = _prime(stream, bits // 2, e)
    assert p != q
    n = p * q
    assert n.bit_length() == bits
    d = pow(e, -1, math.lcm(p - 1, q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=d % (p - 1),
        dmq1=d % (q - 1),
        iqmp=pow(q, -1, p),
        public_numbers=rsa.RSAPublicNumbers(e, n),
    )
    return numbers.private_key()


def p256_key(label: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big") % (P256_N - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def ed25519_key(label: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def spki(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def kid_of(private_key) -> str:
    return hashlib.sha256(spki(private_key)).hexdigest()


# --------------------------------------------------------------------------
# Signing (deterministic) and independent checking

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def _pss_sign(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """RFC 8017 EMSA-PSS-ENCODE + RSASP1 with a salt fixed per message."""
    numbers = key.private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    mod_bits = n.bit_length()
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    m_hash = hashlib.sha256(message).digest()
    salt = hashlib.sha256(b"paywire test PSS salt/" + message).digest()  # 32 bytes
    h = hashlib.sha256(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - len(salt) - len(h) - 2) + b"\x01" + salt
    masked = bytes(a ^ b for a, b in zip(db, _mgf1_sha256(h, em_len - len(h) - 1), strict=True))
    masked = bytes([masked[0] & (0xFF >> (8 * em_len - em_bits))]) + masked[1:]
    em = masked + h + b"\xbc"
    return pow(int.from_bytes(em, "big"), d, n).to_bytes((mod_bits + 7) // 8, "big")


def sign(alg: str, key, message: bytes) -> bytes:
    if alg == "ES256":
        # RFC 6979 nonce; S normalised to the low half as the wallet's signers do.
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
        return encode_dss_signature(r, min(s, P256_N - s))
    if alg == "Ed25519":
        return key.sign(message)
    if alg == "RS256":
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    if alg == "PS256":
        return _pss_sign(key, message)
    raise ValueError(alg)


def good_signature(alg: str, key, message: bytes, signature: bytes) -> bool:
    """Independent of paywire: does `cryptography` accept this signature?"""
    public = key.public_key()
    try:
        if alg == "ES256":
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif alg == "Ed25519":
            public.verify(signature, message)
        elif alg == "RS256":
            public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            public.verify(signature, message, PSS, hashes.SHA256())
        else:
            return False
    except Exception:
        return False
    return True


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_padded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


# --------------------------------------------------------------------------
# DER variants of one ECDSA signature (same r, s; only the encoding differs)


def _der_len(n: int) -> bytes:
    assert n < 128
    return bytes([n])


def _der_int(value: int, pad: int = 0) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8, "big")  # minimal, sign bit clear
    body = b"\x00" * pad + body
    return b"\x02" + _der_len(len(body)) + body


def ecdsa_encodings(der: bytes) -> dict[str, bytes]:
    r, s = decode_dss_signature(der)
    ints = _der_int(r) + _der_int(s)
    assert b"\x30" + _der_len(len(ints)) + ints == der == encode_dss_signature(r, s)
    padded = _der_int(r, pad=1) + _der_int(s)
    return {
        # BER: indefinite-length SEQUENCE terminated by end-of-contents.
        "ber-indefinite-length": b"\x30\x80" + ints + b"\x00\x00",
        # Non-minimal INTEGER: r with an extra leading 0x00.
        "padded-integer": b"\x30" + _der_len(len(padded)) + padded,
        # Long-form length for a length below 128.
        "long-form-length": b"\x30\x81" + bytes([len(ints)]) + ints,
        # Long-form length inside the INTEGER r.
        "long-form-integer-length": b"\x30"
        + _der_len(len(ints) + 1)
        + b"\x02\x81"
        + _der_int(r)[1:]
        + _der_int(s),
    }


def high_s(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return encode_dss_signature(r, P256_N - s)


# --------------------------------------------------------------------------
# Payloads


def enroll_body(key, alg: str) -> dict:
    return {
        "role": "member",
        "public_key": b64url(spki(key)),
        "alg": alg,
        "name": "Hanako Yamada 山田花子",
        "address": "1-2-3 Chiyoda, Tōkyō; Hauptstraße 5",
        "birth_date": "1990-02-28",
    }


def receipt_body(kid: str) -> dict:
    return {
        "for_kid": kid,
        "for_msg_id": "req-0123456789abcdef",
        "for_type": "enroll",
        "request_sha256": hashlib.sha256(b"the request the receipt is for").hexdigest(),
        "result": {"balance": 0, "currency": "JPY", "status": "enrolled"},
    }


def msg_id(tag: str) -> str:
    return "m" + hashlib.sha256(tag.encode()).hexdigest()[:31]


class Builder:
    def __init__(self, keys: dict):
        self.keys = keys  # name -> (alg, private key)
        self.vectors: list[dict] = []

    def add(
        self,
        vid: str,
        key_name: str,
        mode: str,
        envelope: dict,
        *,
        result: str,
        now: int = NOW + 60,
        pinned_alg: str | None = None,
        code: str | None = None,
        stage: str | None = None,
        payload: dict | None = None,
        comment: str = "",
    ) -> None:
        vector = {"id": vid, "comment": comment, "key": key_name, "mode": mode}
        if mode == "envelope":
            vector["pinned_alg"] = pinned_alg or self.keys[key_name][0]
        vector["now"] = now
        vector["envelope"] = envelope
        vector["result"] = result
        if result == "valid":
            assert code is None and payload is not None
            vector["payload"] = payload
            header = {f: payload[f] for f in ("type", "aud", "kid", "msg_id", "ctr", "iat", "exp")}
            vector["header"] = header
            vector["body"] = payload["body"]
        else:
            assert code and stage in ("decode", "verify", "freshness")
            vector["code"] = code
            vector["stage"] = stage
        assert vid not in {v["id"] for v in self.vectors}, vid
        self.vectors.append(vector)


def envelope_json(payload_bytes: bytes, alg: str, kid: str, sig: bytes) -> dict:
    return {"payload": b64url(payload_bytes), "alg": alg, "kid": kid, "sig": b64url(sig)}


def build() -> dict:
    keys = {
        "p256": ("ES256", p256_key("paywire test key P-256")),
        "ed25519": ("Ed25519", ed25519_key("paywire test key Ed25519")),
        "rsa2048-a": ("RS256", rsa_key("paywire test key RSA-2048 A")),
        "rsa2048-b": ("PS256", rsa_key("paywire test key RSA-2048 B")),
    }
    other_key_for = {"p256": "ed25519", "ed25519": "p256", "rsa2048-a": "rsa2048-b", "rsa2048-b": "rsa2048-a"}
    relabel = {"ES256": "PS256", "Ed25519": "ES256", "RS256": "PS256", "PS256": "RS256"}
    b = Builder(keys)

    for name, (alg, key) in keys.items():
        kid = kid_of(key)
        other_kid = kid_of(keys[other_key_for[name]][1])
        p = alg.lower()

        def signed(
            data: bytes, *, env_alg: str = alg, env_kid: str = kid, sig_alg: str = alg, signing_key=key
        ) -> dict:
            sig = sign(sig_alg, signing_key, data)
            assert good_signature(sig_alg, signing_key, data, sig)
            return envelope_json(data, env_alg, env_kid, sig)

        enroll = build_payload(
            "enroll",
            aud=CENTER_ID,
            kid=kid,
            msg_id=msg_id(p + "enroll"),
            ctr=1,
            body=enroll_body(key, alg),
            now_s=NOW,
        )
        receipt = build_payload(
            "receipt",
            aud=kid,
            kid=kid,
            msg_id=msg_id(p + "receipt"),
            ctr=2,
            body=receipt_body(kid),
            now_s=NOW,
        )
        enroll_bytes, receipt_bytes = canonical_bytes(enroll), canonical_bytes(receipt)
        receipt_env = signed(receipt_bytes)
        enroll_env = signed(enroll_bytes)
        receipt_sig = base64.urlsafe_b64decode(receipt_env["sig"] + "==")

        # ---- valid
        b.add(
            f"{p}-enroll-valid",
            name,
            "enrollment",
            enroll_env,
            result="valid",
            payload=enroll,
            comment="self-signed enrollment (proof of possession), non-ASCII name and address",
        )
        b.add(
            f"{p}-enroll-as-envelope-valid",
            name,
            "envelope",
            enroll_env,
            result="valid",
            payload=enroll,
            comment="the same enrollment checked against the key once it is enrolled",
        )
        b.add(f"{p}-receipt-valid", name, "envelope", receipt_env, result="valid", payload=receipt)
        b.add(
            f"{p}-receipt-valid-last-second",
            name,
            "envelope",
            receipt_env,
            result="valid",
            payload=receipt,
            now=receipt["exp"] - 1,
            comment="one second before exp",
        )
        b.add(
            f"{p}-receipt-valid-within-skew",
            name,
            "envelope",
            receipt_env,
            result="valid",
            payload=receipt,
            now=receipt["iat"] - 300,
            comment="iat up to 300 s in the future is clock skew, accepted",
        )

        # ---- signature and payload bytes
        flipped = bytearray(receipt_bytes)
        position = receipt_bytes.index(b'"status":"enrolled"') + len(b'"status":"')
        flipped[position] ^= 0x01  # 'e' -> 'd': still canonical, parseable JSON
        b.add(
            f"{p}-receipt-flipped-payload-byte",
            name,
            "envelope",
            envelope_json(bytes(flipped), alg, kid, receipt_sig),
            result="invalid",
            code="bad_signature",
            stage="verify",
            comment="one payload bit changed after signing",
        )
        flipped_sig = bytearray(receipt_sig)
        flipped_sig[len(flipped_sig) // 2] ^= 0x01
        b.add(
            f"{p}-receipt-flipped-signature-byte",
            name,
            "envelope",
            envelope_json(receipt_bytes, alg, kid, bytes(flipped_sig)),
            result="invalid",
            code="bad_signature",
            stage="verify",
        )
        enroll_sig = bytearray(base64.urlsafe_b64decode(enroll_env["sig"] + "=="))
        enroll_sig[-1] ^= 0x80
        b.add(
            f"{p}-enroll-flipped-signature-byte",
            name,
            "enrollment",
            envelope_json(enroll_bytes, alg, kid, bytes(enroll_sig)),
            result="invalid",
            code="bad_signature",
            stage="verify",
            comment="proof of possession fails",
        )
        b.add(
            f"{p}-receipt-empty-signature",
            name,
            "envelope",
            envelope_json(receipt_bytes, alg, kid, b""),
            result="invalid",
            code="bad_signature",
            stage="verify",
        )

        # ---- algorithm substitution
        b.add(
            f"{p}-receipt-alg-relabelled-{relabel[alg].lower()}",
            name,
            "envelope",
            envelope_json(receipt_bytes, relabel[alg], kid, receipt_sig),
            result="invalid",
            code="algorithm_mismatch",
            stage="verify",
            comment=f"{alg} signature labelled {relabel[alg]}; the key is pinned to {alg}",
        )
        b.add(
            f"{p}-enroll-alg-relabelled-{relabel[alg].lower()}",
            name,
            "enrollment",
            envelope_json(
                enroll_bytes, relabel[alg], kid, base64.urlsafe_b64decode(enroll_env["sig"] + "==")
            ),
            result="invalid",
            code="algorithm_mismatch",
            stage="verify",
            comment="envelope alg differs from the algorithm named in the signed body",
        )
        wrong_pin = "Ed25519" if alg != "Ed25519" else "ES256"
        b.add(
            f"{p}-receipt-pinned-{wrong_pin.lower()}",
            name,
            "envelope",
            envelope_json(receipt_bytes, wrong_pin, kid, receipt_sig),
            result="invalid",
            code="algorithm_mismatch",
            stage="verify",
            pinned_alg=wrong_pin,
            comment=f"label and pin agree on {wrong_pin} but the key cannot be used with it",
        )
        lying = build_payload(
            "enroll",
            aud=CENTER_ID,
            kid=kid,
            msg_id=msg_id(p + "lying-alg"),
            ctr=1,
            body=enroll_body(key, relabel[alg]),
            now_s=NOW,
        )
        if alg in ("ES256", "Ed25519"):
            b.add(
                f"{p}-enroll-body-claims-{relabel[alg].lower()}",
                name,
                "enrollment",
                signed(canonical_bytes(lying), env_alg=relabel[alg]),
                result="invalid",
                code="algorithm_mismatch",
                stage="verify",
                comment=f"enrolls a {alg} key as {relabel[alg]}, signed with the key itself",
            )
        else:
            # RSA keys fit both RSA algorithms, so the PKCS#1/PSS confusion is
            # caught by the signature itself.
            b.add(
                f"{p}-enroll-body-claims-{relabel[alg].lower()}-signed-{p}",
                name,
                "enrollment",
                signed(canonical_bytes(lying), env_alg=relabel[alg]),
                result="invalid",
                code="bad_signature",
                stage="verify",
                comment=f"enrolls as {relabel[alg]} but the signature is {alg}",
            )
            b.add(
                f"{p}-receipt-{p}-signature-under-{relabel[alg].lower()}-pin",
                name,
                "envelope",
                envelope_json(receipt_bytes, relabel[alg], kid, receipt_sig),
                result="invalid",
                code="bad_signature",
                stage="verify",
                pinned_alg=relabel[alg],
                comment=f"key pinned to {relabel[alg]}; an {alg} signature must not pass",
            )

        # ---- key ids
        b.add(
            f"{p}-receipt-envelope-kid-of-other-key",
            name,
            "envelope",
            envelope_json(receipt_bytes, alg, other_kid, receipt_sig),
            result="invalid",
            code="kid_mismatch",
            stage="verify",
        )
        other_header = build_payload(
            "receipt",
            aud=kid,
            kid=other_kid,
            msg_id=msg_id(p + "otherkid"),
            ctr=2,
            body=receipt_body(kid),
            now_s=NOW,
        )
        b.add(
            f"{p}-receipt-signed-kid-of-other-key",
            name,
            "envelope",
            signed(canonical_bytes(other_header)),
            result="invalid",
            code="kid_mismatch",
            stage="verify",
            comment="signature good, but the signed header names another key",
        )
        enroll_other = build_payload(
            "enroll",
            aud=CENTER_ID,
            kid=other_kid,
            msg_id=msg_id(p + "enrollother"),
            ctr=1,
            body=enroll_body(key, alg),
            now_s=NOW,
        )
        b.add(
            f"{p}-enroll-kid-not-of-enclosed-key",
            name,
            "enrollment",
            signed(canonical_bytes(enroll_other), env_kid=other_kid),
            result="invalid",
            code="kid_mismatch",
            stage="verify",
        )
        b.add(
            f"{p}-enroll-envelope-kid-differs",
            name,
            "enrollment",
            envelope_json(enroll_bytes, alg, other_kid, base64.urlsafe_b64decode(enroll_env["sig"] + "==")),
            result="invalid",
            code="kid_mismatch",
            stage="verify",
        )
        b.add(
            f"{p}-enroll-verify-with-receipt",
            name,
            "enrollment",
            receipt_env,
            result="invalid",
            code="wrong_message_type",
            stage="verify",
        )

        # ---- non-canonical payloads, each signed properly
        assert receipt_bytes.startswith(b'{"aud":')
        whitespace = b"{ " + receipt_bytes[1:]
        reordered = json.dumps(
            {k: receipt[k] for k in reversed(sorted(receipt))}, separators=(",", ":"), ensure_ascii=False
        ).encode()
        duplicate = receipt_bytes.replace(b'"ctr":2,', b'"ctr":2,"ctr":2,', 1)
        escaped = receipt_bytes.replace(b'"status":"enrolled"', b'"status":"\\u0065nrolled"', 1)
        trailing_newline = receipt_bytes + b"\n"
        for label, data, code in [
            ("extra-whitespace", whitespace, "payload_not_canonical"),
            ("trailing-newline", trailing_newline, "payload_not_canonical"),
            ("reordered-keys", reordered, "payload_not_canonical"),
            ("escaped-character", escaped, "payload_not_canonical"),
            ("duplicate-key", duplicate, "malformed_payload"),
        ]:
            assert data != receipt_bytes
            if label != "duplicate-key":
                assert json.loads(data) == receipt, label
            b.add(
                f"{p}-receipt-non-canonical-{label}",
                name,
                "envelope",
                signed(data),
                result="invalid",
                code=code,
                stage="verify",
                comment="signed properly; only the bytes are not RFC 8785",
            )
        b.add(
            f"{p}-enroll-non-canonical-extra-whitespace",
            name,
            "enrollment",
            signed(b"{ " + enroll_bytes[1:]),
            result="invalid",
            code="payload_not_canonical",
            stage="verify",
        )

        # ---- payload content, each signed properly
        with_float = receipt_bytes.replace(b'"ctr":2,', b'"ctr":2.0,', 1)
        assert with_float != receipt_bytes
        b.add(
            f"{p}-receipt-float-in-payload",
            name,
            "envelope",
            signed(with_float),
            result="invalid",
            code="malformed_payload",
            stage="verify",
            comment='"ctr":2.0',
        )
        b.add(
            f"{p}-receipt-extra-header-field",
            name,
            "envelope",
            signed(canonical_bytes({**receipt, "note": "hello"})),
            result="invalid",
            code="malformed_payload",
            stage="verify",
        )
        missing = {k: v for k, v in receipt.items() if k != "msg_id"}
        b.add(
            f"{p}-receipt-missing-header-field",
            name,
            "envelope",
            signed(canonical_bytes(missing)),
            result="invalid",
            code="malformed_payload",
            stage="verify",
        )
        b.add(
            f"{p}-receipt-wrong-dom",
            name,
            "envelope",
            signed(canonical_bytes({**receipt, "dom": "tokenpay-x"})),
            result="invalid",
            code="wrong_domain",
            stage="verify",
        )
        b.add(
            f"{p}-receipt-wrong-v",
            name,
            "envelope",
            signed(canonical_bytes({**receipt, "v": 2})),
            result="invalid",
            code="wrong_domain",
            stage="verify",
        )
        b.add(
            f"{p}-enroll-wrong-dom",
            name,
            "enrollment",
            signed(canonical_bytes({**enroll, "dom": "other"})),
            result="invalid",
            code="wrong_domain",
            stage="verify",
        )
        b.add(
            f"{p}-receipt-unknown-type",
            name,
            "envelope",
            signed(canonical_bytes({**receipt, "type": "transmogrify"})),
            result="invalid",
            code="unknown_message_type",
            stage="verify",
        )
        b.add(
            f"{p}-receipt-lifetime-too-long",
            name,
            "envelope",
            signed(canonical_bytes({**receipt, "exp": receipt["iat"] + 30 * 24 * 3600 + 1})),
            result="invalid",
            code="malformed_payload",
            stage="verify",
            comment="exp more than 30 days after iat",
        )
        bad_date = {**enroll, "body": {**enroll["body"], "birth_date": "2023-02-30"}}
        b.add(
            f"{p}-enroll-bad-birth-date",
            name,
            "enrollment",
            signed(canonical_bytes(bad_date)),
            result="invalid",
            code="malformed_payload",
            stage="verify",
        )

        # ---- freshness
        b.add(
            f"{p}-receipt-expired",
            name,
            "envelope",
            receipt_env,
            result="invalid",
            code="expired",
            stage="freshness",
            now=receipt["exp"],
            comment="now == exp",
        )
        b.add(
            f"{p}-receipt-not-yet-valid",
            name,
            "envelope",
            receipt_env,
            result="invalid",
            code="not_yet_valid",
            stage="freshness",
            now=receipt["iat"] - 301,
            comment="iat 301 s in the future (skew is 300 s)",
        )
        b.add(
            f"{p}-enroll-expired",
            name,
            "enrollment",
            enroll_env,
            result="invalid",
            code="expired",
            stage="freshness",
            now=enroll["exp"] + 86400,
        )

        # ---- the envelope object itself
        padded = dict(receipt_env)
        field = "sig" if len(receipt_sig) % 3 else "payload"
        raw = receipt_sig if field == "sig" else receipt_bytes
        assert len(raw) % 3, "need a value whose base64 has padding"
        padded[field] = b64url_padded(raw)
        assert padded[field].endswith("=")
        b.add(
            f"{p}-envelope-base64-padding",
            name,
            "envelope",
            padded,
            result="invalid",
            code="malformed_envelope",
            stage="decode",
            comment=f"{field} carries '=' padding",
        )
        stray = dict(receipt_env)
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        # The last character of a value whose length is not a multiple of 3
        # carries 2 or 4 unused low bits: set the lowest one.
        stray[field] = stray[field][:-1] + alphabet[alphabet.index(stray[field][-1]) ^ 1]
        assert stray[field] != receipt_env[field]
        assert base64.urlsafe_b64decode(stray[field] + "==") == raw, "only unused bits may change"
        b.add(
            f"{p}-envelope-base64-stray-bits",
            name,
            "envelope",
            stray,
            result="invalid",
            code="malformed_envelope",
            stage="decode",
            comment=f"{field}: non-zero unused bits in the last char",
        )
        url_field = next(f for f in ("payload", "sig") if "-" in receipt_env[f] or "_" in receipt_env[f])
        standard = receipt_env[url_field].replace("-", "+").replace("_", "/")
        assert base64.b64decode(standard + "==") == base64.urlsafe_b64decode(receipt_env[url_field] + "==")
        b.add(
            f"{p}-envelope-standard-base64-alphabet",
            name,
            "envelope",
            {**receipt_env, url_field: standard},
            result="invalid",
            code="malformed_envelope",
            stage="decode",
            comment=f"{url_field} in the standard alphabet (+/) instead of base64url (-_), same bytes",
        )
        b.add(
            f"{p}-envelope-extra-member",
            name,
            "envelope",
            {**receipt_env, "typ": "JWS"},
            result="invalid",
            code="malformed_envelope",
            stage="decode",
        )
        b.add(
            f"{p}-envelope-missing-member",
            name,
            "envelope",
            {k: v for k, v in receipt_env.items() if k != "kid"},
            result="invalid",
            code="malformed_envelope",
            stage="decode",
        )
        b.add(
            f"{p}-envelope-alg-none",
            name,
            "envelope",
            {**receipt_env, "alg": "none"},
            result="invalid",
            code="unsupported_algorithm",
            stage="decode",
        )
        b.add(
            f"{p}-envelope-kid-upper-case",
            name,
            "envelope",
            {**receipt_env, "kid": kid.upper()},
            result="invalid",
            code="malformed_envelope",
            stage="decode",
        )

        # ---- ECDSA encodings: same (r, s), only the encoding differs
        if alg == "ES256":
            for label, encoding in ecdsa_encodings(receipt_sig).items():
                assert encoding != receipt_sig
                b.add(
                    f"{p}-receipt-signature-{label}",
                    name,
                    "envelope",
                    envelope_json(receipt_bytes, alg, kid, encoding),
                    result="invalid",
                    code="bad_signature",
                    stage="verify",
                    comment="r and s verify; BER / non-minimal DER must not",
                )
            enroll_sig_der = base64.urlsafe_b64decode(enroll_env["sig"] + "==")
            b.add(
                f"{p}-enroll-signature-padded-integer",
                name,
                "enrollment",
                envelope_json(enroll_bytes, alg, kid, ecdsa_encodings(enroll_sig_der)["padded-integer"]),
                result="invalid",
                code="bad_signature",
                stage="verify",
            )
            assert decode_dss_signature(receipt_sig)[1] <= P256_N // 2
            upper = high_s(receipt_sig)
            assert good_signature(alg, key, receipt_bytes, upper)
            assert decode_dss_signature(upper)[1] > P256_N // 2
            b.add(
                f"{p}-receipt-high-s-valid",
                name,
                "envelope",
                envelope_json(receipt_bytes, alg, kid, upper),
                result="valid",
                payload=receipt,
                comment="high S is accepted by design (paywire.algorithms docstring, Wycheproof: valid); "
                "never derive ids from signature bytes",
            )

    return {
        "description": "paywire wire-format vectors: envelopes over RFC 8785 payloads, one defect per "
        "invalid vector. mode 'envelope': Envelope.from_json -> verify_envelope(spki, pinned_alg) -> "
        "check_freshness(header, now); mode 'enrollment': Envelope.from_json -> "
        "verify_enrollment -> check_freshness. stage: where the refusal must happen "
        "(decode = from_json, verify = verify_*, freshness = check_freshness).",
        "generator": "tests/vectors/make_wire_vectors.py",
        "keys": {
            name: {"alg": alg, "spki_der": spki(key).hex(), "kid": kid_of(key)}
            for name, (alg, key) in keys.items()
        },
        "vectors": b.vectors,
    }


def render() -> bytes:
    return (json.dumps(build(), indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="regenerate and compare with the committed JSON")
    args = parser.parse_args()
    data = render()
    if args.check:
        if OUTPUT.read_bytes() != data:
            print(f"{OUTPUT} differs from what the generator makes now", file=sys.stderr)
            return 1
        print(f"{OUTPUT} is up to date")
        return 0
    OUTPUT.write_bytes(data)
    print(f"wrote {OUTPUT} ({len(json.loads(data)['vectors'])} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
