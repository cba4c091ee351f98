"""Key lifecycle rules: a lost card's new key, recovery proofs, and what an inactive key is told.

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

Rotation (both keys sign one `rotate` message) is a signed message's effect:
center.pipeline.rotation. The statuses it leaves are this module's.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, func, insert, select, update

from center.errors import ApiError, Refusal
from center.storage.db import key_claims, keys, parties, recovery_keys
from paywire import recovery
from paywire.messages import Header

_log = logging.getLogger("center.recovery")

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
    "rotated": (
        "key_rotated",
        "this key was replaced by a newer key of the same account; sign with the new key",
    ),
    "pending_bind": (
        "key_not_bound",
        "this key is not bound to its account yet: an operator must bind it first",
    ),
    "rejected": ("key_rejected", "an operator rejected this key's claim to the account; it can sign nothing"),
}
# A resend of an accepted rotation is answered even though its key is no longer active.
REPLAYABLE_STATUSES = ("rotated", "revoked")


def add_key(
    conn: Connection, header: Header, party_id: str, algorithm: str, spki_der: bytes, status: str, now_ms: int
) -> None:
    """A new key row (enrollment, rebinding, rotation): the counter of the message that brought the key
    (its registration or proof of possession) is its first, so the next one must be higher."""
    conn.execute(
        insert(keys).values(
            kid=header.kid,
            party_id=party_id,
            algorithm=algorithm,
            spki=spki_der,
            status=status,
            last_ctr=header.ctr,
            created_at_ms=now_ms,
        )
    )


def inactive_key_error(status: str | None) -> ApiError:
    assert status != "active", "an active key is not refused for its status"
    if status is None:
        return ApiError("unknown_key", "this key is not enrolled at this center")
    code, message = INACTIVE_KEY_REFUSALS.get(status, INACTIVE_KEY_REFUSALS["revoked"])
    return ApiError(code, message)


# --- rebinding a new key to an existing account (lost card) ---------------------------


def enroll_rebind(conn: Connection, header: Header, body: dict, spki_der: bytes, now_ms: int) -> dict:
    """Record a verified enrollment that claims an existing account, inside the enrollment transaction;
    returns the result its receipt states."""
    party_id = body["rebind"]
    party = conn.execute(
        select(parties.c.id, parties.c.role, parties.c.status).where(parties.c.id == party_id)
    ).first()
    if party is None or party.status != "active":
        raise Refusal("unknown_party", f"no active account {party_id} at this center to bind a new key to")
    if party.role != body["role"]:
        raise Refusal(
            "wrong_role",
            f"account {party_id} belongs to a {party.role}; this enrollment is a {body['role']}'s",
        )
    proof = _checked_recovery_proof(conn, header, body, now_ms)
    if proof is None:
        _require_room_for_unproven_claim(conn, party_id)
    else:
        _supersede_pending_claims(conn, party_id, now_ms)
    add_key(conn, header, party_id, body["alg"], spki_der, "pending_bind", now_ms)
    conn.execute(
        insert(key_claims).values(
            kid=header.kid,
            party_id=party_id,
            kind="rebind",
            name=body["name"],
            address=body["address"],
            birth_date=body.get("birth_date"),
            bank_account=body.get("bank_account"),
            status="pending",
            created_at_ms=now_ms,
            proof=proof,
            recovery_key=body.get("recovery_key"),
        )
    )
    result = {
        "action": "bind_requested",
        "status": "pending_bind",
        "member_id": party_id,
        "role": party.role,
        "kid": header.kid,
        "algorithm": body["alg"],
    }
    if proof is not None:
        result["recovery_verified"] = proof
    if "recovery_key" in body:
        result["recovery_key"] = body["recovery_key"]  # the account's code once the key is bound
    return result


def register_recovery_key(conn: Connection, party_id: str, public_key: str, now_ms: int) -> None:
    """Make this the account's recovery code (a new enrollment, or a claim being bound); the old one ends."""
    codes = recovery_keys.c
    conn.execute(
        update(recovery_keys)
        .where(
            codes.party_id == party_id,
            codes.kind == "code",
            codes.status == "active",
            codes.public_key != public_key,
        )
        .values(status="replaced", used_at_ms=now_ms)
    )
    known = conn.execute(
        select(codes.status).where(codes.party_id == party_id, codes.public_key == public_key)
    ).first()
    if known is None:
        conn.execute(
            insert(recovery_keys).values(
                party_id=party_id, public_key=public_key, kind="code", status="active", created_at_ms=now_ms
            )
        )
    else:  # the same code again (a wallet that reused it): it stays or becomes the active one
        conn.execute(
            update(recovery_keys)
            .where(codes.party_id == party_id, codes.public_key == public_key, codes.kind == "code")
            .values(status="active")
        )


def _checked_recovery_proof(conn: Connection, header: Header, body: dict, now_ms: int) -> str | None:
    """None (no proof given), or 'code' / 'ticket': which of the account's recovery keys signed this claim."""
    proof = body.get("recovery_proof")
    if proof is None:
        return None
    party_id = body["rebind"]
    candidates = conn.execute(
        select(recovery_keys.c.public_key, recovery_keys.c.kind, recovery_keys.c.expires_at_ms)
        .where(recovery_keys.c.party_id == party_id, recovery_keys.c.status == "active")
        .order_by(recovery_keys.c.created_at_ms.desc())
        .limit(MAX_RECOVERY_KEYS_PER_PARTY)
    ).all()
    for row in candidates:
        if row.expires_at_ms is not None and row.expires_at_ms <= now_ms:
            continue
        # aud is this center's id (checked before the transaction): a proof is for one center,
        # account and key.
        if recovery.verify(
            row.public_key, proof, center_id=header.aud, party_id=party_id, new_kid=header.kid
        ):
            if row.kind == "ticket" and not _use_ticket(conn, party_id, row.public_key, header.kid, now_ms):
                continue  # a concurrent claim used it first
            return row.kind
    if WRONG_PROOFS.note(party_id, now_ms) > MAX_WRONG_PROOFS_PER_WINDOW:
        raise ApiError(
            "too_many_recovery_attempts",
            f"too many wrong recovery codes for {party_id} lately; try again in an hour or ask an operator",
            429,
        )
    raise Refusal(
        "wrong_recovery_code",
        f"the recovery code does not match any code or unused ticket of {party_id}: "
        "check it, or ask an operator for a ticket",
        403,
    )


def _use_ticket(conn: Connection, party_id: str, public_key: str, kid: str, now_ms: int) -> bool:
    """One-time: the first claim that proves a ticket uses it up."""
    used = conn.execute(
        update(recovery_keys)
        .where(
            recovery_keys.c.party_id == party_id,
            recovery_keys.c.public_key == public_key,
            recovery_keys.c.status == "active",
        )
        .values(status="used", used_at_ms=now_ms, used_by_kid=kid)
    )
    return used.rowcount == 1


def _require_room_for_unproven_claim(conn: Connection, party_id: str) -> None:
    pending = conn.execute(
        select(func.count())
        .select_from(keys.join(key_claims, key_claims.c.kid == keys.c.kid))
        .where(keys.c.party_id == party_id, keys.c.status == "pending_bind", key_claims.c.proof.is_(None))
    ).scalar_one()
    if pending >= MAX_PENDING_CLAIMS_PER_PARTY:
        raise Refusal(
            "too_many_pending_keys",
            f"account {party_id} already has {pending} unproven keys waiting to be bound; an "
            "operator must bind or reject them first, or give the account's recovery code "
            "(--recovery-code)",
        )


def _supersede_pending_claims(conn: Connection, party_id: str, now_ms: int) -> None:
    """A proven claim ends the account's other pending claims (strangers', or the holder's earlier ones)."""
    superseded = [
        row.kid
        for row in conn.execute(
            select(key_claims.c.kid).where(
                key_claims.c.party_id == party_id,
                key_claims.c.kind == "rebind",
                key_claims.c.status == "pending",
            )
        )
    ]
    if not superseded:
        return
    conn.execute(
        update(keys)
        .where(keys.c.kid.in_(superseded), keys.c.status == "pending_bind")
        .values(status="rejected")
    )
    conn.execute(
        update(key_claims)
        .where(key_claims.c.kid.in_(superseded), key_claims.c.status == "pending")
        .values(status="rejected", decided_at_ms=now_ms, decided_by=SUPERSEDED_BY)
    )


class _WrongProofs:
    """Wrong recovery proofs per account in the current window (this process only; see the limit above)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # party id -> (window start ms, count)

    def note(self, party_id: str, now_ms: int) -> int:
        with self._lock:
            start, count = self._seen.get(party_id, (now_ms, 0))
            if now_ms - start >= WRONG_PROOF_WINDOW_MS:
                start, count = now_ms, 0
            if party_id not in self._seen and len(self._seen) >= MAX_TRACKED_ACCOUNTS:
                self._seen = {p: v for p, v in self._seen.items() if now_ms - v[0] < WRONG_PROOF_WINDOW_MS}
                if len(self._seen) >= MAX_TRACKED_ACCOUNTS:
                    self._seen.clear()  # a flood over this many accounts: start counting afresh
            self._seen[party_id] = (start, count + 1)
            if count + 1 == MAX_WRONG_PROOFS_PER_WINDOW + 1:
                _log.warning(
                    "wrong recovery codes for %s passed %d this hour", party_id, MAX_WRONG_PROOFS_PER_WINDOW
                )
            return count + 1


WRONG_PROOFS = _WrongProofs()
