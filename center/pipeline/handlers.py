"""What each accepted signed request does, inside the caller's transaction.

Each handler gets the verified header and body and returns an Outcome: the
`result` the center signs into the receipt (and records in the audit entry),
and `extras` sent beside the receipt (the store's notices, each signed on its
own). Handlers raise Refusal for rule violations; the transaction then rolls
back and nothing is changed.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Connection, bindparam, insert, select, update

from center.errors import ApiError, Refusal
from center.keys import lifecycle as key_lifecycle
from center.keys import store_names
from center.keys.operators import OPERATOR_ROLES
from center.ledger import book as ledger
from center.pipeline.account_info import account_info
from center.pipeline.console_login import approve as approve_console_login
from center.pipeline.operator_actions import perform as perform_operator_action
from center.pipeline.rotation import rotate_handler
from center.pipeline.types import CenterContext, Handler, Outcome, Signer
from center.storage.db import keys, parties, payments, payouts, refunds, topups
from paywire.envelope import Envelope
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

RECENT_EVENTS = 20
# Built once: the payment path runs these on every request (see center/ledger/book.py).
_ACTIVE_STORE = select(parties.c.id, parties.c.name, parties.c.status).where(
    parties.c.id == bindparam("p_id"), parties.c.role == "store"
)
_INSERT_PAYMENT = insert(payments)
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
    conn.execute(
        insert(keys).values(
            kid=header.kid,
            party_id=party_id,
            algorithm=body["alg"],
            spki=spki_der,
            status="active",
            last_ctr=header.ctr,
            created_at_ms=now_ms,
        )
    )
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


def topup(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    _require_role(signer, "member", "top up")
    _require_currency(center, body)
    topup_id = ledger.new_id("U")
    conn.execute(
        insert(topups).values(
            id=topup_id,
            member_id=signer.party_id,
            amount_minor=body["amount_minor"],
            method=body["method"],
            status="pending",
            created_at_ms=now_ms,
        )
    )
    return Outcome(
        {
            "action": "topup_requested",
            "topup_id": topup_id,
            "status": "pending",
            "amount_minor": body["amount_minor"],
            "currency": center.currency,
            "method": body["method"],
        }
    )


def pay(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    store = conn.execute(_ACTIVE_STORE, {"p_id": body["payee"]}).first()
    check_payment(center, signer, body, store)
    payment_id = ledger.new_id("P")
    amount = body["amount_minor"]
    balance = ledger.move(
        conn,
        debit=ledger.party_account(signer.party_id),
        credit=ledger.party_account(store.id),
        amount_minor=amount,
        kind="payment",
        ref=payment_id,
        now_ms=now_ms,
    )
    conn.execute(_INSERT_PAYMENT, payment_row(payment_id, signer, store, body, now_ms))
    return paid(center, payment_id, store, body, balance)


# The payment's rules and rows, shared with the batch path (center.pipeline.batch), which books many
# payments in memory between one read and one write of the rows they touch.


def check_payment(center: CenterContext, signer: Signer, body: dict, store) -> None:
    """Refuse by the rules, before any write; `store` is the payee's row (id, name, status) or None."""
    _require_role(signer, "member", "pay")
    _require_currency(center, body)
    if store is None or store.status != "active":
        raise Refusal("unknown_payee", f"no active store {body['payee']} at this center")
    if store.name != body["payee_name"]:
        # The buyer confirmed this name on their screen: it must be the store's.
        raise Refusal(
            "payee_name_mismatch",
            f"store {store.id} is registered as {store.name!r}, not {body['payee_name']!r}",
        )


def payment_row(payment_id: str, signer: Signer, store, body: dict, now_ms: int) -> dict:
    return {
        "id": payment_id,
        "buyer_id": signer.party_id,
        "store_id": store.id,
        "amount_minor": body["amount_minor"],
        "refunded_minor": 0,
        "order_ref": body["order_ref"],
        "created_at_ms": now_ms,
    }


def insert_payments(conn: Connection, rows: list[dict]) -> None:
    conn.execute(_INSERT_PAYMENT, rows)


def paid(center: CenterContext, payment_id: str, store, body: dict, balance_minor: int) -> Outcome:
    return Outcome(
        {
            "action": "paid",
            "payment_id": payment_id,
            "store_id": store.id,
            "store_name": store.name,
            "amount_minor": body["amount_minor"],
            "currency": center.currency,
            "order_ref": body["order_ref"],
            "balance_minor": balance_minor,
        }
    )


def refund(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    _require_role(signer, "store", "refund")
    _require_currency(center, body)
    payment = conn.execute(select(payments).where(payments.c.id == body["payment_id"])).first()
    if payment is None:
        raise Refusal("unknown_payment", f"no payment {body['payment_id']}")
    if payment.store_id != signer.party_id:
        raise Refusal("not_your_payment", "only the store that was paid can refund a payment")
    remaining = payment.amount_minor - payment.refunded_minor
    amount = body["amount_minor"] if body["amount_minor"] is not None else remaining
    if amount <= 0 or amount > remaining:
        raise Refusal(
            "refund_exceeds_payment", f"at most {remaining} minor units of this payment can still be refunded"
        )
    # Conditional: two refunds racing cannot together exceed the payment.
    claimed = conn.execute(
        update(payments)
        .where(payments.c.id == payment.id, payments.c.refunded_minor + amount <= payments.c.amount_minor)
        .values(refunded_minor=payments.c.refunded_minor + amount)
    )
    if claimed.rowcount != 1:
        raise Refusal("refund_exceeds_payment", "the payment has meanwhile been refunded")
    refund_id = ledger.new_id("R")
    ledger.move(
        conn,
        debit=ledger.party_account(signer.party_id),
        credit=ledger.party_account(payment.buyer_id),
        amount_minor=amount,
        kind="refund",
        ref=refund_id,
        now_ms=now_ms,
    )
    conn.execute(
        insert(refunds).values(id=refund_id, payment_id=payment.id, amount_minor=amount, created_at_ms=now_ms)
    )
    return Outcome(
        {
            "action": "refunded",
            "refund_id": refund_id,
            "payment_id": payment.id,
            "buyer_id": payment.buyer_id,
            "amount_minor": amount,
            "currency": center.currency,
            "refunded_minor": payment.refunded_minor + amount,
            "balance_minor": ledger.balance_of(conn, ledger.party_account(signer.party_id)),
        }
    )


def payout(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    _require_role(signer, "store", "claim a payout")
    _require_currency(center, body)
    account = ledger.party_account(signer.party_id)
    amount = ledger.balance_of(conn, account)
    if amount <= 0:
        raise Refusal("nothing_to_pay_out", "the store balance is zero; there is nothing to pay out")
    bank_account = conn.execute(
        select(parties.c.bank_account).where(parties.c.id == signer.party_id)
    ).scalar_one()
    payout_id = ledger.new_id(ledger.PAYOUT_ID_PREFIX)
    ledger.move(
        conn,
        debit=account,
        credit=ledger.PAYOUTS_PENDING,
        amount_minor=amount,
        kind="payout",
        ref=payout_id,
        now_ms=now_ms,
    )
    conn.execute(
        insert(payouts).values(
            id=payout_id,
            store_id=signer.party_id,
            amount_minor=amount,
            bank_account=bank_account,
            status="pending",
            created_at_ms=now_ms,
        )
    )
    return Outcome(
        {
            "action": "payout_claimed",
            "payout_id": payout_id,
            "amount_minor": amount,
            "currency": center.currency,
            "bank_account": bank_account,
            "status": "pending",
            "balance_minor": ledger.balance_of(conn, account),
        }
    )


def notices(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    _require_role(signer, "store", "fetch payment notices")
    rows = conn.execute(
        select(payments)
        .where(payments.c.store_id == signer.party_id, payments.c.seq > body["after"])
        .order_by(payments.c.seq)
        .limit(body["limit"])
    ).all()
    signed = [sign_notice(center, row).to_json() for row in rows]
    last_seq = rows[-1].seq if rows else body["after"]
    return Outcome(
        {"action": "notices_sent", "count": len(rows), "after": body["after"], "last_seq": last_seq},
        {"notices": signed},
    )


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


def _require_role(signer: Signer, role: str, action: str) -> None:
    if signer.role != role:
        raise Refusal("wrong_role", f"a {signer.role} cannot {action}; only a {role} can")


def _require_currency(center: CenterContext, body: dict) -> None:
    if body["currency"] != center.currency:
        raise Refusal(
            "currency_mismatch", f"this center settles in {center.currency}, not {body['currency']}"
        )


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
