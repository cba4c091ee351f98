"""The rules every signed request meets, written once for the single path (center.pipeline.service)
and the batch path (center.pipeline.batch).

- the counter window: a counter is accepted once, within COUNTER_WINDOW below the highest seen
  for its key (a SQL statement for the single path, `advanced_counter` for the batch's memory);
- earlier answers: a message id is answered once; a resend of the same bytes gets the stored
  answer, other bytes under the same id get `message_id_conflict`;
- answer rows: what is stored under (kid, msg_id), for an answer and for a final refusal;
- signed refusals: a final refusal of verified bytes is signed by the center, each on its own;
- sealing: the audit entries (with the signed bytes), one signed tree head for the group, and
  each receipt: its entry, its inclusion proof and that head (paywire.receipts).
The batch path may write these rows with one statement for many messages; which rows, and which
fields, is decided here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, case, insert, select, update

from center.errors import ApiError
from center.keys.lifecycle import inactive_key_error
from center.ledger import audit, bulk_sql, log_tree
from center.pipeline.types import CenterContext, Outcome
from center.storage.db import keys, messages
from paywire.envelope import Envelope
from paywire.messages import COUNTER_WINDOW, Header
from paywire.receipts import build_log_receipt, build_refusal_payload

# Statements on the request path, built once (see center/ledger/book.py).
# The counter rule in SQL: the key must be active and last_ctr < ctr + COUNTER_WINDOW;
# last_ctr becomes the larger of the two (advanced_counter is the same rule in memory).
_ADVANCE_COUNTER = (
    update(keys)
    .where(
        keys.c.kid == bindparam("k_kid"), keys.c.status == "active", keys.c.last_ctr < bindparam("k_ceiling")
    )
    .values(last_ctr=case((keys.c.last_ctr < bindparam("k_ctr"), bindparam("k_ctr")), else_=keys.c.last_ctr))
)
_KEY_STATUS = select(keys.c.status).where(keys.c.kid == bindparam("k_kid"))
_COUNTER_USED = select(messages.c.msg_id).where(
    messages.c.kid == bindparam("k_kid"), messages.c.ctr == bindparam("k_ctr")
)
_EARLIER_ANSWER = select(messages.c.payload_sha256, messages.c.response).where(
    messages.c.kid == bindparam("k_kid"), messages.c.msg_id == bindparam("k_msg_id")
)
_STORE_ANSWER = insert(messages)
# What a recorded refusal answers with ("refusal": absent when recorded before refusals were signed).
RECORDED_ERROR_FIELDS = ("error", "status", "refusal")


# --- the counter window ----------------------------------------------------------------------


def counter_too_old() -> ApiError:
    return ApiError(
        "counter_replayed",
        f"the message counter is more than {COUNTER_WINDOW} below the highest accepted from this key",
    )


def counter_reused() -> ApiError:
    return ApiError("counter_replayed", "this message counter was already used by this key")


def advanced_counter(last_ctr: int, ctr: int) -> int:
    """The key's highest counter once `ctr` is accepted, or counter_too_old (a reused counter is
    left to the unique index on messages (kid, ctr), when the answer row is written)."""
    if not last_ctr < ctr + COUNTER_WINDOW:
        raise counter_too_old()
    return max(last_ctr, ctr)


def advance_counter(conn: Connection, header: Header, *, check_unused: bool) -> None:
    """Accept each counter once, within COUNTER_WINDOW below the highest; the update locks the key row.

    A counter used before is refused here when `check_unused`, and otherwise by
    the unique index on messages (kid, ctr) when the answer is stored.
    """
    raised = conn.execute(
        _ADVANCE_COUNTER, {"k_kid": header.kid, "k_ctr": header.ctr, "k_ceiling": header.ctr + COUNTER_WINDOW}
    )
    if raised.rowcount != 1:
        status = conn.execute(_KEY_STATUS, {"k_kid": header.kid}).scalar_one_or_none()
        if status != "active":
            raise inactive_key_error(status)
        raise counter_too_old()
    if check_unused and conn.execute(_COUNTER_USED, {"k_kid": header.kid, "k_ctr": header.ctr}).first():
        raise counter_reused()


# --- earlier answers and answer rows ---------------------------------------------------------


def request_sha256(envelope: Envelope) -> str:
    """What an answer row binds a message id to: the hash of the exact signed bytes."""
    return hashlib.sha256(envelope.payload).hexdigest()


def message_id_conflict() -> ApiError:
    return ApiError("message_id_conflict", "this message id was already used for a different message")


def earlier_answer_row(conn: Connection, header: Header):
    """The row stored under this message's (kid, msg_id): payload_sha256 and response, or None."""
    return conn.execute(_EARLIER_ANSWER, {"k_kid": header.kid, "k_msg_id": header.msg_id}).first()


def recorded_answer(row, payload_sha256: str) -> dict:
    """The answer stored in `row` for a resend of these bytes: {"receipt": ...} or an error answer
    ({"error", "status", "refusal"}); message_id_conflict when the row holds other bytes."""
    if row.payload_sha256 != payload_sha256:
        raise message_id_conflict()
    response = json.loads(row.response)
    if "error" in response:
        return {key: response[key] for key in RECORDED_ERROR_FIELDS if key in response}
    return response


def error_answer(error: ApiError) -> dict:
    """An error as an answer row and a batch item hold it: the body sent alone, plus its status."""
    return error.body() | {"status": error.status}


def raise_error_answer(answer: dict) -> dict:
    """`answer` itself, or the ApiError an error answer stands for."""
    if "error" in answer:
        error = answer["error"]
        raise ApiError(error["code"], error["message"], answer["status"], answer.get("refusal"))
    return answer


def answer_row(header: Header, payload_sha256: str, response: dict, now_ms: int) -> dict:
    """The row that answers every later copy of this message (and uses up its counter)."""
    return {
        "kid": header.kid,
        "msg_id": header.msg_id,
        "msg_type": header.type,
        "ctr": header.ctr,
        "payload_sha256": payload_sha256,
        "response": json.dumps(response, separators=(",", ":")),
        "created_at_ms": now_ms,
    }


def refusal_row(header: Header, payload_sha256: str, refusal: ApiError, now_ms: int) -> dict:
    """The row that makes a final refusal the answer to this message id for good."""
    assert refusal.final
    return answer_row(header, payload_sha256, error_answer(refusal), now_ms)


def store_answers(conn: Connection, rows: list[dict]) -> None:
    """Write answer rows; one row is one plain insert, many one executemany."""
    conn.execute(_STORE_ANSWER, rows if len(rows) > 1 else rows[0])


# --- signing: refusals, audit entries and receipts --------------------------------------------


def signed_refusal(center: CenterContext, header: Header, envelope: Envelope, error: ApiError) -> ApiError:
    """`error` with the center's signed refusal of these verified bytes attached, when it is final.

    A "try again" answer (not final) stays unsigned: the wallet keeps the message and resends it.
    """
    if not error.final or error.refusal is not None:
        return error
    now_ms = center.clock_ms()
    payload = build_refusal_payload(
        center_kid=center.signer.kid,
        request_header=header,
        request=envelope,
        code=error.code,
        message=error.message,
        status=error.status,
        now_s=now_ms // 1000,
    )
    error.refusal = center.signer.seal(payload).to_json()
    return error


@dataclass(frozen=True)
class Handled:
    """A verified message whose effect was applied: what its audit entry and receipt are made of."""

    envelope: Envelope
    header: Header
    outcome: Outcome
    now_ms: int


def audit_entry(handled: Handled) -> dict:
    """The audit entry of a handled message: its exact signed bytes and the result it had."""
    envelope, header = handled.envelope, handled.header
    return {
        "kid": envelope.kid,
        "alg": envelope.alg,
        "payload": envelope.payload,
        "signature": envelope.sig,
        "msg_type": header.type,
        "msg_id": header.msg_id,
        "action": handled.outcome.result,
        "now_ms": handled.now_ms,
    }


def seal(center: CenterContext, conn: Connection, handled: list[Handled]) -> list[dict]:
    """Append the audit entries (one head lock for all), sign one tree head for the new size while
    that lock is held (heads follow commit order), and answer each item with its receipt: its
    entry, its inclusion proof at the head's size and the head. One token signature per group.
    Returns the answers, in order: {"receipt": ..., **outcome.extras}."""
    group = audit.prepare_group(conn, [audit_entry(item) for item in handled])
    head = log_tree.next_head(
        group.head,
        tree_size=group.tree.size,
        root_hash=group.tree.root,
        sign_head=center.signer.sign_tree_head,
        now_ms=max(item.now_ms for item in handled),
    )
    # Entries, nodes, the head and the moved head row: one statement on PostgreSQL (two round trips
    # per group with the lock, whatever its size).
    writes = bulk_sql.GroupWrites()
    audit.add_group_writes(group, writes, signed=head)
    log_tree.add_head_writes(head, writes)
    writes.flush(conn)
    tree_head = log_tree.head_document(head)
    answers = []
    for item, seq in zip(handled, group.seqs, strict=True):
        envelope, header = item.envelope, item.header
        receipt = build_log_receipt(
            seq=seq,
            created_at_ms=item.now_ms,
            kid=envelope.kid,
            alg=envelope.alg,
            msg_type=header.type,
            msg_id=header.msg_id,
            action=item.outcome.result,
            proof=group.tree.inclusion_proof(seq - 1),
            tree_head=tree_head,
        )
        answers.append({"receipt": receipt, **item.outcome.extras})
    return answers
