"""What each accepted signed request does, inside the caller's transaction.

Each handler gets the verified header and body and returns an Outcome: the
`result` the center signs into the receipt (and records in the audit entry),
and `extras` sent beside the receipt (the store's notices, each signed on its
own). Handlers raise Refusal for rule violations; the transaction then rolls
back and nothing is changed.

Here: enroll, a store's notices, balance, and HANDLERS, the one table of handlers by type.
The money handlers are in center.pipeline.money; larger types have a module each
(operator_actions, console_login, rotation, account_info).
"""

from __future__ import annotations

import json
import secrets

from sqlalchemy import Connection, insert, select

from center.errors import ApiError, Refusal
from center.keys import lifecycle as key_lifecycle
from center.keys import store_names
from center.keys.operators import OPERATOR_ROLES
from center.ledger import book as ledger
from center.ledger import log_tree
from center.pipeline.account_info import account_info
from center.pipeline.console_login import approve as approve_console_login
from center.pipeline.money import pay, payout, refund, require_role, topup
from center.pipeline.operator_actions import perform as perform_operator_action
from center.pipeline.rotation import rotate_handler
from center.pipeline.types import CenterContext, Handler, Outcome, Signer
from center.storage.db import audit_log, keys, parties, payments, payouts, refunds, topups
from paywire.envelope import Envelope
from paywire.log_entry import entry_fields
from paywire.messages import (
    ACCOUNT_INFO,
    BALANCE,
    CONSOLE_LOGIN,
    NOTICE,
    NOTICES,
    OPERATOR_ACTION,
    PAY,
    PAYOUT,
    REFUND,
    ROTATE,
    TOPUP,
    Header,
    build_payload,
    new_message_id,
)
from paywire.notice_proof import notice_log_item

RECENT_EVENTS = 20
NOTICE_LIFETIME_S = 30 * 24 * 3600


def enroll(conn: Connection, header: Header, body: dict, spki_der: bytes, now_ms: int) -> Outcome:
    holder = conn.execute(
        select(parties.c.role).join(keys, keys.c.party_id == parties.c.id).where(keys.c.kid == header.kid)
    ).first()
    if holder is not None and holder.role in OPERATOR_ROLES:
        raise ApiError(
            "wrong_role", "this key belongs to an operator or auditor; it cannot be a member's or store's"
        )
    if holder is not None:
        raise ApiError(
            "key_already_enrolled", "this key is already enrolled; use a new token key for a new account"
        )
    if "rebind" in body:  # a lost card's new key claiming an existing account: center.keys.lifecycle
        return Outcome(key_lifecycle.enroll_rebind(conn, header, body, spki_der, now_ms))
    role = body["role"]
    party_id = ("M-" if role == "member" else "S-") + secrets.token_hex(8)
    conn.execute(
        insert(parties).values(
            id=party_id,
            role=role,
            name=body["name"],
            address=body["address"],
            birth_date=body.get("birth_date"),
            bank_account=body.get("bank_account"),
            status="active",
            created_at_ms=now_ms,
        )
    )
    key_lifecycle.add_key(conn, header, party_id, body["alg"], spki_der, "active", now_ms)
    ledger.open_party_account(conn, party_id, role, now_ms)
    result = {
        "action": "enrolled",
        "member_id": party_id,
        "role": role,
        "kid": header.kid,
        "algorithm": body["alg"],
    }
    if "recovery_key" in body:  # the wallet's recovery code, for a lost card (center.keys.lifecycle)
        key_lifecycle.register_recovery_key(conn, party_id, body["recovery_key"], now_ms)
        result["recovery_key"] = body["recovery_key"]
    if role == "store" and (resembles := store_names.record_store_name(conn, party_id, body["name"], now_ms)):
        result |= {"name_flagged": True, "resembles": resembles}  # a look-alike name: an operator decides
    return Outcome(result)


def notices(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    require_role(signer, "store", "fetch payment notices")
    rows = conn.execute(
        select(payments)
        .where(payments.c.store_id == signer.party_id, payments.c.seq > body["after"])
        .order_by(payments.c.seq)
        .limit(body["limit"])
    ).all()
    signed = [sign_notice(center, row).to_json() for row in rows]
    last_seq = rows[-1].seq if rows else body["after"]
    extras = {"notices": signed}
    if rows:
        extras["notices_log"] = notices_log(center, conn, rows)
    return Outcome(
        {"action": "notices_sent", "count": len(rows), "after": body["after"], "last_seq": last_seq},
        extras,
    )


def notices_log(center: CenterContext, conn: Connection, rows: list) -> dict:
    """Beside the signed notices, the proof that each payment is in the log (paywire.notice_proof):
    one signed tree head, and per notice the buyer's full PAY entry with its inclusion proof at that
    head's size (one node query per notice, at most a page of notices). The head is the newest one,
    read after the payments: each commit group signs one over its entries, so it covers them; only
    right after the upgrade to tree heads (migration 0012) may none cover them yet, and one is
    signed then. An item is None only for a payment not linked to its entry (payments.audit_seq
    NULL), which the store refuses: a payment must be in the log."""
    seqs = sorted({row.audit_seq for row in rows if row.audit_seq is not None})
    head = log_tree.latest_head(conn)
    if seqs and (head is None or head.tree_size < seqs[-1]):
        head = log_tree.sign_pending(conn, center.signer.sign_tree_head, now_ms=center.clock_ms())
    entries = {}
    if seqs:
        for entry in conn.execute(select(audit_log).where(audit_log.c.seq.in_(seqs))):
            entries[entry.seq] = entry_fields(entry._mapping, json.loads(entry.action))
    if head is None:  # no payment is linked to its entry: nothing to prove
        return {"tree_head": None, "items": [None] * len(rows)}
    items = []
    for row in rows:
        entry = entries.get(row.audit_seq)
        if entry is None:
            items.append(None)
            continue
        proof = log_tree.inclusion_proof(conn, entry["seq"] - 1, head.tree_size)
        items.append(notice_log_item(entry, proof))
    return {"tree_head": log_tree.head_document(head), "items": items}


def balance(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    if signer.role not in ("member", "store"):  # operators and auditors hold no account
        raise Refusal("wrong_role", f"a {signer.role} has no balance; only a member or store has")
    account = ledger.party_account(signer.party_id)
    result = {
        "action": "balance",
        "member_id": signer.party_id,
        "balance_minor": ledger.balance_of(conn, account),
        "currency": center.currency,
    }
    if signer.role == "member":
        result |= _member_events(conn, signer.party_id)
    else:
        result |= _store_events(conn, signer.party_id)
    return Outcome(result)


def _member_events(conn: Connection, member_id: str) -> dict:
    """A member's latest top-ups and refunds received (RECENT_EVENTS of each), newest first."""
    topup_rows = conn.execute(
        select(topups)
        .where(topups.c.member_id == member_id)
        .order_by(topups.c.created_at_ms.desc(), topups.c.id)
        .limit(RECENT_EVENTS)
    ).all()
    refund_rows = conn.execute(
        select(refunds)
        .join(payments, payments.c.id == refunds.c.payment_id)
        .where(payments.c.buyer_id == member_id)
        .order_by(refunds.c.created_at_ms.desc(), refunds.c.id)
        .limit(RECENT_EVENTS)
    ).all()
    return {
        "topups": [
            {"topup_id": r.id, "amount_minor": r.amount_minor, "method": r.method, "status": r.status}
            for r in topup_rows
        ],
        "refunds": [
            {"refund_id": r.id, "payment_id": r.payment_id, "amount_minor": r.amount_minor}
            for r in refund_rows
        ],
    }


def _store_events(conn: Connection, store_id: str) -> dict:
    """A store's latest payouts (RECENT_EVENTS), newest first."""
    rows = conn.execute(
        select(payouts)
        .where(payouts.c.store_id == store_id)
        .order_by(payouts.c.created_at_ms.desc(), payouts.c.id)
        .limit(RECENT_EVENTS)
    )
    return {
        "payouts": [{"payout_id": r.id, "amount_minor": r.amount_minor, "status": r.status} for r in rows]
    }


def sign_notice(center: CenterContext, payment) -> Envelope:
    body = {
        "notice_seq": payment.seq,
        "payment_id": payment.id,
        "store_id": payment.store_id,
        "buyer_id": payment.buyer_id,
        "amount_minor": payment.amount_minor,
        "currency": center.currency,
        "order_ref": payment.order_ref,
        "paid_at_ms": payment.created_at_ms,
    }
    payload = build_payload(
        NOTICE,
        aud=payment.store_id,
        kid=center.signer.kid,
        msg_id=new_message_id(),
        ctr=payment.seq,
        body=body,
        now_s=center.clock_ms() // 1000,
        lifetime_s=NOTICE_LIFETIME_S,
    )
    return center.signer.seal(payload)


# Every signed message type but `enroll` (center.pipeline.service.Center.enroll): its handler.
HANDLERS: dict[str, Handler] = {
    TOPUP: topup,
    PAY: pay,
    REFUND: refund,
    PAYOUT: payout,
    NOTICES: notices,
    BALANCE: balance,
    ROTATE: rotate_handler,
    OPERATOR_ACTION: perform_operator_action,
    CONSOLE_LOGIN: approve_console_login,
    ACCOUNT_INFO: account_info,
}
