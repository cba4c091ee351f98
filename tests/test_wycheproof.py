"""Project Wycheproof vectors against the center's own verifier.

Every test of every file in <repo>/../shared/vectors/wycheproof/ goes through
`paywire.algorithms.load_public_key` + `verify_signature`, the exact functions
the center uses. `valid` must verify; `invalid` must raise WireError;
`acceptable` is decided explicitly below (ACCEPTABLE_DECISIONS) and pinned.

CI clones the repository beside `shared/`. A missing directory or file is a
collection error, never a skip: silently running no vectors would pass.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from paywire.algorithms import RSA_EXPONENT, load_public_key, verify_signature
from paywire.errors import WireError

WYCHEPROOF_DIR = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "wycheproof"

# file name -> (test-id prefix, paywire algorithm, Wycheproof schema it must carry)
FILES = {
    "ecdsa_secp256r1_sha256_test.json": ("ecdsa-p256", "ES256", "EcdsaVerify"),
    "ed25519_test.json": ("ed25519", "Ed25519", "EddsaVerify"),
    "rsa_signature_2048_sha256_test.json": ("rsa-pkcs1-2048", "RS256", "RsassaPkcs1Verify"),
    "rsa_pss_2048_sha256_mgf1_32_test.json": ("rsa-pss-2048", "PS256", "RsassaPssVerify"),
}

# Decisions for `acceptable` tests, by Wycheproof flag: True = we accept.
#
# MissingNull (rsa_signature_2048_sha256_test.json, tcId 8): the PKCS#1 v1.5
# DigestInfo for SHA-256 with the AlgorithmIdentifier's NULL parameters left
# out. RFC 8017 (9.2, note 1) defines the encoding *with* NULL, and Wycheproof
# marks the other spelling "acceptable" only for legacy verifiers. The center
# REFUSES it: every signer we support (PKCS#11 CKM_SHA256_RSA_PKCS, OpenPGP
# cards, `cryptography`) emits the NULL form, and accepting a second encoding
# of the same signature would only give one message two valid signatures,
# which the wire format avoids everywhere (strict DER for ECDSA, canonical
# base64url and JSON). OpenSSL under `cryptography` refuses it too.
ACCEPTABLE_DECISIONS = {"MissingNull": False}

# Groups whose RSA key has a public exponent other than 65537 (rsa_signature_2048_sha256_test.json
# has two with e = 3, one valid test each). Wycheproof tests the signature scheme with them; the
# center refuses such keys by policy (a verification's cost grows with the exponent's bits, issue 17),
# so their tests are not run as signature tests: each must be refused at the key, with
# key_not_allowed, and the count of such tests is pinned so that a new vector file is looked at.
POLICY_REFUSED_TESTS = {"rsa_signature_2048_sha256_test.json": 2}


def refused_by_policy(public_key_der_hex: str) -> bool:
    key = serialization.load_der_public_key(bytes.fromhex(public_key_der_hex))
    return isinstance(key, rsa.RSAPublicKey) and key.public_numbers().e != RSA_EXPONENT


if not WYCHEPROOF_DIR.is_dir():
    raise FileNotFoundError(
        f"Wycheproof vectors not found at {WYCHEPROOF_DIR}: the repository must be cloned beside shared/ "
        "(these tests are never skipped)"
    )


def _load_files() -> dict[str, dict]:
    present = sorted(p.name for p in WYCHEPROOF_DIR.glob("*.json"))
    if present != sorted(FILES):
        raise AssertionError(
            f"Wycheproof files in {WYCHEPROOF_DIR} are {present}; this test knows {sorted(FILES)}. "
            "Map every vector file to an algorithm here; none may be silently ignored."
        )
    return {name: json.loads((WYCHEPROOF_DIR / name).read_text()) for name in FILES}


DOCUMENTS = _load_files()


def _cases():
    for file_name, document in DOCUMENTS.items():
        prefix, algorithm, _ = FILES[file_name]
        for group in document["testGroups"]:
            group_has_valid = any(t["result"] == "valid" for t in group["tests"])
            for test in group["tests"]:
                yield pytest.param(
                    file_name,
                    algorithm,
                    group["publicKeyDer"],
                    group_has_valid,
                    test,
                    id=f"{prefix}-tc{test['tcId']}",
                )


CASES = list(_cases())


def judge(algorithm: str, public_key_der_hex: str, test: dict) -> tuple[bool, str | None, str | None]:
    """(accepted, refused_by, code): refused_by is 'key' or 'signature'."""
    try:
        key = load_public_key(bytes.fromhex(public_key_der_hex), algorithm)
    except WireError as exc:
        return False, "key", exc.code
    try:
        verify_signature(algorithm, key, bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"]))
    except WireError as exc:
        return False, "signature", exc.code
    return True, None, None


@pytest.mark.parametrize("file_name, algorithm, public_key_der, group_has_valid, test", CASES)
def test_wycheproof(file_name, algorithm, public_key_der, group_has_valid, test):
    accepted, refused_by, code = judge(algorithm, public_key_der, test)
    result = test["result"]
    context = f"{file_name} tcId {test['tcId']} ({result}): {test['comment']} {test['flags']}"
    if refused_by_policy(public_key_der):
        assert (accepted, refused_by, code) == (False, "key", "key_not_allowed"), context
    elif result == "valid":
        assert accepted, f"refused by {refused_by} ({code}): {context}"
    elif result == "invalid":
        assert not accepted, f"accepted: {context}"
        if group_has_valid:
            # The group's key is good (its valid tests verify with it), so
            # the refusal must come from the signature check, not the key.
            assert (refused_by, code) == ("signature", "bad_signature"), context
        else:
            assert code in ("bad_signature", "bad_public_key", "algorithm_mismatch"), context
    elif result == "acceptable":
        unknown = [flag for flag in test["flags"] if flag not in ACCEPTABLE_DECISIONS]
        assert not unknown, f"no recorded decision for acceptable flags {unknown}: {context}"
        expected = all(ACCEPTABLE_DECISIONS[flag] for flag in test["flags"])
        assert accepted == expected, f"decision for {test['flags']} is accept={expected}: {context}"
        if not accepted:
            assert (refused_by, code) == ("signature", "bad_signature"), context
    else:
        raise AssertionError(f"unknown result: {context}")


@pytest.mark.parametrize("file_name", sorted(FILES))
def test_every_group_key_with_valid_tests_loads(file_name):
    """A refused group key would fail its valid tests and make its invalid
    tests pass for the wrong reason: check the keys on their own."""
    _, algorithm, schema_type = FILES[file_name]
    groups = DOCUMENTS[file_name]["testGroups"]
    assert all(g["type"] == schema_type for g in groups)
    loaded = 0
    for group in groups:
        if any(t["result"] == "valid" for t in group["tests"]) and not refused_by_policy(
            group["publicKeyDer"]
        ):
            load_public_key(bytes.fromhex(group["publicKeyDer"]), algorithm)
            loaded += 1
    assert loaded > 0


@pytest.mark.parametrize("file_name", sorted(FILES))
def test_policy_refused_keys_are_the_pinned_few(file_name):
    """Exactly the pinned number of tests use a key our policy refuses (e != 65537)."""
    groups = DOCUMENTS[file_name]["testGroups"]
    refused = sum(len(g["tests"]) for g in groups if refused_by_policy(g["publicKeyDer"]))
    assert refused == POLICY_REFUSED_TESTS.get(file_name, 0)


@pytest.mark.parametrize("file_name", sorted(FILES))
def test_every_wycheproof_test_is_run(file_name):
    """The parametrized tests above cover exactly numberOfTests per file, and
    judging them all here gives the same count (the tally is in the report)."""
    document = DOCUMENTS[file_name]
    prefix, algorithm, _ = FILES[file_name]
    ids = [c.id for c in CASES if c.values[0] == file_name]
    assert len(ids) == len(set(ids)) == document["numberOfTests"]
    assert all(i.startswith(prefix + "-tc") for i in ids)

    tally = Counter()
    for group in document["testGroups"]:
        for test in group["tests"]:
            accepted, _, _ = judge(algorithm, group["publicKeyDer"], test)
            policy = "policy-" if refused_by_policy(group["publicKeyDer"]) else ""
            tally[(policy + test["result"], accepted)] += 1
    assert sum(tally.values()) == document["numberOfTests"]
    assert not any(accepted for (result, accepted) in tally if result.startswith("policy-")), dict(tally)
    # valid: all accepted; invalid: none accepted.
    assert tally[("valid", False)] == 0 and tally[("invalid", True)] == 0, dict(tally)
    assert tally[("valid", True)] > 0 and tally[("invalid", False)] > 0
