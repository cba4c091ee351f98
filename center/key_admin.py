"""Operator actions on enrolled keys: revoke a lost or compromised key.

A revoked key's history stays (audit entries, payments, receipts); every
message signed by it afterwards is refused with `key_revoked`.
"""

from __future__ import annotations

import rfc8785
from sqlalchemy import Engine, select, update

from center import audit
from center.db import keys
from center.errors import ApiError


def revoke_key(engine: Engine, kid: str, *, reason: str, decided_by: str, now_ms: int) -> dict:
    if len(reason) > 200:
        raise ApiError("invalid_request", "the reason is limited to 200 characters")
    with engine.begin() as conn:
        key = conn.execute(select(keys.c.kid, keys.c.party_id, keys.c.status).where(keys.c.kid == kid)
                           .with_for_update()).first()
        if key is None:
            raise ApiError("unknown_key", f"no enrolled key {kid}", 404)
        view = {"action": "key_revoked", "kid": kid, "member_id": key.party_id, "reason": reason,
                "repeated": key.status == "revoked"}
        if key.status == "revoked":
            return view
        conn.execute(update(keys).where(keys.c.kid == kid, keys.c.status == "active").values(status="revoked"))
        request = {"kid": kid, "reason": reason, "decided_by": decided_by}
        audit.append(conn, kid=decided_by[:64], alg="none", payload=rfc8785.dumps(request), signature=b"",
                     msg_type="key_revoke", msg_id=kid[:64], action=view, now_ms=now_ms)
        return view
