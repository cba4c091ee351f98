"""The money handlers: a member's top-up and payment, a store's refund and payout claim.

Like every handler (center.pipeline.handlers) each runs inside the request's transaction and
raises Refusal for a rule violation. The payment's rules and rows are shared with the batch
path (center.pipeline.batch), which books many payments in memory between one read and one
write of the rows they touch.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, insert, select, update

from center.errors import Refusal
from center.ledger import book as ledger
from center.ledger import bulk_sql
from center.pipeline.types import CenterContext, Outcome, Signer
from center.storage.db import (
    FIRST_OF_ORDER,
    FIRST_OF_ORDER_INDEX,
    parties,
    payments,
    payouts,
    refunds,
    topups,
)
from paywire.messages import Header

# Built once: the payment path runs these on every request (see center/ledger/book.py).
_ACTIVE_STORE = select(parties.c.id, parties.c.name, parties.c.status).where(
    parties.c.id == bindparam("p_id"), parties.c.role == "store"
)
_INSERT_PAYMENT = insert(payments)
# An order is (buyer, store, order_ref); its first payment is the row of the unique partial index
# FIRST_OF_ORDER_INDEX (center.storage.db). Inserting a payment as the first of its order is also
# the lookup (bulk_sql.insert_unless_taken): no statement is added to a payment that is the first
# of its order, and two workers cannot both book an order's first payment.
_FIRST_OF_ORDER_ID = select(payments.c.id).where(
    payments.c.buyer_id == bindparam("p_buyer"),
    payments.c.store_id == bindparam("p_store"),
    payments.c.order_ref == bindparam("p_order_ref"),
    FIRST_OF_ORDER,
)
_LINK_ENTRY = update(payments).where(payments.c.id == bindparam("p_id")).values(audit_seq=bindparam("p_seq"))


def topup(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    require_role(signer, "member", "top up")
    require_currency(center, body)
    topup_id = ledger.new_id(ledger.TOPUP_ID_PREFIX)
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
    payment_id = ledger.new_id(ledger.PAYMENT_ID_PREFIX)
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
    # After the money, as the batch path writes it: accounts are locked before an order's first
    # payment, on both paths (the other order could deadlock two workers paying the same order). A
    # refusal here rolls the money back with the rest of the transaction; audit_seq after the seal.
    _insert_payment(conn, body, payment_row(payment_id, signer, store, body, now_ms, repeat=False))
    return paid(center, payment_id, store, body, balance)


def _insert_payment(conn: Connection, body: dict, row: dict) -> None:
    """Insert the payment as the first of its order, or as a repeat the request says it means;
    duplicate_order otherwise."""
    if bulk_sql.insert_unless_taken(conn, payments, FIRST_OF_ORDER_INDEX, row):
        return
    order = {"p_buyer": row["buyer_id"], "p_store": row["store_id"], "p_order_ref": row["order_ref"]}
    require_meant_repeat(body, row["store_id"], conn.execute(_FIRST_OF_ORDER_ID, order).scalar_one())
    conn.execute(_INSERT_PAYMENT, row | {"repeat": True})


def first_payments(conn: Connection, orders: list[tuple[str, str, str]]) -> dict[tuple, str]:
    """The first payment's id of each of `orders` paid before, by (buyer_id, store_id, order_ref): one
    statement for a batch (bulk_sql.rows_in_index)."""
    columns = ("buyer_id", "store_id", "order_ref", "id")
    rows = bulk_sql.rows_in_index(conn, FIRST_OF_ORDER_INDEX, orders, columns)
    return {(row.buyer_id, row.store_id, row.order_ref): row.id for row in rows}


def require_meant_repeat(body: dict, store_id: str, first_id: str) -> None:
    """A payment of an order paid before as `first_id` (both paths): refused unless its request
    says it is meant ("repeat": true). The message names the first payment, for the wallet to show."""
    if body.get("repeat") is not True:
        raise Refusal(
            "duplicate_order",
            f"order {body['order_ref']!r} to store {store_id} was already paid by this member "
            f"as {first_id}: resend with repeat to pay it again",
        )


def entry_link(outcome: Outcome, answer: dict) -> tuple[str, int] | None:
    """(payment id, audit seq) when `answer` accepted a payment: the payment row names its audit entry
    (payments.audit_seq) so that the store's notice can prove it (center.pipeline.handlers.notices).
    Both paths take the link from here: the batch writes it with the payment, the single path after
    the seal (link_entry)."""
    if outcome.result.get("action") != "paid":
        return None
    return outcome.result["payment_id"], answer["receipt"]["entry"]["seq"]


def link_entry(conn: Connection, outcome: Outcome, answer: dict) -> None:
    """Name the audit entry of a payment inserted before its seal (the single path)."""
    link = entry_link(outcome, answer)
    if link is not None:
        conn.execute(_LINK_ENTRY, {"p_id": link[0], "p_seq": link[1]})


def check_payment(center: CenterContext, signer: Signer, body: dict, store) -> None:
    """Refuse by the rules, before any write; `store` is the payee's row (id, name, status) or None."""
    require_role(signer, "member", "pay")
    require_currency(center, body)
    if store is None or store.status != "active":
        raise Refusal("unknown_payee", f"no active store {body['payee']} at this center")
    if store.name != body["payee_name"]:
        # The buyer confirmed this name on their screen: it must be the store's.
        raise Refusal(
            "payee_name_mismatch",
            f"store {store.id} is registered as {store.name!r}, not {body['payee_name']!r}",
        )


def payment_row(payment_id: str, signer: Signer, store, body: dict, now_ms: int, *, repeat: bool) -> dict:
    """The payment as stored; `repeat`: an earlier payment of its order exists (and it is meant)."""
    return {
        "id": payment_id,
        "buyer_id": signer.party_id,
        "store_id": store.id,
        "amount_minor": body["amount_minor"],
        "refunded_minor": 0,
        "order_ref": body["order_ref"],
        "created_at_ms": now_ms,
        "repeat": repeat,
    }


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
    require_role(signer, "store", "refund")
    require_currency(center, body)
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
    refund_id = ledger.new_id(ledger.REFUND_ID_PREFIX)
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
    require_role(signer, "store", "claim a payout")
    require_currency(center, body)
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


def require_role(signer: Signer, role: str, action: str) -> None:
    if signer.role != role:
        raise Refusal("wrong_role", f"a {signer.role} cannot {action}; only a {role} can")


def require_currency(center: CenterContext, body: dict) -> None:
    if body["currency"] != center.currency:
        raise Refusal(
            "currency_mismatch", f"this center settles in {center.currency}, not {body['currency']}"
        )
