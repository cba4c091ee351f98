"""The batch path: many individually signed payments booked in one database transaction.

Each payment is verified and answered on its own, exactly as if it had been sent alone: same
idempotency record, counter rule, refusal codes, audit entry and center-signed receipt; a resend,
alone or in another batch, gets the same answer. A store terminal or gateway uses it directly
(POST /v1/payments/batch); center.pipeline.group_commit uses it to commit concurrent single payments
together. Nothing is answered before the commit.

Why it is cheap: the statements do not grow with the batch. One transaction
1. settles duplicates inside the batch in Python (the same message twice shares one answer; a
   reused message id or counter is refused as it would be alone);
2. reads, locking in one global order (keys, then accounts, each sorted; the audit head last,
   as a single request does), in two statements: the key rows with the earlier answers, and the
   accounts with their parties (the payees);
3. books each payment in memory, in order, with the same rules as the single path
   (center.pipeline.money.check_payment, center.ledger.book.Book: same checks, same refusals;
   the counter window, earlier answers and conflicts by center.pipeline.rules);
4. writes everything back set-based (center.ledger.bulk_sql; on PostgreSQL counters, balances and
   transfers are one statement, payments and the answers another; SQLite: an executemany per
   table), appends the audit entries at once, signs one tree head, stores the answers
   (center.pipeline.rules.seal and answer_row: the single path's entries, receipts and rows). The
   payments are written after the seal: each names its audit entry (payments.audit_seq), which
   the store's notices prove with an inclusion proof.
A refusal before any booking leaves only the counter advanced, which its recorded refusal needs.
Every refusal of a verified payment that is not "try again" (ApiError.final) is signed by the
center like a receipt (center.pipeline.rules.signed_refusal); a rule refusal is also recorded
under its message id.
`balance_limit` (a credit past 2**53) aborts the batch. On an abort, or when the batch meets a
concurrent request for the same key or message (a unique violation), or PostgreSQL names it a
deadlock victim, the transaction rolls back and each payment is answered alone by the
single-request path, which knows how to find a concurrent winner's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError, OperationalError

from center.errors import ApiError
from center.keys.lifecycle import inactive_key_error
from center.ledger import book as ledger
from center.ledger import bulk_sql
from center.pipeline import money, rules
from center.pipeline.accept import accept_verified
from center.pipeline.types import CenterContext, Outcome, Verified
from center.storage.db import keys, messages
from center.storage.db import payments as payments_table
from paywire.envelope import Envelope
from paywire.messages import PAY

MAX_BATCH_ITEMS = 100
# Refusals a handler can raise after it has written (see step 3 above).
REFUSALS_AFTER_WRITES = frozenset({"balance_limit"})
# PostgreSQL: deadlock_detected, serialization_failure.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})

# Built once (see center/ledger/book.py). Keys are locked sorted, before the accounts (ledger.Book),
# and read with the earlier answers to the batch's message ids in the same round trip. (PostgreSQL:
# should the lock wait for a concurrent request of the same key, the answer it stored may not be in
# this statement's snapshot; the unique index on messages (kid, msg_id) then refuses our answer row,
# the batch rolls back and each payment is answered alone, which finds it.)
_LOCK_KEYS_WITH_ANSWERS = (
    select(
        keys.c.kid,
        keys.c.status,
        keys.c.last_ctr,
        messages.c.msg_id,
        messages.c.payload_sha256,
        messages.c.response,
    )
    .select_from(
        keys.outerjoin(
            messages,
            # kid = and msg_id IN: both columns of the primary key, so an index probe per id
            # whatever the key's history (a (kid, msg_id) IN list here would be a filter over
            # all of the key's messages). A pair from two items (one's kid, another's id) is
            # looked up too and never consulted.
            (messages.c.kid == keys.c.kid) & messages.c.msg_id.in_(bindparam("msg_ids", expanding=True)),
        )
    )
    .where(keys.c.kid.in_(bindparam("kids", expanding=True)))
    .order_by(keys.c.kid)
    .with_for_update(of=keys)
)


class VerifyingCenter(CenterContext, Protocol):
    """What the batch needs of the center beyond a handler's context: its verification step."""

    def verify_request(self, envelope: Envelope, expected_type: str) -> Verified: ...


class _Abort(Exception):
    """The batch cannot be committed as one; answer each payment alone."""


@dataclass(frozen=True)
class _Store:
    id: str
    name: str
    status: str


@dataclass
class _Item:
    request: Verified
    answer: dict | None = None
    same_as: _Item | None = None
    conflict: ApiError | None = None  # reuses a message id or counter of an earlier item in the batch
    outcome: Outcome | None = None
    refusal: ApiError | None = None  # a final refusal by the rules, recorded with the batch
    now_ms: int = 0


def submit_batch(center: VerifyingCenter, envelopes: list[Envelope], expected_type: str) -> list[dict]:
    """One answer per envelope, in order: {"receipt": ...} or {"error": {...}, "status": N}."""
    if len(envelopes) > MAX_BATCH_ITEMS:
        raise ApiError("batch_too_large", f"a batch holds at most {MAX_BATCH_ITEMS} signed messages")
    assert expected_type == PAY, "the batch path takes payments only (see REFUSALS_AFTER_WRITES)"
    answers: list[dict | None] = [None] * len(envelopes)
    verified = []
    for index, envelope in enumerate(envelopes):
        try:
            verified.append((index, center.verify_request(envelope, expected_type)))
        except ApiError as error:
            answers[index] = rules.error_answer(error)
    for (index, _), answer in zip(
        verified, answer_verified(center, [request for _, request in verified]), strict=True
    ):
        answers[index] = answer
    assert all(answer is not None for answer in answers)
    return answers


def answer_verified(center: CenterContext, requests: list[Verified]) -> list[dict]:
    """Answers to verified payment requests, in order, committed together when they can be."""
    assert len(requests) <= MAX_BATCH_ITEMS
    items = [_Item(request) for request in requests]
    unique = _settle_duplicates(items)
    if unique:
        try:
            with center.engine.begin() as conn:
                _answer_together(center, conn, unique)
        except (IntegrityError, _Abort):
            for item in unique:
                item.answer = _answer_alone(center, item.request)
        except OperationalError as error:
            # Not expected (locks are taken in one global order), but a deadlock victim or a
            # serialization failure has committed nothing: answer each payment alone.
            if getattr(error.orig, "sqlstate", None) not in RETRYABLE_SQLSTATES:
                raise
            for item in unique:
                item.answer = _answer_alone(center, item.request)
    for item in items:
        if item.same_as is not None:
            item.answer = item.same_as.answer
    assert all(item.answer is not None for item in items)
    return [item.answer for item in items]


def _settle_duplicates(items: list[_Item]) -> list[_Item]:
    by_message: dict[tuple, _Item] = {}
    by_counter: dict[tuple, _Item] = {}
    unique = []
    for item in items:
        header = item.request.header
        first = by_message.get((header.kid, header.msg_id))
        if first is not None and first.request.payload_sha256 == item.request.payload_sha256:
            item.same_as = first
            continue
        # Refused, but only after the checks a single request meets first (key status, earlier answer).
        if first is not None:
            item.conflict = rules.message_id_conflict()
        elif (header.kid, header.ctr) in by_counter:
            item.conflict = rules.counter_reused()
        else:
            by_message[(header.kid, header.msg_id)] = by_counter[(header.kid, header.ctr)] = item
        unique.append(item)
    return unique


def _answer_together(center: CenterContext, conn: Connection, items: list[_Item]) -> None:
    key_rows = conn.execute(
        _LOCK_KEYS_WITH_ANSWERS,
        {
            "kids": sorted({item.request.header.kid for item in items}),
            "msg_ids": sorted({item.request.header.msg_id for item in items}),
        },
    ).all()
    counters = _Counters(key_rows)
    earlier = {(row.kid, row.msg_id): row for row in key_rows if row.msg_id is not None}
    book, account_rows = ledger.Book.lock(
        conn,
        [
            ledger.party_account(party)
            for item in items
            for party in (item.request.signer.party_id, item.request.body["payee"])
        ],
    )
    # The payees that are stores: (id, name, status), as money.check_payment reads them.
    stores = {
        row.party_id: _Store(row.party_id, row.name, row.status)
        for row in account_rows
        if row.role == "store"
    }
    orders = _first_payments(conn, items)
    payments = []
    for item in items:
        _book_one(center, item, counters, earlier, stores, book, orders, payments)
    # Counters, balances and transfers: one statement on PostgreSQL (bulk_sql.GroupWrites).
    writes = bulk_sql.GroupWrites()
    counters.write(writes)
    book.write(writes)
    writes.flush(conn)
    accepted = [item for item in items if item.outcome is not None]
    audit_seqs: dict[str, int] = {}
    if accepted:
        handled = [rules.Handled(i.request.envelope, i.request.header, i.outcome, i.now_ms) for i in accepted]
        for item, answer in zip(accepted, rules.seal(center, conn, handled), strict=True):
            item.answer = answer
            link = money.entry_link(item.outcome, answer)
            assert link is not None, "the batch accepts payments only"
            audit_seqs[link[0]] = link[1]
    stored = [item for item in items if item.outcome is not None or item.refusal is not None]
    # Payments (after the seal: they carry their entry's seq) and the rows rules.store_answers would
    # write (rules.answer_row, refusal_row): one statement on PostgreSQL.
    writes.insert(payments_table, [row | {"audit_seq": audit_seqs[row["id"]]} for row in payments])
    writes.insert(messages, [_answer_row(item) for item in stored])
    writes.flush(conn)


def _first_payments(conn: Connection, items: list[_Item]) -> dict[tuple, str]:
    """The first payment's id of each order the batch pays, by (buyer_id, store_id, order_ref).

    Read after the accounts are locked: a concurrent batch or request paying the same buyer has
    committed by then, and its payment is seen (READ COMMITTED reads what committed before each
    statement). The unique index FIRST_OF_ORDER_INDEX stays the backstop: a payment it refuses
    rolls the batch back, and the single path answers it (duplicate_order)."""
    return money.first_payments(conn, sorted({_order(item.request) for item in items}))


def _order(request: Verified) -> tuple[str, str, str]:
    return request.signer.party_id, request.body["payee"], request.body["order_ref"]


def _book_one(
    center: CenterContext,
    item: _Item,
    counters: _Counters,
    earlier: dict,
    stores: dict,
    book,
    orders: dict[tuple, str],
    payments: list,
) -> None:
    """One payment, as center.pipeline.service answers it alone: key status, earlier answer, counter,
    rules, its order's first payment, money. `orders` gains the first payment of each new order, so
    a second payment of it in this batch is refused as a second one sent later would be."""
    header, signer, body = item.request.header, item.request.signer, item.request.body

    def refused(error: ApiError) -> dict:  # final for these bytes by nature; not recorded
        return rules.error_answer(rules.signed_refusal(center, header, item.request.envelope, error))

    status = counters.status(header.kid)
    if status != "active":  # revoked, rotated, not bound yet, rejected
        item.answer = refused(inactive_key_error(status or "revoked"))
        return
    if (header.kid, header.msg_id) in earlier:
        try:
            item.answer = rules.raise_error_answer(
                rules.recorded_answer(earlier[(header.kid, header.msg_id)], item.request.payload_sha256)
            )
        except ApiError as error:  # a recorded refusal (signed now if it was recorded unsigned), a conflict
            item.answer = refused(error)
        return
    if item.conflict is not None:
        item.answer = refused(item.conflict)
        return
    try:
        counters.advance(header)
    except ApiError as error:
        item.answer = refused(error)
        return
    item.now_ms = center.clock_ms()
    store = stores.get(body["payee"])
    try:
        money.check_payment(center, signer, body, store)
        order = (signer.party_id, store.id, body["order_ref"])
        first_id = orders.get(order)
        if first_id is not None:
            money.require_meant_repeat(body, store.id, first_id)
        payment_id = ledger.new_id("P")
        balance_minor = book.move(
            debit=ledger.party_account(signer.party_id),
            credit=ledger.party_account(store.id),
            amount_minor=body["amount_minor"],
            kind="payment",
            ref=payment_id,
            now_ms=item.now_ms,
        )
    except ApiError as refusal:
        if refusal.code in REFUSALS_AFTER_WRITES or not refusal.final:
            raise _Abort(refusal.code) from None
        item.refusal = rules.signed_refusal(center, header, item.request.envelope, refusal)
        item.answer = rules.error_answer(item.refusal)
        return
    if first_id is None:
        orders[order] = payment_id
    payments.append(
        money.payment_row(payment_id, signer, store, body, item.now_ms, repeat=first_id is not None)
    )
    item.outcome = money.paid(center, payment_id, store, body, balance_minor)


class _Counters:
    """Key rows of the batch, locked (sorted) and advanced in memory by the counter rule
    (center.pipeline.rules.advanced_counter, the single path's statement in memory)."""

    def __init__(self, rows: list):
        self._status = {row.kid: row.status for row in rows}
        self._last_ctr = {row.kid: row.last_ctr for row in rows}
        self._changed: set[str] = set()

    def status(self, kid: str) -> str | None:
        return self._status.get(kid)

    def advance(self, header) -> None:
        """Accept the counter within the window below the highest; a reused one is left to the unique
        index on messages (kid, ctr), as on the single path's first attempt."""
        last_ctr = rules.advanced_counter(self._last_ctr[header.kid], header.ctr)
        if last_ctr != self._last_ctr[header.kid]:
            self._last_ctr[header.kid] = last_ctr
            self._changed.add(header.kid)

    def write(self, writes: bulk_sql.GroupWrites) -> None:
        writes.update(keys, "kid", "last_ctr", {kid: self._last_ctr[kid] for kid in self._changed})


def _answer_row(item: _Item) -> dict:
    request = item.request
    if item.refusal is not None:
        return rules.refusal_row(request.header, request.payload_sha256, item.refusal, item.now_ms)
    return rules.answer_row(request.header, request.payload_sha256, item.answer, item.now_ms)


def _answer_alone(center: CenterContext, request: Verified) -> dict:
    try:
        return accept_verified(center, request)
    except ApiError as error:
        return rules.error_answer(error)
