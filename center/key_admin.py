"""Operator actions on enrolled keys: revoke a lost or compromised key.

A revoked key's history stays (audit entries, payments, receipts); every
message signed by it afterwards is refused with `key_revoked`.
"""

from __future__ import annotations

import rfc8785
from sqlalchemy import Connection, Engine, select, update

from center import audit
from center.db import keys
from center.errors import ApiError


def revoke_key(engine: Engine, kid: str, *, reason: str, decided_by: str, now_ms: int) -> dict:
    with engine.begin() as conn:
        view = revoke_key_in(conn, kid, reason=reason)
        if view["repeated"]:
            return view
        request = {"kid": kid, "reason": reason, "decided_by": decided_by}
        audit.append(conn, kid=decided_by[:64], alg="none", payload=rfc8785.dumps(request), signature=b"",
                     msg_type="key_revoke", msg_id=kid[:64], action=view, now_ms=now_ms)
        return view


def revoke_key_in(conn: Connection, kid: str, *, reason: str) -> dict:
    """The revocation inside the caller's transaction, without an audit entry: a signed
    operator request (center.operator_actions) is audited with its own signed bytes."""
    if len(reason) > 200:
        raise ApiError("invalid_request", "the reason is limited to 200 characters")
    key = conn.execute(select(keys.c.kid, keys.c.party_id, keys.c.status).where(keys.c.kid == kid)
                       .with_for_update()).first()
    if key is None:
        raise ApiError("unknown_key", f"no enrolled key {kid}", 404)
    view = {"action": "key_revoked", "kid": kid, "member_id": key.party_id, "reason": reason,
            "repeated": key.status == "revoked"}
    if key.status != "revoked":
        # Any status: a pending, rotated or rejected key reported lost is revoked too.
        conn.execute(update(keys).where(keys.c.kid == kid, keys.c.status != "revoked").values(status="revoked"))
    return view
