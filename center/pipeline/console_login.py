"""The `console_login` message's effect: an operator's token approves a browser's login challenge.

The challenge itself, the browser's polling and the sessions are center.console.auth's; what
happens when the operator signs is the effect of a signed message, so it runs here, inside that
message's transaction (verified key, counter, audit entry, receipt: center.pipeline.service).
"""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from center.errors import ApiError, Refusal
from center.pipeline.operator_actions import require_operator_key
from center.pipeline.types import CenterContext, Outcome, Signer
from center.storage.db import console_challenges
from paywire.bodies import console_client_sha256
from paywire.messages import Header


def recorded_client_sha256(row) -> str:
    """The hash of the client facts recorded with a challenge row, as the operator's wallet signs it."""
    return console_client_sha256(row.challenge, row.client_address, row.user_agent, row.created_at_ms)


def approve(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    """Mark the challenge approved by this operator's key, inside the signed request's transaction."""
    require_operator_key(signer)
    challenge = body["challenge"]
    row = _pending_challenge(conn, challenge, now_ms)
    if body["client_sha256"] != recorded_client_sha256(row):
        raise Refusal(
            "challenge_details_mismatch",
            f"console login {challenge} was asked for by another client than the one this "
            "approval names: nothing was approved; start a new login",
            409,
        )
    approved = conn.execute(
        update(console_challenges)
        .where(
            console_challenges.c.challenge == challenge,
            console_challenges.c.approved_kid.is_(None),
            console_challenges.c.consumed.is_(False),
        )
        .values(approved_kid=signer.kid, approved_operator_id=signer.party_id, approved_at_ms=now_ms)
    )
    if approved.rowcount != 1:
        raise Refusal("unknown_challenge", f"console login {challenge} was approved meanwhile")
    return Outcome(
        {
            "action": "console_login_approved",
            "challenge": challenge,
            "operator_id": signer.party_id,
            "role": signer.role,
            "expires_at_ms": row.expires_at_ms,
        }
    )


def _pending_challenge(conn: Connection, challenge: str, now_ms: int):
    """The challenge's row, locked, if it waits for an approval; else the refusal."""
    row = conn.execute(
        select(console_challenges).where(console_challenges.c.challenge == challenge).with_for_update()
    ).first()
    check_waiting(row, challenge, now_ms)
    return row


def check_waiting(row, challenge: str, now_ms: int) -> None:
    """Refuse a challenge `row` that no longer waits for an approval: one rule for the signed approval
    here and for what the console shows the operator's wallet before it signs. An ApiError, not a
    Refusal, since the console's read is not a signed request; inside the signed approval it is final
    all the same (ApiError.final), so it is signed and recorded like a Refusal."""
    if row is None or row.consumed or row.approved_kid is not None:
        raise ApiError(
            "unknown_challenge", f"no pending console login {challenge}: start a new login in the browser"
        )
    if now_ms >= row.expires_at_ms:
        raise ApiError(
            "challenge_expired", f"console login {challenge} has expired: start a new login in the browser"
        )
