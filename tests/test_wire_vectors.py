"""Pinned wire-format vectors (tests/vectors/wire_vectors.json).

Each vector goes through exactly what the center runs:
    Envelope.from_json -> verify_envelope(spki, pinned alg) | verify_enrollment
    -> check_freshness(header, now)
A valid vector must come out with the recorded header and body; an invalid one
must be refused with a WireError carrying exactly the recorded code, at the
recorded stage. The JSON is data made once by make_wire_vectors.py; these
tests never regenerate it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from paywire.canonical import canonical_bytes
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import check_freshness
from paywire.verify import verify_enrollment, verify_envelope

VECTORS_FILE = Path(__file__).resolve().parent / "vectors" / "wire_vectors.json"
DATA = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
KEYS = DATA["keys"]
VECTORS = DATA["vectors"]


def run(vector: dict):
    """Return (header, body, spki or None); a WireError carries .stage."""
    stage = "decode"
    try:
        envelope = Envelope.from_json(vector["envelope"])
        stage = "verify"
        spki = bytes.fromhex(KEYS[vector["key"]]["spki_der"])
        if vector["mode"] == "envelope":
            header, body = verify_envelope(envelope, spki_der=spki, algorithm=vector["pinned_alg"])
            signer = None
        elif vector["mode"] == "enrollment":
            header, body, signer = verify_enrollment(envelope)
        else:
            raise AssertionError(f"unknown mode {vector['mode']!r}")
        stage = "freshness"
        check_freshness(header, vector["now"])
    except WireError as exc:
        exc.stage = stage
        raise
    return envelope, header, body, signer


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_vector(vector):
    if vector["result"] == "valid":
        envelope, header, body, signer = run(vector)
        assert dataclasses.asdict(header) == vector["header"]
        assert body == vector["body"]
        # The payload bytes are the canonical form of the recorded document,
        # and to_json gives back the very envelope that arrived.
        assert envelope.payload == canonical_bytes(vector["payload"])
        assert envelope.to_json() == vector["envelope"]
        if vector["mode"] == "enrollment":
            assert signer == bytes.fromhex(KEYS[vector["key"]]["spki_der"])
    elif vector["result"] == "invalid":
        with pytest.raises(WireError) as caught:
            run(vector)
        assert (caught.value.code, caught.value.stage) == (vector["code"], vector["stage"]), (
            caught.value.message
        )
    else:
        raise AssertionError(f"unknown result {vector['result']!r}")


def test_vector_file_is_sound():
    ids = [v["id"] for v in VECTORS]
    assert len(ids) == len(set(ids)), "vector ids must be unique"
    assert {k["alg"] for k in KEYS.values()} == {"ES256", "Ed25519", "RS256", "PS256"}
    for name, key in KEYS.items():
        # kid is the SHA-256 of the SPKI, computed here without paywire.
        assert key["kid"] == hashlib.sha256(bytes.fromhex(key["spki_der"])).hexdigest(), name
    # No private key material in the data.
    text = VECTORS_FILE.read_text(encoding="utf-8")
    assert "PRIVATE" not in text and "pkcs8" not in text.lower()
    # Every algorithm has valid enrollments and receipts, and the invalid
    # vectors cover each refusal the wire format promises, per algorithm.
    per_alg = Counter()
    for v in VECTORS:
        per_alg[(KEYS[v["key"]]["alg"], v["result"], v.get("code"))] += 1
    for alg in ("ES256", "Ed25519", "RS256", "PS256"):
        assert per_alg[(alg, "valid", None)] >= 4, alg
        for code in (
            "bad_signature",
            "algorithm_mismatch",
            "kid_mismatch",
            "payload_not_canonical",
            "malformed_payload",
            "wrong_domain",
            "expired",
            "not_yet_valid",
            "malformed_envelope",
        ):
            assert per_alg[(alg, "invalid", code)] >= 1, (alg, code)


def test_valid_vectors_are_really_signed_by_their_key():
    """Independent of paywire: the recorded signatures verify with `cryptography`
    over the exact payload bytes, so an invalid vector's refusal is about its
    one defect and a valid one is not accepted by accident."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    def b64(text):
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    checked = 0
    for v in VECTORS:
        if v["result"] != "valid":
            continue
        key = serialization.load_der_public_key(bytes.fromhex(KEYS[v["key"]]["spki_der"]))
        payload, sig, alg = b64(v["envelope"]["payload"]), b64(v["envelope"]["sig"]), v["envelope"]["alg"]
        if alg == "ES256":
            key.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
        elif alg == "Ed25519":
            key.verify(sig, payload)
        elif alg == "RS256":
            key.verify(sig, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(
                sig, payload, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
            )
        checked += 1
    assert checked == sum(v["result"] == "valid" for v in VECTORS) > 0
