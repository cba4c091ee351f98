"""Key lifecycle inside signed requests: a lost card's new key, and rotation.

Rebinding (lost card): the member's new token key enrolls with `rebind` naming
their existing account (center.handlers.enroll calls `enroll_rebind`). The key
is recorded as 'pending_bind' for that party (no new party, no new account),
with the identity it gave, and every request it signs is refused with
`key_not_bound` until an operator binds it (center.key_admin.bind_key), which
needs the lost key revoked first.

Rotation: the holder of an active key sends one `rotate` message signed by the
old key whose body holds a `key_proof` envelope signed by the new key and
naming the old kid, so both keys sign. It runs through the usual signed
pipeline (Center.submit: verification with the pinned key, counter, audit
entry, receipt, idempotency); `rotate_handler` checks the new key's proof and,
in the same transaction, adds it as active for the same party and marks the
old key 'rotated'. `rotate` also answers a resend after the old key is rotated.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, insert, select, update

from center.db import key_claims, keys, messages, parties
from center.errors import ApiError, Refusal
from center.issuer_policy import check_enrollment_certificate, enrollment_key_cert
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import ROTATE, Header, check_freshness
from paywire.verify import verify_envelope, verify_key_proof

if TYPE_CHECKING:
    from center.handlers import Outcome
    from center.service import Center, Signer

# Each costs the claimant a key generation, but a known member id must not
# collect an unbounded pile of claims for an operator to wade through.
MAX_PENDING_CLAIMS_PER_PARTY = 5
# What a key that is not active gets told, by status.
INACTIVE_KEY_REFUSALS = {
    "revoked": ("key_revoked", "this key has been revoked; messages signed by it are refused"),
    "rotated": ("key_rotated", "this key was replaced by a newer key of the same account; sign with the new key"),
    "pending_bind": ("key_not_bound", "this key is not bound to its account yet: an operator must bind it first"),
    "rejected": ("key_rejected", "an operator rejected this key's claim to the account; it can sign nothing"),
}
# A resend of an accepted rotation is answered even though its key is no longer active.
REPLAYABLE_STATUSES = ("rotated", "revoked")


def inactive_key_error(status: str | None) -> ApiError:
    assert status != "active", "an active key is not refused for its status"
    if status is None:
        return ApiError("unknown_key", "this key is not enrolled at this center")
    code, message = INACTIVE_KEY_REFUSALS.get(status, INACTIVE_KEY_REFUSALS["revoked"])
    return ApiError(code, message)


# --- rebinding a new key to an existing account (lost card) ---------------------------

def enroll_rebind(conn: Connection, header: Header, body: dict, spki_der: bytes, now: int) -> "Outcome":
    """Record a verified enrollment that claims an existing account; inside the enrollment transaction."""
    from center.handlers import Outcome

    party_id = body["rebind"]
    party = conn.execute(select(parties.c.id, parties.c.role, parties.c.status)
                         .where(parties.c.id == party_id)).first()
    if party is None or party.status != "active":
        raise Refusal("unknown_party", f"no active account {party_id} at this center to bind a new key to")
    if party.role != body["role"]:
        raise Refusal("wrong_role", f"account {party_id} belongs to a {party.role}; this enrollment is a {body['role']}'s")
    pending = conn.execute(select(func.count()).select_from(keys)
                           .where(keys.c.party_id == party_id, keys.c.status == "pending_bind")).scalar_one()
    if pending >= MAX_PENDING_CLAIMS_PER_PARTY:
        raise Refusal("too_many_pending_keys", f"account {party_id} already has {pending} keys waiting to be bound; "
                                               "an operator must bind or reject them first")
    conn.execute(insert(keys).values(kid=header.kid, party_id=party_id, algorithm=body["alg"], spki=spki_der,
                                     status="pending_bind", last_ctr=header.ctr, created_at_ms=now))
    conn.execute(insert(key_claims).values(
        kid=header.kid, party_id=party_id, kind="rebind", name=body["name"], address=body["address"],
        birth_date=body.get("birth_date"), bank_account=body.get("bank_account"), status="pending",
        created_at_ms=now))
    return Outcome({"action": "bind_requested", "status": "pending_bind", "member_id": party_id,
                    "role": party.role, "kid": header.kid, "algorithm": body["alg"]})


# --- rotation ------------------------------------------------------------------------------

def rotate(center: "Center", envelope: Envelope) -> dict:
    """POST /v1/keys/rotate: the signed pipeline, or the first answer again for a resend."""
    try:
        return center.submit(envelope, ROTATE)
    except ApiError as error:
        # The old key is no longer active once the rotation is in: a resend
        # (an answer lost on the way) still gets the receipt it was given.
        if error.code not in ("key_rotated", "key_revoked"):
            raise
        answer = _earlier_rotation_answer(center, envelope)
        if answer is None:
            raise
        return answer


def rotate_handler(center: "Center", conn: Connection, signer: "Signer", header: Header, body: dict,
                   now: int) -> "Outcome":
    """Inside the rotate message's transaction (old key verified, its counter advanced)."""
    from center.handlers import Outcome

    proof, proof_header, proof_body, spki_der = _checked_key_proof(center, body, signer, now)
    # The new key must pass the issuer policy an enrollment would (center.issuer_policy).
    certificate = check_enrollment_certificate(center.issuer_policy, spki_der, enrollment_key_cert(proof_body),
                                               now // 1000)
    if conn.execute(select(keys.c.kid).where(keys.c.kid == proof_header.kid)).first() is not None:
        raise ApiError("key_already_enrolled", "the new key is already enrolled; generate another key to rotate to")
    retired = conn.execute(update(keys).where(keys.c.kid == signer.kid, keys.c.status == "active")
                           .values(status="rotated"))
    if retired.rowcount != 1:  # revoked or rotated by a concurrent request after this one's checks
        raise inactive_key_error(conn.execute(select(keys.c.status).where(keys.c.kid == signer.kid)).scalar())
    conn.execute(insert(keys).values(kid=proof_header.kid, party_id=signer.party_id, algorithm=proof_body["alg"],
                                     spki=spki_der, status="active", last_ctr=proof_header.ctr, created_at_ms=now))
    conn.execute(insert(key_claims).values(kid=proof_header.kid, party_id=signer.party_id, kind="rotation",
                                           replaces_kid=signer.kid, status="bound", created_at_ms=now,
                                           decided_at_ms=now, decided_by="key-holder"))
    # The proof's counter is the new key's first: record it as used, like an enrollment's.
    conn.execute(insert(messages).values(
        kid=proof_header.kid, msg_id=proof_header.msg_id, msg_type=proof_header.type, ctr=proof_header.ctr,
        payload_sha256=hashlib.sha256(proof.payload).hexdigest(),
        response=json.dumps({"key_proof_for": header.msg_id}, separators=(",", ":")), created_at_ms=now))
    result = {"action": "key_rotated", "member_id": signer.party_id, "role": signer.role, "old_kid": signer.kid,
              "new_kid": proof_header.kid, "algorithm": proof_body["alg"]}
    if certificate is not None:
        result["key_certificate"] = certificate  # the receipt states what was checked
    return Outcome(result)


def _checked_key_proof(center: "Center", body: dict, signer: "Signer", now: int):
    """The new key's proof of possession: its own signature, this center, fresh, naming the old key."""
    try:
        proof = Envelope.from_json(body["new_key"])
        proof_header, proof_body, spki_der = verify_key_proof(proof)
        check_freshness(proof_header, now // 1000)
    except WireError as error:
        raise ApiError.from_wire(error) from None
    if proof_header.aud != center.center_id:
        raise ApiError("wrong_audience", f"the new key's proof is addressed to {proof_header.aud!r}, not this center")
    if proof_body["replaces"] != signer.kid:
        raise ApiError("key_proof_mismatch", "the new key's proof names another key to replace than the one "
                                             "that signed the rotation")
    if proof_header.kid == signer.kid:
        raise ApiError("key_proof_mismatch", "a key cannot replace itself")
    return proof, proof_header, proof_body, spki_der


def _earlier_rotation_answer(center: "Center", envelope: Envelope) -> dict | None:
    """The stored answer to this very rotation, verified as signed by its (no longer active) key."""
    with center.engine.connect() as conn:
        key = conn.execute(select(keys.c.spki, keys.c.algorithm, keys.c.status)
                           .where(keys.c.kid == envelope.kid)).first()
        if key is None or key.status not in REPLAYABLE_STATUSES:
            return None
        try:
            header, _body = verify_envelope(envelope, spki_der=bytes(key.spki), algorithm=key.algorithm)
        except WireError as error:
            raise ApiError.from_wire(error) from None
        if header.type != ROTATE:
            return None
        row = conn.execute(select(messages.c.payload_sha256, messages.c.response)
                           .where(messages.c.kid == header.kid, messages.c.msg_id == header.msg_id)).first()
    if row is None:
        return None
    if row.payload_sha256 != hashlib.sha256(envelope.payload).hexdigest():
        raise ApiError("message_id_conflict", "this message id was already used for a different message")
    answer = json.loads(row.response)
    return None if "error" in answer else answer
