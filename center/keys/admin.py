"""Operator actions on enrolled keys: revoke a lost or compromised key; issue a recovery ticket.

A revoked key's history stays (audit entries, payments, receipts); every
message signed by it afterwards is refused with `key_revoked`.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, func, insert, select, update

from center.errors import ApiError
from center.ledger import audit
from center.storage.db import keys, parties, recovery_keys
from paywire import recovery
from paywire.fields import PARTY_ID_PATTERN

ACCOUNT_ROLES = ("member", "store")


def revoke_key(engine: Engine, kid: str, *, reason: str, decided_by: str, now_ms: int) -> dict:
    with engine.begin() as conn:
        view = revoke_key_in(conn, kid, reason=reason)
        if view["repeated"]:
            return view
        request = {"kid": kid, "reason": reason, "decided_by": decided_by}
        audit.append_local(
            conn,
            actor=decided_by,
            request=request,
            msg_type="key_revoke",
            msg_id=kid,
            action=view,
            now_ms=now_ms,
        )
        return view


def revoke_key_in(conn: Connection, kid: str, *, reason: str) -> dict:
    """The revocation inside the caller's transaction, without an audit entry: a signed
    operator request (center.pipeline.operator_actions) is audited with its own signed bytes."""
    if len(reason) > 200:
        raise ApiError("invalid_request", "the reason is limited to 200 characters")
    key = conn.execute(
        select(keys.c.kid, keys.c.party_id, keys.c.status).where(keys.c.kid == kid).with_for_update()
    ).first()
    if key is None:
        raise ApiError("key_not_found", f"no enrolled key {kid}", 404)
    view = {
        "action": "key_revoked",
        "kid": kid,
        "member_id": key.party_id,
        "reason": reason,
        "repeated": key.status == "revoked",
    }
    if key.status != "revoked":
        # Any status: a pending, rotated or rejected key reported lost is revoked too.
        conn.execute(
            update(keys).where(keys.c.kid == kid, keys.c.status != "revoked").values(status="revoked")
        )
    return view


# --- recovery tickets: for accounts without a recovery code (enrolled before codes, or code lost) ----

TICKET_LIFETIME_MS = 7 * 24 * 3600 * 1000
MAX_OPEN_TICKETS_PER_PARTY = 3


def issue_recovery_ticket(engine: Engine, party_id: str, *, issued_by: str, now_ms: int) -> dict:
    """A one-time recovery code for this account, shown to the operator once; only its public key is kept.

    The operator hands it to the member after checking who they are (as for a code-less claim); the
    member's `wallet enroll --rebind ID --recovery-code TICKET` is then a proven claim.
    """
    if not PARTY_ID_PATTERN.fullmatch(party_id):
        raise ApiError(
            "invalid_request", f"{party_id[:40]!r} is not an account id (M-... or S-... and 16 hex digits)"
        )
    ticket = recovery.new_code()
    public_key = recovery.recovery_key(ticket)
    expires_at_ms = now_ms + TICKET_LIFETIME_MS
    with engine.begin() as conn:
        party = conn.execute(
            select(parties.c.status)
            .where(parties.c.id == party_id, parties.c.role.in_(ACCOUNT_ROLES))
            .with_for_update()
        ).first()
        if party is None or party.status != "active":
            raise ApiError("unknown_party", f"no active member or store account {party_id}", 404)
        open_tickets = conn.execute(
            select(func.count())
            .select_from(recovery_keys)
            .where(
                recovery_keys.c.party_id == party_id,
                recovery_keys.c.kind == "ticket",
                recovery_keys.c.status == "active",
                recovery_keys.c.expires_at_ms > now_ms,
            )
        ).scalar_one()
        if open_tickets >= MAX_OPEN_TICKETS_PER_PARTY:
            raise ApiError(
                "too_many_tickets",
                f"{party_id} already has {open_tickets} unused tickets; wait until they expire or are used",
                409,
            )
        conn.execute(
            insert(recovery_keys).values(
                party_id=party_id,
                public_key=public_key,
                kind="ticket",
                status="active",
                created_at_ms=now_ms,
                expires_at_ms=expires_at_ms,
                issued_by=issued_by[:64],
            )
        )
        # Audited without the ticket: its public key names it.
        view = {
            "action": "recovery_ticket_issued",
            "member_id": party_id,
            "recovery_key": public_key,
            "expires_at_ms": expires_at_ms,
        }
        request = {"party_id": party_id, "decided_by": issued_by}
        audit.append_local(
            conn,
            actor=issued_by,
            request=request,
            msg_type="recovery_ticket",
            msg_id=public_key,
            action=view,
            now_ms=now_ms,
        )
    return view | {"ticket": ticket}
