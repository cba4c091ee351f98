"""Confirming or declining top-ups: by an operator, or by a funding webhook.

A top-up credits value only when it is confirmed. The decision is a
conditional update (pending -> confirmed|declined), so a confirmation that
races a decline, or a webhook delivered twice, moves money at most once.
The funding webhook (a credit company or bank calling the center) is
authenticated with HMAC-SHA256 over "<timestamp>.<raw body>" with the secret
in the center's configuration; timestamps older than five minutes are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re

from sqlalchemy import Connection, Engine, select, update

from center.errors import ApiError, Refusal
from center.ledger import audit
from center.ledger import book as ledger
from center.storage.db import topups

DECISIONS = {"confirm": "confirmed", "decline": "declined"}
WEBHOOK_MAX_AGE_S = 300
MAX_REFERENCE_CHARS = 128


def decide_topup(
    engine: Engine,
    topup_id: str,
    decision: str,
    *,
    decided_by: str,
    now_ms: int,
    expected_amount_minor: int | None = None,
    evidence: bytes = b"",
    evidence_alg: str = "none",
) -> dict:
    """Apply an operator's or webhook's decision; repeating the same decision is a no-op."""
    with engine.begin() as conn:
        view = decide_topup_in(
            conn,
            topup_id,
            decision,
            decided_by=decided_by,
            now_ms=now_ms,
            expected_amount_minor=expected_amount_minor,
        )
        if view["repeated"]:
            return view
        if evidence:  # a webhook: the body it authenticated is the record
            audit.append(
                conn,
                kid=decided_by[: audit.MAX_KID_CHARS],
                alg=evidence_alg,
                payload=evidence,
                signature=b"",
                msg_type=f"topup_{decision}",
                msg_id=topup_id,
                action=view,
                now_ms=now_ms,
            )
        else:
            request = {"topup_id": topup_id, "decision": decision, "decided_by": decided_by}
            audit.append_local(
                conn,
                actor=decided_by,
                request=request,
                msg_type=f"topup_{decision}",
                msg_id=topup_id,
                action=view,
                now_ms=now_ms,
            )
        return view


def decide_topup_in(
    conn: Connection,
    topup_id: str,
    decision: str,
    *,
    decided_by: str,
    now_ms: int,
    expected_amount_minor: int | None = None,
) -> dict:
    """The decision inside the caller's transaction, without an audit entry: a signed
    operator request (center.pipeline.operator_actions) is audited with its own signed bytes."""
    if decision not in DECISIONS:
        raise ApiError("invalid_request", f"decision must be one of {', '.join(DECISIONS)}")
    topup = conn.execute(select(topups).where(topups.c.id == topup_id).with_for_update()).first()
    if topup is None:
        raise ApiError("unknown_topup", f"no top-up {topup_id}")
    wanted = DECISIONS[decision]
    if topup.status == wanted:
        return _view(topup.id, topup.member_id, topup.amount_minor, topup.method, wanted, repeated=True)
    if topup.status != "pending":
        raise Refusal("topup_not_pending", f"top-up {topup_id} is already {topup.status}")
    if expected_amount_minor is not None and expected_amount_minor != topup.amount_minor:
        raise Refusal(
            "amount_mismatch", f"top-up {topup_id} is for {topup.amount_minor}, not {expected_amount_minor}"
        )
    _apply(conn, topup, wanted, decided_by, now_ms)
    return _view(topup.id, topup.member_id, topup.amount_minor, topup.method, wanted, repeated=False)


def _apply(conn: Connection, topup, status: str, decided_by: str, now_ms: int) -> None:
    changed = conn.execute(
        update(topups)
        .where(topups.c.id == topup.id, topups.c.status == "pending")
        .values(status=status, decided_at_ms=now_ms, decided_by=decided_by[:64])
    )
    if changed.rowcount != 1:
        raise Refusal("topup_not_pending", f"top-up {topup.id} was decided meanwhile")
    if status == "confirmed":
        ledger.move(
            conn,
            debit=ledger.funding_account(topup.method),
            credit=ledger.party_account(topup.member_id),
            amount_minor=topup.amount_minor,
            kind="topup",
            ref=topup.id,
            now_ms=now_ms,
        )


def _view(
    topup_id: str, member_id: str, amount_minor: int, method: str, status: str, *, repeated: bool
) -> dict:
    return {
        "action": f"topup_{status}",
        "topup_id": topup_id,
        "member_id": member_id,
        "amount_minor": amount_minor,
        "method": method,
        "status": status,
        "repeated": repeated,
    }


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def parse_webhook(
    secret: bytes, timestamp: str | None, signature: str | None, body: bytes, now_s: int
) -> dict:
    """Authenticate and parse a funding webhook call; ApiError on anything off."""
    if (
        not timestamp
        or not signature
        or not timestamp.isascii()
        or not signature.isascii()
        or not timestamp.isdigit()
        or len(timestamp) > 12
    ):
        raise ApiError(
            "bad_webhook_signature", "X-Tokenpay-Timestamp and X-Tokenpay-Signature headers are required"
        )
    expected = webhook_signature(secret, timestamp, body)
    if not hmac.compare_digest(expected, signature.removeprefix("sha256=")):
        raise ApiError("bad_webhook_signature", "the webhook signature does not match")
    if abs(now_s - int(timestamp)) > WEBHOOK_MAX_AGE_S:
        raise ApiError("bad_webhook_signature", "the webhook timestamp is more than five minutes off")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError("invalid_request", "webhook body is not JSON") from None
    if not isinstance(document, dict) or set(document) != {
        "topup_id",
        "decision",
        "amount_minor",
        "reference",
    }:
        raise ApiError(
            "invalid_request", "webhook body needs exactly topup_id, decision, amount_minor, reference"
        )
    amount = document["amount_minor"]
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ApiError("invalid_request", "amount_minor must be a positive integer")
    if (
        not isinstance(document["topup_id"], str)
        or not isinstance(document["reference"], str)
        or len(document["reference"]) > MAX_REFERENCE_CHARS
        or len(document["topup_id"]) > 24
    ):
        raise ApiError("invalid_request", "topup_id and reference must be short strings")
    if not isinstance(document["decision"], str) or document["decision"] not in DECISIONS:
        raise ApiError("invalid_request", "decision must be 'confirm' or 'decline'")
    if not re.fullmatch(r"U-[0-9a-f]{16}", document["topup_id"]):
        raise ApiError("invalid_request", "topup_id is not a top-up id")
    return document
