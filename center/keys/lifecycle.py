"""Key lifecycle inside signed requests: a lost card's new key, and rotation.

Rebinding (lost card): the member's new token key enrolls with `rebind` naming
their existing account (center.pipeline.handlers.enroll calls `enroll_rebind`). The key
is recorded as 'pending_bind' for that party (no new party, no new account),
with the identity it gave, and every request it signs is refused with
`key_not_bound` until an operator binds it (center.keys.binding.bind_key), which
needs the lost key revoked first.

Recovery (issue 11.4): anyone can name an account id (it is in every store
notice), so claims without proof are capped per account, and a claim that
proves the account's recovery code or an operator's ticket (paywire.recovery)
is never counted against that cap: it is always recorded, supersedes the
pending claims of others, and is shown to the operator as verified. The
operator still binds it.

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
import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, insert, select, update

from center.storage.db import key_claims, keys, messages, parties, recovery_keys
from center.errors import ApiError, Refusal
from center.keys.issuer_policy import check_enrollment_certificate, enrollment_key_cert
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire import recovery
from paywire.messages import ROTATE, Header, check_freshness
from paywire.verify import verify_envelope, verify_key_proof

_log = logging.getLogger("center.recovery")

if TYPE_CHECKING:
    from center.pipeline.handlers import Outcome
    from center.pipeline.service import Center, Signer

# Each costs the claimant a key generation, but a known member id must not
# collect an unbounded pile of claims for an operator to wade through. Claims
# without a recovery proof only: a proven claim is never refused for these.
MAX_PENDING_CLAIMS_PER_PARTY = 5
# Wrong recovery proofs per account and window, counted in this process. Past
# it, wrong proofs get a 429 and a warning in the log; a right proof is still
# accepted, or strangers could block the holder again by sending wrong codes.
# Guessing is stopped by the code's 125 bits, not by this count.
MAX_WRONG_PROOFS_PER_WINDOW = 10
WRONG_PROOF_WINDOW_MS = 3600 * 1000
MAX_TRACKED_ACCOUNTS = 10_000
# Active recovery keys looked at per claim: one code and a few tickets (center.keys.admin).
MAX_RECOVERY_KEYS_PER_PARTY = 8
SUPERSEDED_BY = "center:recovery-proof"
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
    from center.pipeline.handlers import Outcome

    party_id = body["rebind"]
    party = conn.execute(select(parties.c.id, parties.c.role, parties.c.status)
                         .where(parties.c.id == party_id)).first()
    if party is None or party.status != "active":
        raise Refusal("unknown_party", f"no active account {party_id} at this center to bind a new key to")
    if party.role != body["role"]:
        raise Refusal("wrong_role", f"account {party_id} belongs to a {party.role}; this enrollment is a {body['role']}'s")
    proof = _checked_recovery_proof(conn, header, body, now)
    if proof is None:
        _require_room_for_unproven_claim(conn, party_id)
    else:
        _supersede_pending_claims(conn, party_id, now)
    conn.execute(insert(keys).values(kid=header.kid, party_id=party_id, algorithm=body["alg"], spki=spki_der,
                                     status="pending_bind", last_ctr=header.ctr, created_at_ms=now))
    conn.execute(insert(key_claims).values(
        kid=header.kid, party_id=party_id, kind="rebind", name=body["name"], address=body["address"],
        birth_date=body.get("birth_date"), bank_account=body.get("bank_account"), status="pending",
        created_at_ms=now, proof=proof, recovery_key=body.get("recovery_key")))
    result = {"action": "bind_requested", "status": "pending_bind", "member_id": party_id,
              "role": party.role, "kid": header.kid, "algorithm": body["alg"]}
    if proof is not None:
        result["recovery_verified"] = proof
    if "recovery_key" in body:
        result["recovery_key"] = body["recovery_key"]  # the account's code once the key is bound
    return Outcome(result)


def register_recovery_key(conn: Connection, party_id: str, public_key: str, now: int) -> None:
    """Make this the account's recovery code (a new enrollment, or a claim being bound); the old one ends."""
    codes = recovery_keys.c
    conn.execute(update(recovery_keys).where(codes.party_id == party_id, codes.kind == "code", codes.status == "active",
                                             codes.public_key != public_key)
                 .values(status="replaced", used_at_ms=now))
    known = conn.execute(select(recovery_keys.c.status).where(recovery_keys.c.party_id == party_id,
                                                              recovery_keys.c.public_key == public_key)).first()
    if known is None:
        conn.execute(insert(recovery_keys).values(party_id=party_id, public_key=public_key, kind="code",
                                                  status="active", created_at_ms=now))
    else:  # the same code again (a wallet that reused it): it stays or becomes the active one
        conn.execute(update(recovery_keys).where(codes.party_id == party_id, codes.public_key == public_key,
                                                 codes.kind == "code")
                     .values(status="active"))


def _checked_recovery_proof(conn: Connection, header: Header, body: dict, now: int) -> str | None:
    """None (no proof given), or 'code' / 'ticket': which of the account's recovery keys signed this claim."""
    proof = body.get("recovery_proof")
    if proof is None:
        return None
    party_id = body["rebind"]
    candidates = conn.execute(
        select(recovery_keys.c.public_key, recovery_keys.c.kind, recovery_keys.c.expires_at_ms)
        .where(recovery_keys.c.party_id == party_id, recovery_keys.c.status == "active")
        .order_by(recovery_keys.c.created_at_ms.desc()).limit(MAX_RECOVERY_KEYS_PER_PARTY)).all()
    for row in candidates:
        if row.expires_at_ms is not None and row.expires_at_ms <= now:
            continue
        # aud is this center's id (checked before the transaction): a proof is for one center, account and key.
        if recovery.verify(row.public_key, proof, center_id=header.aud, party_id=party_id, new_kid=header.kid):
            if row.kind == "ticket" and not _use_ticket(conn, party_id, row.public_key, header.kid, now):
                continue  # a concurrent claim used it first
            return row.kind
    if WRONG_PROOFS.note(party_id, now) > MAX_WRONG_PROOFS_PER_WINDOW:
        raise ApiError("too_many_recovery_attempts", f"too many wrong recovery codes for {party_id} lately; "
                                                     "try again in an hour or ask an operator", 429)
    raise Refusal("wrong_recovery_code", f"the recovery code does not match any code or unused ticket of {party_id}: "
                                         "check it, or ask an operator for a ticket", 403)


def _use_ticket(conn: Connection, party_id: str, public_key: str, kid: str, now: int) -> bool:
    """One-time: the first claim that proves a ticket uses it up."""
    used = conn.execute(update(recovery_keys).where(recovery_keys.c.party_id == party_id,
                                                    recovery_keys.c.public_key == public_key,
                                                    recovery_keys.c.status == "active")
                        .values(status="used", used_at_ms=now, used_by_kid=kid))
    return used.rowcount == 1


def _require_room_for_unproven_claim(conn: Connection, party_id: str) -> None:
    pending = conn.execute(
        select(func.count()).select_from(keys.join(key_claims, key_claims.c.kid == keys.c.kid))
        .where(keys.c.party_id == party_id, keys.c.status == "pending_bind", key_claims.c.proof.is_(None))
    ).scalar_one()
    if pending >= MAX_PENDING_CLAIMS_PER_PARTY:
        raise Refusal("too_many_pending_keys", f"account {party_id} already has {pending} unproven keys waiting to be "
                                               "bound; an operator must bind or reject them first, or give the "
                                               "account's recovery code (--recovery-code)")


def _supersede_pending_claims(conn: Connection, party_id: str, now: int) -> None:
    """A proven claim ends the account's other pending claims (strangers', or the holder's earlier ones)."""
    superseded = [row.kid for row in conn.execute(
        select(key_claims.c.kid).where(key_claims.c.party_id == party_id, key_claims.c.kind == "rebind",
                                       key_claims.c.status == "pending"))]
    if not superseded:
        return
    conn.execute(update(keys).where(keys.c.kid.in_(superseded), keys.c.status == "pending_bind")
                 .values(status="rejected"))
    conn.execute(update(key_claims).where(key_claims.c.kid.in_(superseded), key_claims.c.status == "pending")
                 .values(status="rejected", decided_at_ms=now, decided_by=SUPERSEDED_BY))


class _WrongProofs:
    """Wrong recovery proofs per account in the current window (this process only; see the limit above)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # party id -> (window start ms, count)

    def note(self, party_id: str, now: int) -> int:
        with self._lock:
            start, count = self._seen.get(party_id, (now, 0))
            if now - start >= WRONG_PROOF_WINDOW_MS:
                start, count = now, 0
            if party_id not in self._seen and len(self._seen) >= MAX_TRACKED_ACCOUNTS:
                self._seen = {p: v for p, v in self._seen.items() if now - v[0] < WRONG_PROOF_WINDOW_MS}
                if len(self._seen) >= MAX_TRACKED_ACCOUNTS:
                    self._seen.clear()  # a flood over this many accounts: start counting afresh
            self._seen[party_id] = (start, count + 1)
            if count + 1 == MAX_WRONG_PROOFS_PER_WINDOW + 1:
                _log.warning("wrong recovery codes for %s passed %d this hour", party_id, MAX_WRONG_PROOFS_PER_WINDOW)
            return count + 1


WRONG_PROOFS = _WrongProofs()


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
    from center.pipeline.handlers import Outcome

    proof, proof_header, proof_body, spki_der = _checked_key_proof(center, body, signer, now)
    # The new key must pass the issuer policy an enrollment would (center.keys.issuer_policy).
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
