"""What the wallet checks in a verified receipt before recording it: the center's statement
against what the wallet signed and what it knows.

A receipt that verifies against the pinned center key is the center's word, but a center key
in the wrong hands, or a bug, could still state another amount, payee, order or balance than
the request. Each check here names the first field that contradicts; the wallet then records
an alarm instead of the result (token_wallet.wallet).

Balances: a member's balance falls only by the payments its own key signs, and rises by
top-ups confirmed and refunds received, which the wallet may not have seen yet. So after a
payment of A from a known balance B the new balance lies in [B - A, B - A + what may have
been credited meanwhile]: the top-ups still pending here plus what of its own payments has not
been seen refunded. A store's balance rises by payments received, unseen until notices or a
balance query: only the lower bound applies. A balance query's answer resyncs the known balance.
"""

from __future__ import annotations

import re

from paywire.messages import (
    ACCOUNT_INFO,
    BALANCE,
    ENROLL,
    NOTICES,
    OPERATOR_ACTION,
    PAY,
    PAYOUT,
    REFUND,
    TOPUP,
)

PAYMENT_ID = re.compile(r"P-[0-9a-f]{16}")
TOPUP_ID = re.compile(r"U-[0-9a-f]{16}")
REFUND_ID = re.compile(r"R-[0-9a-f]{16}")
PAYOUT_ID = re.compile(r"O-[0-9a-f]{16}")
MEMBER_ID = re.compile(r"M-[0-9a-f]{16}")
STORE_ID = re.compile(r"S-[0-9a-f]{16}")


class Contradiction(Exception):
    """The receipt verified, but says something else than the request or the known balance."""


def check_answer(msg_type: str, request: dict, result: dict, doc: dict, extras: list) -> None:
    """Raise Contradiction naming the first field of `result` (or a notice) that does not fit."""
    check = _CHECKS.get(msg_type)
    if check is not None:
        check(request, result, doc, extras)


def _pay(request: dict, result: dict, doc: dict, _extras: list) -> None:
    _expect(result, "action", "paid")
    for field, signed in (
        ("amount_minor", "amount_minor"),
        ("store_id", "payee"),
        ("store_name", "payee_name"),
        ("order_ref", "order_ref"),
        ("currency", "currency"),
    ):
        _expect(result, field, request[signed])
    _shape(result, "payment_id", PAYMENT_ID)
    _balance_after_debit(result, doc, request["amount_minor"])


def _topup(request: dict, result: dict, _doc: dict, _extras: list) -> None:
    _expect(result, "action", "topup_requested")
    for field in ("amount_minor", "currency", "method"):
        _expect(result, field, request[field])
    _expect(result, "status", "pending")
    _shape(result, "topup_id", TOPUP_ID)


def _refund(request: dict, result: dict, doc: dict, _extras: list) -> None:
    _expect(result, "action", "refunded")
    _expect(result, "payment_id", request["payment_id"])
    _expect(result, "currency", request["currency"])
    if request["amount_minor"] is not None:
        _expect(result, "amount_minor", request["amount_minor"])
    amount = _positive(result, "amount_minor")
    _shape(result, "refund_id", REFUND_ID)
    _shape(result, "buyer_id", MEMBER_ID)
    _balance_after_debit(result, doc, amount)


def _payout(request: dict, result: dict, doc: dict, _extras: list) -> None:
    _expect(result, "action", "payout_claimed")
    _expect(result, "currency", request["currency"])
    _shape(result, "payout_id", PAYOUT_ID)
    _balance_after_debit(result, doc, _positive(result, "amount_minor"))


def _balance(_request: dict, result: dict, doc: dict, _extras: list) -> None:
    _expect(result, "action", "balance")
    _expect(result, "member_id", doc["member_id"])
    if (doc.get("center") or {}).get("currency"):
        _expect(result, "currency", doc["center"]["currency"])
    _non_negative(result, "balance_minor")


def _notices(request: dict, result: dict, doc: dict, extras: list) -> None:
    _expect(result, "action", "notices_sent")
    _expect(result, "after", request["after"])
    _expect(result, "count", len(extras))
    if len(extras) > request["limit"]:
        raise Contradiction(f"{len(extras)} notices for a limit of {request['limit']}")
    last_seq, currency = request["after"], (doc.get("center") or {}).get("currency")
    for item in extras:
        notice = item["notice"]
        if notice["notice_seq"] <= last_seq:
            raise Contradiction(f"notice_seq {notice['notice_seq']} is not after {last_seq}")
        last_seq = notice["notice_seq"]
        if currency:
            _expect(notice, "currency", currency)
        _shape(notice, "payment_id", PAYMENT_ID)
    _expect(result, "last_seq", last_seq)


def _enroll(request: dict, result: dict, doc: dict, _extras: list) -> None:
    rebind = request.get("rebind")
    _expect(result, "action", "bind_requested" if rebind else "enrolled")
    _expect(result, "kid", doc["kid"])
    _expect(result, "role", request["role"])
    _expect(result, "algorithm", request["alg"])
    if rebind:
        _expect(result, "member_id", rebind)
    _shape(result, "member_id", MEMBER_ID if request["role"] == "member" else STORE_ID)


def _operator_action(request: dict, result: dict, _doc: dict, _extras: list) -> None:
    """The action named, and every object the operator signed for (the top-up with its member and
    amount, the key) echoed unchanged: an answer about another top-up or key is not this decision."""
    _expect(result, "operator_action", request["action"])
    for field in ("topup_id", "member_id", "amount_minor", "kid"):
        if field in request["args"]:
            _expect(result, field, request["args"][field])


def _account_info(_request: dict, result: dict, doc: dict, _extras: list) -> None:
    """The account this wallet enrolled, and the key as the center has it: a receipt means the key
    was active when it was answered. Its counter against this wallet's own: token_wallet.account_info."""
    _expect(result, "action", "account_info")
    _expect(result, "party_id", doc["member_id"])
    _expect(result, "role", doc["role"])
    _expect(result, "key_status", "active")
    _positive(result, "highest_counter")


_CHECKS = {
    PAY: _pay,
    TOPUP: _topup,
    REFUND: _refund,
    PAYOUT: _payout,
    BALANCE: _balance,
    NOTICES: _notices,
    ENROLL: _enroll,
    OPERATOR_ACTION: _operator_action,
    ACCOUNT_INFO: _account_info,
}


def _balance_after_debit(result: dict, doc: dict, amount_minor: int) -> None:
    """The balance after this debit, against the last known one (skipped when none is known)."""
    balance = _non_negative(result, "balance_minor")
    known = doc.get("balance_minor")
    if known is None:
        return
    lowest = known - amount_minor
    if balance < lowest:
        raise Contradiction(f"balance {balance} is below the last known {known} minus {amount_minor}")
    credits = possible_credits_minor(doc)
    if credits is not None and balance > lowest + credits:
        raise Contradiction(
            f"balance {balance} is above the last known {known} minus {amount_minor}"
            + (f" plus {credits} that may have been credited meanwhile" if credits else "")
        )


def possible_credits_minor(doc: dict) -> int | None:
    """What may have reached a member's account unseen since the last known balance; None: no bound
    (a store, or a history that does not start at this account's enrollment)."""
    history = doc["history"]
    if doc.get("role") != "member" or not history:
        return None
    first = history[0]
    if first["type"] != ENROLL or first["details"].get("action") != "enrolled":
        return None
    pending = sum(t["amount_minor"] for t in doc["topups"].values() if t["status"] == "pending")
    totals = doc["credit_totals"]  # kept by document.add_history as the history grows
    return pending + max(0, totals["paid_minor"] - totals["refunded_minor"])


def _expect(document: dict, field: str, wanted) -> None:
    stated = document.get(field)
    if stated != wanted or type(stated) is not type(wanted):
        raise Contradiction(f"{field} {_short(stated)} != {_short(wanted)}")


def _shape(document: dict, field: str, pattern: re.Pattern) -> None:
    value = document.get(field)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Contradiction(f"{field} {_short(value)} is not an id of that kind")


def _non_negative(document: dict, field: str) -> int:
    value = document.get(field)
    if type(value) is not int or value < 0:
        raise Contradiction(f"{field} {_short(value)} is not an amount")
    return value


def _positive(document: dict, field: str) -> int:
    value = _non_negative(document, field)
    if value == 0:
        raise Contradiction(f"{field} is zero")
    return value


def _short(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."
