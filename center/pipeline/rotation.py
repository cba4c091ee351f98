"""Key rotation, a signed message: the old key signs `rotate`, its body holds the new key's proof.

The holder of an active key sends one `rotate` message signed by the old key whose body holds a
`key_proof` envelope signed by the new key and naming the old kid, so both keys sign. It runs
through the usual signed pipeline (Center.submit: verification with the pinned key, counter,
audit entry, receipt, idempotency); `rotate_handler` checks the new key's proof and, in the same
transaction, adds it as active for the same party and marks the old key 'rotated'. `rotate` also
answers a resend after the old key is rotated. The key rules (statuses, refusals) are
center.keys.lifecycle's.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from sqlalchemy import Connection, insert, select, update

from center.errors import ApiError
from center.keys.issuer_policy import check_enrollment_certificate, enrollment_key_cert
from center.keys.lifecycle import REPLAYABLE_STATUSES, add_key, inactive_key_error
from center.pipeline.rules import answer_row, earlier_answer_row, recorded_answer, store_answers
from center.pipeline.types import CenterContext, Outcome, Signer
from center.storage.db import key_claims, keys
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import ROTATE, Header, check_freshness
from paywire.verify import verify_envelope, verify_key_proof

# Refusals of a resend whose key the rotation itself retired (or that was revoked since).
RETIRED_KEY_CODES = ("key_rotated", "key_revoked")


class RotatingCenter(CenterContext, Protocol):
    """What `rotate` needs: the context handlers get, and the signed pipeline's entry."""

    def submit(self, envelope: Envelope, expected_type: str) -> dict: ...


def rotate(center: RotatingCenter, envelope: Envelope) -> dict:
    """POST /v1/keys/rotate: the signed pipeline, or the first answer again for a resend."""
    try:
        return center.submit(envelope, ROTATE)
    except ApiError as error:
        # The old key is no longer active once the rotation is in: a resend
        # (an answer lost on the way) still gets the receipt it was given.
        if error.code not in RETIRED_KEY_CODES:
            raise
        answer = earlier_rotation_answer(center, envelope)
        if answer is None:
            raise
        return answer


def rotate_handler(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    """Inside the rotate message's transaction (old key verified, its counter advanced)."""
    proof, proof_header, proof_body, spki_der = checked_key_proof(center, body, signer, now_ms)
    # The new key must pass the issuer policy an enrollment would (center.keys.issuer_policy).
    certificate = check_enrollment_certificate(
        center.issuer_policy, spki_der, enrollment_key_cert(proof_body), now_ms // 1000
    )
    if conn.execute(select(keys.c.kid).where(keys.c.kid == proof_header.kid)).first() is not None:
        raise ApiError(
            "key_already_enrolled", "the new key is already enrolled; generate another key to rotate to"
        )
    _retire(conn, signer)
    add_key(conn, proof_header, signer.party_id, proof_body["alg"], spki_der, "active", now_ms)
    conn.execute(
        insert(key_claims).values(
            kid=proof_header.kid,
            party_id=signer.party_id,
            kind="rotation",
            replaces_kid=signer.kid,
            status="bound",
            created_at_ms=now_ms,
            decided_at_ms=now_ms,
            decided_by="key-holder",
        )
    )
    # The proof's counter is the new key's first: record it as used, like an enrollment's.
    store_answers(
        conn,
        [
            answer_row(
                proof_header,
                hashlib.sha256(proof.payload).hexdigest(),
                {"key_proof_for": header.msg_id},
                now_ms,
            )
        ],
    )
    result = {
        "action": "key_rotated",
        "member_id": signer.party_id,
        "role": signer.role,
        "old_kid": signer.kid,
        "new_kid": proof_header.kid,
        "algorithm": proof_body["alg"],
    }
    if certificate is not None:
        result["key_certificate"] = certificate  # the receipt states what was checked
    return Outcome(result)


def _retire(conn: Connection, signer: Signer) -> None:
    retired = conn.execute(
        update(keys).where(keys.c.kid == signer.kid, keys.c.status == "active").values(status="rotated")
    )
    if retired.rowcount != 1:  # revoked or rotated by a concurrent request after this one's checks
        raise inactive_key_error(conn.execute(select(keys.c.status).where(keys.c.kid == signer.kid)).scalar())


def checked_key_proof(center: CenterContext, body: dict, signer: Signer, now_ms: int):
    """The new key's proof of possession: its own signature, this center, fresh, naming the old key."""
    try:
        proof = Envelope.from_json(body["new_key"])
        proof_header, proof_body, spki_der = verify_key_proof(proof)
        check_freshness(proof_header, now_ms // 1000)
    except WireError as error:
        raise ApiError.from_wire(error) from None
    if proof_header.aud != center.center_id:
        raise ApiError(
            "wrong_audience", f"the new key's proof is addressed to {proof_header.aud!r}, not this center"
        )
    if proof_body["replaces"] != signer.kid:
        raise ApiError(
            "key_proof_mismatch",
            "the new key's proof names another key to replace than the one that signed the rotation",
        )
    if proof_header.kid == signer.kid:
        raise ApiError("key_proof_mismatch", "a key cannot replace itself")
    return proof, proof_header, proof_body, spki_der


def earlier_rotation_answer(center: CenterContext, envelope: Envelope) -> dict | None:
    """The stored answer to this very rotation, verified as signed by its (no longer active) key."""
    with center.engine.connect() as conn:
        key = conn.execute(
            select(keys.c.spki, keys.c.algorithm, keys.c.status).where(keys.c.kid == envelope.kid)
        ).first()
        if key is None or key.status not in REPLAYABLE_STATUSES:
            return None
        try:
            header, _body = verify_envelope(envelope, spki_der=bytes(key.spki), algorithm=key.algorithm)
        except WireError as error:
            raise ApiError.from_wire(error) from None
        if header.type != ROTATE:
            return None
        row = earlier_answer_row(conn, header)
    if row is None:
        return None
    answer = recorded_answer(row, hashlib.sha256(envelope.payload).hexdigest())
    return None if "error" in answer else answer
