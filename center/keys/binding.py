"""Operator decisions on a lost card's new key: bind it to the account it claims, or reject it.

A key enrolled with `rebind` waits as 'pending_bind' (center.keys.lifecycle),
marked when its claim proved the account's recovery code or a ticket.
Binding makes it the party's active key: same member id, balance and
history. It needs the party to have no active key left, so the lost card's
key must be revoked first; one party never has two active keys this way.
Rejecting ends the claim; the key can then sign nothing. Each decision is one
transaction with its audit entry. `*_in` variants run inside a caller's
transaction without the audit entry, for signed operator requests, which the
signed pipeline audits with their own bytes (center.pipeline.operator_actions).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, select, update

from center.errors import ApiError
from center.keys.lifecycle import register_recovery_key
from center.ledger import audit
from center.storage.db import key_claims, keys, parties

MAX_REASON_CHARS = 200
MAX_LISTED_KEYS = 1000
KEY_STATUSES = ("active", "revoked", "pending_bind", "rotated", "rejected")


def bind_key(engine: Engine, kid: str, *, decided_by: str, now_ms: int) -> dict:
    with engine.begin() as conn:
        view = bind_key_in(conn, kid, decided_by=decided_by, now_ms=now_ms)
        if not view["repeated"]:
            _audit(conn, "key_bind", {"kid": kid, "decided_by": decided_by}, view, decided_by, now_ms)
        return view


def reject_key(engine: Engine, kid: str, *, reason: str, decided_by: str, now_ms: int) -> dict:
    with engine.begin() as conn:
        view = reject_key_in(conn, kid, reason=reason, decided_by=decided_by, now_ms=now_ms)
        if not view["repeated"]:
            request = {"kid": kid, "reason": reason, "decided_by": decided_by}
            _audit(conn, "key_reject", request, view, decided_by, now_ms)
        return view


def bind_key_in(conn: Connection, kid: str, *, decided_by: str, now_ms: int) -> dict:
    key, claim = _locked_claim(conn, kid)
    view = {"action": "key_bound", "kid": kid, "member_id": key.party_id, "repeated": False}
    if key.status == "active" and claim.status == "bound":
        return view | {"repeated": True}
    _require_pending(key)
    # Lock the party row: two binds for one party serialize here, so the
    # second sees the first's active key.
    conn.execute(select(parties.c.id).where(parties.c.id == key.party_id).with_for_update()).one()
    active = conn.execute(
        select(keys.c.kid).where(keys.c.party_id == key.party_id, keys.c.status == "active").limit(1)
    ).scalar()
    if active is not None:
        raise ApiError(
            "party_has_active_key",
            f"{key.party_id} still has an active key {active}: revoke it first "
            "(center operator revoke-key) if its card was lost",
        )
    bound = conn.execute(
        update(keys).where(keys.c.kid == kid, keys.c.status == "pending_bind").values(status="active")
    )
    assert bound.rowcount == 1, "the key row is locked and was pending"
    _decide_claim(conn, kid, "bound", decided_by, now_ms)
    if claim.recovery_key is not None:  # the new key's enrollment brought the member's next recovery code
        register_recovery_key(conn, key.party_id, claim.recovery_key, now_ms)
    return view


def reject_key_in(conn: Connection, kid: str, *, reason: str, decided_by: str, now_ms: int) -> dict:
    if not reason.strip() or len(reason) > MAX_REASON_CHARS:
        raise ApiError("invalid_request", f"the reason must be 1 to {MAX_REASON_CHARS} characters")
    key, _claim = _locked_claim(conn, kid)  # called for its check that the key asked to be bound
    view = {
        "action": "key_rejected",
        "kid": kid,
        "member_id": key.party_id,
        "reason": reason,
        "repeated": False,
    }
    if key.status == "rejected":
        return view | {"repeated": True}
    _require_pending(key)
    conn.execute(
        update(keys).where(keys.c.kid == kid, keys.c.status == "pending_bind").values(status="rejected")
    )
    _decide_claim(conn, kid, "rejected", decided_by, now_ms)
    return view


def list_keys(
    engine: Engine, *, party_id: str | None = None, status: str | None = None, limit: int = MAX_LISTED_KEYS
) -> list[dict]:
    """Keys newest first, each with its party and, for a new key, what it claimed."""
    if status is not None and status not in KEY_STATUSES:
        raise ApiError("invalid_request", f"status must be one of {', '.join(KEY_STATUSES)}")
    if not 1 <= limit <= MAX_LISTED_KEYS:
        raise ApiError("invalid_request", f"the limit must be 1 to {MAX_LISTED_KEYS}")
    query = (
        select(
            keys.c.kid,
            keys.c.party_id,
            keys.c.algorithm,
            keys.c.status,
            keys.c.created_at_ms,
            parties.c.role,
            parties.c.name,
            parties.c.address,
            parties.c.birth_date,
            parties.c.bank_account,
            key_claims.c.kind,
            key_claims.c.replaces_kid,
            key_claims.c.status.label("claim_status"),
            key_claims.c.name.label("claimed_name"),
            key_claims.c.address.label("claimed_address"),
            key_claims.c.birth_date.label("claimed_birth_date"),
            key_claims.c.bank_account.label("claimed_bank_account"),
            key_claims.c.decided_by,
            key_claims.c.decided_at_ms,
            key_claims.c.proof,
        )
        .join(parties, parties.c.id == keys.c.party_id)
        .outerjoin(key_claims, key_claims.c.kid == keys.c.kid)
        .order_by(keys.c.created_at_ms.desc(), keys.c.kid)
        .limit(limit)
    )
    if party_id is not None:
        query = query.where(keys.c.party_id == party_id)
    if status is not None:
        query = query.where(keys.c.status == status)
    with engine.connect() as conn:
        return [_key_view(row) for row in conn.execute(query)]


def _key_view(row) -> dict:
    view = {
        "kid": row.kid,
        "member_id": row.party_id,
        "role": row.role,
        "algorithm": row.algorithm,
        "status": row.status,
        "created_at_ms": row.created_at_ms,
        "claim": None,
    }
    if row.kind == "rotation":
        view["claim"] = {"kind": "rotation", "replaces_kid": row.replaces_kid, "status": row.claim_status}
    elif row.kind == "rebind":
        # Side by side, so the operator can check the claimant against the account.
        view["claim"] = {
            "kind": "rebind",
            "status": row.claim_status,
            "decided_by": row.decided_by,
            "decided_at_ms": row.decided_at_ms,
            # 'code' or 'ticket': the claimant proved the account's recovery code or an operator's ticket.
            "recovery_verified": row.proof,
            "claimed": {
                "name": row.claimed_name,
                "address": row.claimed_address,
                "birth_date": row.claimed_birth_date,
                "bank_account": row.claimed_bank_account,
            },
            "registered": {
                "name": row.name,
                "address": row.address,
                "birth_date": row.birth_date,
                "bank_account": row.bank_account,
            },
        }
    return view


def _locked_claim(conn: Connection, kid: str):
    key = conn.execute(
        select(keys.c.kid, keys.c.party_id, keys.c.status).where(keys.c.kid == kid).with_for_update()
    ).first()
    if key is None:
        raise ApiError("key_not_found", f"no enrolled key {kid}", 404)
    claim = conn.execute(
        select(key_claims.c.status, key_claims.c.recovery_key).where(
            key_claims.c.kid == kid, key_claims.c.kind == "rebind"
        )
    ).first()
    if claim is None:
        raise ApiError(
            "key_not_pending", f"key {kid} did not ask to be bound to an account (it is {key.status})"
        )
    return key, claim


def _require_pending(key) -> None:
    if key.status != "pending_bind":
        raise ApiError("key_not_pending", f"key {key.kid} is {key.status}, not waiting to be bound")


def _decide_claim(conn: Connection, kid: str, status: str, decided_by: str, now_ms: int) -> None:
    conn.execute(
        update(key_claims)
        .where(key_claims.c.kid == kid, key_claims.c.status == "pending")
        .values(status=status, decided_at_ms=now_ms, decided_by=decided_by[:64])
    )


def _audit(conn: Connection, msg_type: str, request: dict, view: dict, decided_by: str, now_ms: int) -> None:
    audit.append_local(
        conn,
        actor=decided_by,
        request=request,
        msg_type=msg_type,
        msg_id=request["kid"],
        action=view,
        now_ms=now_ms,
    )
