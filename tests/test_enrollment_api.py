"""Enrollment at the API level (FastAPI TestClient), on SQLite and PostgreSQL,
with the center's receipt key on a SoftHSM token."""

from __future__ import annotations

import time

import pytest
from receipt_support import checked_by_center
from sqlalchemy import func, select
from support import SoftwareSigner

from center.ledger import audit
from center.storage.db import keys, parties
from paywire.envelope import Envelope, b64url_encode


def enroll(api, signer, envelope: Envelope):
    return api.post("/v1/enroll", json=envelope.to_json())


def count(center, table) -> int:
    with center.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.mark.parametrize("algorithm", ["ES256", "Ed25519"])
def test_enrollment_creates_member_and_signed_receipt(api, center, algorithm):
    signer = SoftwareSigner(algorithm)
    request = signer.envelope("enroll", signer.enroll_body(), aud=center.center_id)
    response = enroll(api, signer, request)
    assert response.status_code == 200, response.text
    result = checked_by_center(response.json(), request, center)
    assert result["member_id"].startswith("M-")
    assert result["kid"] == signer.kid
    assert count(center, parties) == 1 and count(center, keys) == 1
    with center.engine.connect() as conn:
        stored = conn.execute(select(keys.c.algorithm, keys.c.spki)).one()
    assert stored.algorithm == algorithm and stored.spki == signer.spki


def test_store_enrollment(api, center):
    signer = SoftwareSigner()
    request = signer.envelope("enroll", signer.enroll_body("store"), aud=center.center_id)
    response = enroll(api, signer, request)
    assert response.status_code == 200, response.text
    assert checked_by_center(response.json(), request, center)["member_id"].startswith("S-")


def test_same_enrollment_twice_creates_one_member_and_same_receipt(api, center):
    signer = SoftwareSigner()
    request = signer.envelope("enroll", signer.enroll_body(), aud=center.center_id)
    first, second = enroll(api, signer, request), enroll(api, signer, request)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert count(center, parties) == 1


def test_enrollment_signed_by_another_key_is_refused(api, center):
    carried, actual_signer = SoftwareSigner(), SoftwareSigner()
    body = carried.enroll_body()
    # The payload names the carried key; the signature comes from another key.
    request = carried.envelope("enroll", body, aud=center.center_id)
    forged = Envelope(
        payload=request.payload, alg="ES256", kid=request.kid, sig=actual_signer.sign(request.payload)
    )
    response = enroll(api, carried, forged)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "bad_signature"
    assert count(center, parties) == 0


def test_conflicting_enrollment_same_key_is_refused(api, center):
    signer = SoftwareSigner()
    assert (
        enroll(api, signer, signer.envelope("enroll", signer.enroll_body(), aud=center.center_id)).status_code
        == 200
    )
    again = signer.envelope("enroll", signer.enroll_body(name="Someone Else"), aud=center.center_id)
    response = enroll(api, signer, again)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "key_already_enrolled"
    assert count(center, parties) == 1


def test_same_message_id_other_bytes_is_refused(api, center):
    signer = SoftwareSigner()
    first = signer.envelope("enroll", signer.enroll_body(), aud=center.center_id, msg_id="m" * 20)
    assert enroll(api, signer, first).status_code == 200
    other = signer.envelope(
        "enroll", signer.enroll_body(name="Changed"), aud=center.center_id, msg_id="m" * 20
    )
    response = enroll(api, signer, other)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "message_id_conflict"


def test_wrong_audience_and_expired_are_refused(api, center):
    signer = SoftwareSigner()
    elsewhere = signer.envelope("enroll", signer.enroll_body(), aud="center-other")
    response = enroll(api, signer, elsewhere)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "wrong_audience")
    old = signer.envelope(
        "enroll", signer.enroll_body(), aud=center.center_id, now_s=int(time.time()) - 7200, lifetime_s=3600
    )
    response = enroll(api, signer, old)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "expired")
    assert count(center, parties) == 0


def test_kid_not_matching_enclosed_key_is_refused(api, center):
    signer, other = SoftwareSigner(), SoftwareSigner()
    request = signer.envelope("enroll", signer.enroll_body(), aud=center.center_id, kid=other.kid)
    response = enroll(api, signer, request)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "kid_mismatch")


def test_algorithm_substitution_is_refused(api, center):
    signer = SoftwareSigner("ES256")
    body = signer.enroll_body() | {"alg": "Ed25519"}
    response = enroll(api, signer, signer.envelope("enroll", body, aud=center.center_id))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "algorithm_mismatch"


@pytest.mark.parametrize(
    "mutate, code",
    [
        (lambda doc: doc | {"payload": doc["payload"] + "="}, "malformed_envelope"),
        (lambda doc: doc | {"extra": 1}, "invalid_request"),
        (lambda doc: doc | {"alg": "HS256"}, "unsupported_algorithm"),
        (lambda doc: {k: v for k, v in doc.items() if k != "sig"}, "invalid_request"),
    ],
)
def test_malformed_envelopes_get_stable_codes(api, center, mutate, code):
    signer = SoftwareSigner()
    document = mutate(signer.envelope("enroll", signer.enroll_body(), aud=center.center_id).to_json())
    response = api.post("/v1/enroll", json=document)
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["code"] == code
    assert count(center, parties) == 0


def test_oversized_body_is_refused(api):
    response = api.post(
        "/v1/enroll", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_accepted_enrollments_are_in_the_audit_chain(api, center):
    for _ in range(3):
        signer = SoftwareSigner()
        assert (
            enroll(
                api, signer, signer.envelope("enroll", signer.enroll_body(), aud=center.center_id)
            ).status_code
            == 200
        )
    with center.engine.connect() as conn:
        checked, problem = audit.verify_chain(conn)
    assert (checked, problem) == (3, None)


def test_center_info_and_health(api, center):
    info = api.get("/v1/center").json()
    assert info["center_id"] == center.center_id
    assert info["receipt_public_key"] == b64url_encode(center.signer.spki)
    assert api.get("/healthz").json()["status"] == "ok"
    missing = api.get("/v1/nothing-here")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
