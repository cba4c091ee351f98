"""Read-only inquiries for the operator console: search, statements, lists.

Plain functions over a SQLAlchemy Connection, no HTTP (center.console.routes serves
them; statistics are center.console.statistics). What they may be asked for (a page, a
time window, ids, a search text) is checked and bounded by center.console.bounds, so no
operator click makes the center read without limit. Lists carry what an operator needs
to act on a row and nothing more: no birth dates, no addresses. Every list has a total
order (a unique column last), so pages never overlap or skip while nothing is added.

Long because every inquiry the console serves is here, each with its query and its row
shape, and its callers (center.console.views, the tests) name them as inquiry.*; what
they share (pages, windows, checks) is already apart in center.console.bounds.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, case, func, literal, or_, select

from center.console.bounds import (
    ALL_TIME,
    FIRST_PAGE,
    MAX_EXPORT_ROWS,
    Page,
    Window,
    check_choice,
    check_party_id,
    check_search_text,
    like_escape,
    page_rows,
)
from center.errors import ApiError
from center.keys.operators import OPERATOR_ROLES
from center.ledger.book import party_account
from center.storage.db import accounts, keys, parties, payments, payouts, refunds, topups, transfers

KIDS_PER_PARTY = 8

PARTY_ROLES = ("member", "store")
TOPUP_STATUSES = ("pending", "confirmed", "declined")
PAYOUT_STATUSES = ("pending", "exported", "settled")
OPERATOR_PREFIX = "operator:"  # decided_by of a decision signed by an operator's token


# --- parties ----------------------------------------------------------------------


def search_parties(conn: Connection, text: str, *, role: str | None = None, page: Page = FIRST_PAGE) -> dict:
    """Members and stores whose id or one of whose key ids starts with `text`, or whose name contains
    every word of it, in any order ("yamada hanako" finds "Hanako Yamada").

    Case-insensitive (SQLite folds ASCII letters only). An empty `text` lists everyone, by name.
    """
    text = check_search_text(text)
    check_choice(role, PARTY_ROLES, "role")
    conditions = [parties.c.role.in_([role] if role else PARTY_ROLES)]
    if text:
        folded = like_escape(text.lower())
        conditions.append(
            or_(
                func.lower(parties.c.id).like(folded + "%", escape="\\"),
                _name_has_words(text),
                parties.c.id.in_(select(keys.c.party_id).where(keys.c.kid.like(folded + "%", escape="\\"))),
            )
        )
    query = (
        select(
            parties.c.id,
            parties.c.role,
            parties.c.name,
            parties.c.status,
            parties.c.created_at_ms,
            accounts.c.balance_minor,
        )
        .join(accounts, accounts.c.id == literal("party:") + parties.c.id)
        .where(*conditions)
        .order_by(parties.c.name, parties.c.id)
    )
    result = page_rows(
        conn,
        query,
        page,
        lambda r: {
            "party_id": r.id,
            "role": r.role,
            "name": r.name,
            "status": r.status,
            "created_at_ms": r.created_at_ms,
            "balance_minor": r.balance_minor,
        },
    )
    kids = _kids_of(conn, [row["party_id"] for row in result["rows"]])
    for row in result["rows"]:
        row["kids"] = kids.get(row["party_id"], [])
    return result


def _name_has_words(text: str):
    """The name contains each whitespace-separated word of `text` (at most 50: the text is at most 100
    characters), as a plain substring, case-insensitively."""
    words = {like_escape(word.lower()) for word in text.split()}
    return and_(*(func.lower(parties.c.name).like("%" + word + "%", escape="\\") for word in sorted(words)))


def _kids_of(conn: Connection, party_ids: list[str]) -> dict[str, list[str]]:
    assert len(party_ids) <= MAX_EXPORT_ROWS
    found: dict[str, list[str]] = {}
    if not party_ids:
        return found
    query = (
        select(keys.c.party_id, keys.c.kid)
        .where(keys.c.party_id.in_(party_ids), keys.c.status == "active")
        .order_by(keys.c.party_id, keys.c.created_at_ms, keys.c.kid)
    )
    for row in conn.execute(query):
        party_kids = found.setdefault(row.party_id, [])
        if len(party_kids) < KIDS_PER_PARTY:
            party_kids.append(row.kid)
    return found


def party_summary(conn: Connection, party_id: str) -> dict:
    """A member's or store's header for their statement; ApiError unknown_party when there is none."""
    check_party_id(party_id, None, "party id")
    row = conn.execute(
        select(
            parties.c.id,
            parties.c.role,
            parties.c.name,
            parties.c.status,
            parties.c.created_at_ms,
            accounts.c.balance_minor,
        )
        .join(accounts, accounts.c.id == literal("party:") + parties.c.id)
        .where(parties.c.id == party_id, parties.c.role.in_(PARTY_ROLES))
    ).first()
    if row is None:
        raise ApiError("unknown_party", f"no member or store {party_id} at this center")
    return {
        "party_id": row.id,
        "role": row.role,
        "name": row.name,
        "status": row.status,
        "created_at_ms": row.created_at_ms,
        "balance_minor": row.balance_minor,
        "kids": _kids_of(conn, [row.id]).get(row.id, []),
    }


# --- statement --------------------------------------------------------------------


def statement(conn: Connection, party_id: str, *, window: Window = ALL_TIME, page: Page = FIRST_PAGE) -> dict:
    """The transfers on a party's account in `window`, oldest first, each with the balance after it.

    The balance before the page's first row (`opening_balance_minor`) is summed
    from every earlier transfer, so each page stands on its own. Transfers in the
    same millisecond are ordered by id, which may differ from their commit order.
    """
    summary = party_summary(conn, party_id)
    account = party_account(party_id)
    signed = case(
        (transfers.c.credit_account == account, transfers.c.amount_minor), else_=-transfers.c.amount_minor
    )
    mine = or_(transfers.c.debit_account == account, transfers.c.credit_account == account)
    in_window = and_(mine, *window.where(transfers.c.created_at_ms))
    order = (transfers.c.created_at_ms, transfers.c.id)
    opening = _sum_before_window(conn, signed, mine, window) + _sum_of_first(
        conn, signed, in_window, order, page.offset
    )
    other = case(
        (transfers.c.debit_account == account, transfers.c.credit_account), else_=transfers.c.debit_account
    )
    # The page first, then the counterparties' names for its rows only: joined on the
    # CASE above, PostgreSQL hashed every account (18 ms at 100,000 members, growing).
    found = (
        select(
            transfers.c.id,
            transfers.c.created_at_ms,
            transfers.c.kind,
            transfers.c.ref,
            signed.label("signed_minor"),
            other.label("counterparty"),
        )
        .where(in_window)
        .order_by(*order)
        .limit(page.limit + 1)
        .offset(page.offset)
        .subquery()
    )
    other_account = accounts.alias("other_account")
    # A payment's order reference, and for a refund the order of the payment it returns money from.
    paid = payments.alias("paid")
    refunded = refunds.alias("refunded")
    refunded_payment = payments.alias("refunded_payment")
    query = (
        select(
            found,
            parties.c.name.label("counterparty_name"),
            func.coalesce(paid.c.order_ref, refunded_payment.c.order_ref).label("order_ref"),
        )
        .join(other_account, other_account.c.id == found.c.counterparty)
        .outerjoin(parties, parties.c.id == other_account.c.party_id)
        .outerjoin(paid, and_(found.c.kind == "payment", paid.c.id == found.c.ref))
        .outerjoin(refunded, and_(found.c.kind == "refund", refunded.c.id == found.c.ref))
        .outerjoin(refunded_payment, refunded_payment.c.id == refunded.c.payment_id)
        .order_by(found.c.created_at_ms, found.c.id)
    )
    rows = conn.execute(query).all()  # one more than the page says whether there is a next one
    running = opening
    shaped = []
    for row in rows[: page.limit]:
        running += row.signed_minor
        shaped.append(
            {
                "transfer_id": row.id,
                "created_at_ms": row.created_at_ms,
                "kind": row.kind,
                "ref": row.ref,
                "counterparty": row.counterparty,
                "counterparty_name": row.counterparty_name or "",
                "order_ref": row.order_ref or "",
                "debit_minor": max(-row.signed_minor, 0),
                "credit_minor": max(row.signed_minor, 0),
                "balance_minor": running,
            }
        )
    return {
        "rows": shaped,
        "limit": page.limit,
        "offset": page.offset,
        "has_more": len(rows) > page.limit,
        "party": summary,
        "opening_balance_minor": opening,
        "closing_balance_minor": running,
    }


def _sum_before_window(conn: Connection, signed, mine, window: Window) -> int:
    if window.from_ms is None:
        return 0
    total = conn.execute(
        select(func.coalesce(func.sum(signed), 0)).where(mine, transfers.c.created_at_ms < window.from_ms)
    ).scalar_one()
    return int(total)


def _sum_of_first(conn: Connection, signed, in_window, order, count: int) -> int:
    if count == 0:
        return 0
    first = select(signed.label("signed_minor")).where(in_window).order_by(*order).limit(count).subquery()
    return int(conn.execute(select(func.coalesce(func.sum(first.c.signed_minor), 0))).scalar_one())


# --- lists ------------------------------------------------------------------------

buyers = parties.alias("buyer")
stores = parties.alias("store")


def _payment_parties(created_at_ms, store_id: str | None, buyer_id: str | None, window: Window) -> list:
    """The filters payments and refunds share: the payment's store and buyer, and the time window."""
    check_party_id(store_id, "store", "store_id")
    check_party_id(buyer_id, "member", "buyer_id")
    conditions = window.where(created_at_ms)
    if store_id:
        conditions.append(payments.c.store_id == store_id)
    if buyer_id:
        conditions.append(payments.c.buyer_id == buyer_id)
    return conditions


def list_payments(
    conn: Connection,
    *,
    store_id: str | None = None,
    buyer_id: str | None = None,
    window: Window = ALL_TIME,
    page: Page = FIRST_PAGE,
) -> dict:
    """Payments, newest first."""
    conditions = _payment_parties(payments.c.created_at_ms, store_id, buyer_id, window)
    query = (
        select(payments, buyers.c.name.label("buyer_name"), stores.c.name.label("store_name"))
        .join(buyers, buyers.c.id == payments.c.buyer_id)
        .join(stores, stores.c.id == payments.c.store_id)
        .where(*conditions)
        .order_by(payments.c.seq.desc())
    )
    return page_rows(
        conn,
        query,
        page,
        lambda r: {
            "payment_id": r.id,
            "created_at_ms": r.created_at_ms,
            "buyer_id": r.buyer_id,
            "buyer_name": r.buyer_name,
            "store_id": r.store_id,
            "store_name": r.store_name,
            "amount_minor": r.amount_minor,
            "refunded_minor": r.refunded_minor,
            "order_ref": r.order_ref,
        },
    )


def list_topups(
    conn: Connection,
    *,
    status: str | None = None,
    member_id: str | None = None,
    window: Window = ALL_TIME,
    page: Page = FIRST_PAGE,
) -> dict:
    """Top-ups: pending ones first, oldest first (the queue to work through), then the rest newest first."""
    check_choice(status, TOPUP_STATUSES, "status")
    check_party_id(member_id, "member", "member_id")
    conditions = window.where(topups.c.created_at_ms)
    if status:
        conditions.append(topups.c.status == status)
    if member_id:
        conditions.append(topups.c.member_id == member_id)
    query = (
        select(topups, parties.c.name.label("member_name"))
        .join(parties, parties.c.id == topups.c.member_id)
        .where(*conditions)
        .order_by(*_topup_order(status))
    )
    result = page_rows(
        conn,
        query,
        page,
        lambda r: {
            "topup_id": r.id,
            "created_at_ms": r.created_at_ms,
            "member_id": r.member_id,
            "member_name": r.member_name,
            "amount_minor": r.amount_minor,
            "method": r.method,
            "status": r.status,
            "decided_at_ms": r.decided_at_ms,
            "decided_by": r.decided_by or "",
        },
    )
    names = _decider_names(conn, [row["decided_by"] for row in result["rows"]])
    for row in result["rows"]:
        row["decided_by_name"] = names.get(row["decided_by"], "")
    return result


def _decider_names(conn: Connection, deciders: list[str]) -> dict[str, str]:
    """decided_by -> the operator's name, for signed decisions ("operator:<party id>"); the page's rows
    only, by primary key (a join on the concatenation would read every party)."""
    assert len(deciders) <= MAX_EXPORT_ROWS
    ids = {who.removeprefix(OPERATOR_PREFIX) for who in deciders if who.startswith(OPERATOR_PREFIX)}
    if not ids:
        return {}
    query = select(parties.c.id, parties.c.name).where(
        parties.c.id.in_(sorted(ids)), parties.c.role.in_(OPERATOR_ROLES)
    )
    return {OPERATOR_PREFIX + row.id: row.name for row in conn.execute(query)}


def _topup_order(status: str | None) -> tuple:
    """Pending first, oldest first, then the rest newest first; with one status, plain columns that
    the index on (status, created_at_ms) serves in order (the CASE form made it sort every top-up)."""
    if status == "pending":
        return topups.c.created_at_ms, topups.c.id
    if status is not None:
        return topups.c.created_at_ms.desc(), topups.c.id
    pending = topups.c.status == "pending"
    return (
        case((pending, 0), else_=1),
        case((pending, topups.c.created_at_ms), else_=-topups.c.created_at_ms),
        topups.c.id,
    )


def list_refunds(
    conn: Connection,
    *,
    store_id: str | None = None,
    buyer_id: str | None = None,
    window: Window = ALL_TIME,
    page: Page = FIRST_PAGE,
) -> dict:
    """Refunds, newest first, with the payment they return money from."""
    conditions = _payment_parties(refunds.c.created_at_ms, store_id, buyer_id, window)
    query = (
        select(
            refunds,
            payments.c.store_id,
            payments.c.buyer_id,
            payments.c.amount_minor.label("paid_minor"),
            buyers.c.name.label("buyer_name"),
            stores.c.name.label("store_name"),
        )
        .join(payments, payments.c.id == refunds.c.payment_id)
        .join(buyers, buyers.c.id == payments.c.buyer_id)
        .join(stores, stores.c.id == payments.c.store_id)
        .where(*conditions)
        .order_by(refunds.c.created_at_ms.desc(), refunds.c.id.desc())
    )
    return page_rows(
        conn,
        query,
        page,
        lambda r: {
            "refund_id": r.id,
            "created_at_ms": r.created_at_ms,
            "payment_id": r.payment_id,
            "store_id": r.store_id,
            "store_name": r.store_name,
            "buyer_id": r.buyer_id,
            "buyer_name": r.buyer_name,
            "amount_minor": r.amount_minor,
            "paid_minor": r.paid_minor,
        },
    )


def list_payouts(
    conn: Connection,
    *,
    store_id: str | None = None,
    status: str | None = None,
    window: Window = ALL_TIME,
    page: Page = FIRST_PAGE,
) -> dict:
    """Payouts, newest first, with the bank account each goes to."""
    check_party_id(store_id, "store", "store_id")
    check_choice(status, PAYOUT_STATUSES, "status")
    conditions = window.where(payouts.c.created_at_ms)
    if store_id:
        conditions.append(payouts.c.store_id == store_id)
    if status:
        conditions.append(payouts.c.status == status)
    query = (
        select(payouts, parties.c.name.label("store_name"))
        .join(parties, parties.c.id == payouts.c.store_id)
        .where(*conditions)
        .order_by(payouts.c.created_at_ms.desc(), payouts.c.id.desc())
    )
    return page_rows(
        conn,
        query,
        page,
        lambda r: {
            "payout_id": r.id,
            "created_at_ms": r.created_at_ms,
            "store_id": r.store_id,
            "store_name": r.store_name,
            "amount_minor": r.amount_minor,
            "bank_account": r.bank_account,
            "status": r.status,
            "batch_id": r.batch_id or "",
            "exported_at_ms": r.exported_at_ms,
            "settled_at_ms": r.settled_at_ms,
        },
    )
