"""The batch path: many individually signed payments answered in one database transaction.

Each payment is verified, applied and answered on its own, exactly as if it had been sent alone:
same idempotency record, counter, refusal codes, audit entry and center-signed receipt; a resend,
alone or in another batch, gets the same answer. What the payments share is one transaction: the
commit, the audit-head lock and the statements that only append rows are paid once per batch.
A store terminal or gateway uses it directly (POST /v1/payments/batch); center.group_commit uses
it to commit concurrent single payments together. Nothing is answered before the commit.

How the work is ordered, and why it is safe without a savepoint per payment:
1. Duplicates inside the batch are settled in Python first (the same message twice shares one
   answer; a reused message id or counter is refused as it would be alone).
2. One query reads every key's status and every earlier answer.
3. Per payment: advance the counter, then apply it. Every refusal a payment can meet before its
   first ledger write (wrong role, unknown payee, insufficient funds...) leaves only the counter
   advanced, which its recorded refusal needs anyway. The one refusal that can come after a write
   (`balance_limit`, on the credit leg) aborts the batch instead.
4. Rows nothing reads later in the transaction (transfers, payments) are inserted together; the
   audit entries are appended in one go (center.audit.append_many); receipts are signed; the
   answers are stored together.
If the batch meets a concurrent request for the same key or message (a unique violation) or the
abort of step 3, the whole transaction rolls back and each payment is answered alone by the
single-request path, which knows how to find a concurrent winner's answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, insert, select, tuple_
from sqlalchemy.exc import IntegrityError, OperationalError

from center import audit, handlers, ledger
from center.db import accounts, keys, messages
from center.errors import ApiError, Refusal
from center.key_lifecycle import inactive_key_error
from paywire.messages import PAY

MAX_BATCH_ITEMS = 100
# Refusals a handler can raise after it has written (see step 3 above).
REFUSALS_AFTER_WRITES = frozenset({"balance_limit"})
# PostgreSQL: deadlock_detected, serialization_failure.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})

_KEY_STATUSES = select(keys.c.kid, keys.c.status).where(keys.c.kid.in_(bindparam("kids", expanding=True)))
_EARLIER_ANSWERS = select(messages.c.kid, messages.c.msg_id, messages.c.payload_sha256, messages.c.response).where(
    tuple_(messages.c.kid, messages.c.msg_id).in_(bindparam("pairs", expanding=True)))
_STORE_ANSWERS = insert(messages)
_LOCK_KEYS = (select(keys.c.kid).where(keys.c.kid.in_(bindparam("kids", expanding=True)))
              .order_by(keys.c.kid).with_for_update())
_LOCK_ACCOUNTS = (select(accounts.c.id).where(accounts.c.id.in_(bindparam("ids", expanding=True)))
                  .order_by(accounts.c.id).with_for_update())


def error_answer(error: ApiError) -> dict:
    return {"error": {"code": error.code, "message": error.message}, "status": error.status}


class _Abort(Exception):
    """The batch cannot be committed as one; answer each payment alone."""


@dataclass
class _Item:
    request: object  # center.service.Verified
    answer: dict | None = None
    same_as: "_Item | None" = None
    outcome: handlers.Outcome | None = None
    refusal: Refusal | None = None
    now_ms: int = 0


def submit_batch(center, envelopes: list, expected_type: str) -> list[dict]:
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
            answers[index] = error_answer(error)
    for (index, _), answer in zip(verified, answer_verified(center, [request for _, request in verified])):
        answers[index] = answer
    assert all(answer is not None for answer in answers)
    return answers


def answer_verified(center, requests: list) -> list[dict]:
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
        if first is not None:
            if first.request.payload_sha256 == item.request.payload_sha256:
                item.same_as = first
            else:
                item.answer = error_answer(ApiError("message_id_conflict", "this message id was already used for "
                                                                           "a different message"))
            continue
        if (header.kid, header.ctr) in by_counter:
            item.answer = error_answer(ApiError("counter_replayed", "this message counter was already used by "
                                                                    "this key"))
            continue
        by_message[(header.kid, header.msg_id)] = by_counter[(header.kid, header.ctr)] = item
        unique.append(item)
    return unique


def _answer_together(center, conn: Connection, items: list[_Item]) -> None:
    _lock_in_global_order(conn, items)
    pending = _answer_from_records(conn, items)
    deferred = _DeferredInserts(conn)
    for item in pending:
        _apply(center, conn, deferred, item)
    deferred.flush()
    accepted = [item for item in pending if item.outcome is not None]
    if accepted:
        _seal(center, conn, accepted)
    stored = [item for item in pending if item.answer is not None and (item.outcome or item.refusal)]
    if stored:
        conn.execute(_STORE_ANSWERS, [_answer_row(item) for item in stored])


def _lock_in_global_order(conn: Connection, items: list[_Item]) -> None:
    """Lock every key row, then every account row, the batch will update, each in sorted order.

    A single request locks its key row, then its two accounts sorted (center.ledger.move),
    then the audit head. A batch updating rows in arrival order would take buyer, store,
    buyer... and deadlock with a batch in another process; taking them all first, in that
    same global order (keys, then accounts, each sorted; the audit head last), cannot.
    SQLite locks the whole database instead and ignores FOR UPDATE.
    """
    kids = sorted({item.request.header.kid for item in items})
    account_ids = sorted({account for item in items for account in item.request.accounts})
    conn.execute(_LOCK_KEYS, {"kids": kids}).all()
    if account_ids:
        conn.execute(_LOCK_ACCOUNTS, {"ids": account_ids}).all()


def _answer_from_records(conn: Connection, items: list[_Item]) -> list[_Item]:
    """Answer revoked keys and resent messages from the database; return the items still to apply."""
    kids = sorted({item.request.header.kid for item in items})
    statuses = dict(conn.execute(_KEY_STATUSES, {"kids": kids}).all())
    pairs = [(item.request.header.kid, item.request.header.msg_id) for item in items]
    earlier = {(row.kid, row.msg_id): row for row in conn.execute(_EARLIER_ANSWERS, {"pairs": pairs})}
    pending = []
    for item in items:
        header = item.request.header
        if statuses.get(header.kid) != "active":  # revoked, rotated, not bound yet, rejected
            item.answer = error_answer(inactive_key_error(statuses.get(header.kid) or "revoked"))
        elif (header.kid, header.msg_id) in earlier:
            item.answer = _recorded_answer(earlier[(header.kid, header.msg_id)], item.request.payload_sha256)
        else:
            pending.append(item)
    return pending


def _recorded_answer(row, payload_sha256: str) -> dict:
    if row.payload_sha256 != payload_sha256:
        return error_answer(ApiError("message_id_conflict", "this message id was already used for a different "
                                                            "message"))
    response = json.loads(row.response)
    if "error" in response:
        return {"error": response["error"], "status": response["status"]}
    return response


def _apply(center, conn: Connection, deferred: "_DeferredInserts", item: _Item) -> None:
    from center.service import _advance_counter

    item.now_ms = center.clock_ms()
    try:
        _advance_counter(conn, item.request.header, check_unused=False)
    except ApiError as error:  # nothing was written
        item.answer = error_answer(error)
        return
    try:
        item.outcome = item.request.apply(deferred, item.now_ms)
    except Refusal as refusal:
        if refusal.code in REFUSALS_AFTER_WRITES:
            raise _Abort(refusal.code) from None
        item.refusal = refusal
        item.answer = error_answer(refusal)


def _seal(center, conn: Connection, accepted: list[_Item]) -> None:
    """Audit entries for the accepted payments, then their receipts, which name the entries' seqs."""
    seqs = audit.append_many(conn, [
        {"kid": item.request.envelope.kid, "alg": item.request.envelope.alg, "payload": item.request.envelope.payload,
         "signature": item.request.envelope.sig, "msg_type": item.request.header.type,
         "msg_id": item.request.header.msg_id, "action": item.outcome.result, "now_ms": item.now_ms}
        for item in accepted])
    for item, seq in zip(accepted, seqs):
        receipt = center.signer.sign_receipt(request_header=item.request.header, request=item.request.envelope,
                                             result=item.outcome.result, ctr=seq, now_s=item.now_ms // 1000)
        item.answer = {"receipt": receipt.to_json(), **item.outcome.extras}


def _answer_row(item: _Item) -> dict:
    header = item.request.header
    response = item.answer if item.refusal is None else item.refusal.body() | {"status": item.refusal.status}
    return {"kid": header.kid, "msg_id": header.msg_id, "msg_type": header.type, "ctr": header.ctr,
            "payload_sha256": item.request.payload_sha256, "response": json.dumps(response, separators=(",", ":")),
            "created_at_ms": item.now_ms}


def _answer_alone(center, request) -> dict:
    try:
        return center.accept_verified(request)
    except ApiError as error:
        return error_answer(error)


class _DeferredInserts:
    """The handlers' connection during a batch: appends that nothing reads later in the
    transaction (transfer and payment rows) are collected and inserted together by flush();
    every other statement runs at once."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self._rows: dict[int, tuple] = {id(statement): (statement, [])
                                        for statement in (ledger._INSERT_TRANSFER, handlers._INSERT_PAYMENT)}

    def execute(self, statement, parameters=None):
        deferred = self._rows.get(id(statement))
        if deferred is None:
            return self._conn.execute(statement, parameters)
        assert isinstance(parameters, dict)
        deferred[1].append(parameters)
        return None

    def flush(self) -> None:
        for statement, rows in self._rows.values():
            if rows:
                self._conn.execute(statement, rows if len(rows) > 1 else rows[0])
            rows.clear()
