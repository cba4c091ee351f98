"""The single path's transaction for one verified message (center.pipeline.service.Center).

In one transaction: answer a resend from the idempotency record, advance the key's counter,
apply the effect (center.pipeline.handlers), append the audit entry, sign the receipt, store
the answer (each step's rule: center.pipeline.rules). A final refusal is signed and recorded
in a transaction of its own, since the effect's transaction rolled back. The batch path
(center.pipeline.batch) answers a payment here when its batch cannot commit as one.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError

from center.errors import ApiError
from center.keys.lifecycle import inactive_key_error
from center.pipeline import money, rules
from center.pipeline.types import CenterContext, Outcome, Verified
from center.storage.db import keys, messages
from paywire.envelope import Envelope
from paywire.messages import Header

# A request can race another with the same key or message id; after a unique
# violation the retry finds the winner's record and answers from it.
MAX_ATTEMPTS = 3
# Refusals that can mean "a concurrent copy of this very message won": a copy
# that read "no earlier answer" before the winner committed then meets the
# winner's counter, key or payment (duplicate_order: its insert waited for the
# winner's payment of the same order, then found it committed). Retried like a
# unique violation; the retry's first step finds the winner's answer. A genuine
# replay or a second payment of the order is still refused.
LOST_RACE_CODES = ("counter_replayed", "key_already_enrolled", "duplicate_order")

# The earlier answer with the key's current status, in one statement: a revoked key's resends
# are refused too, and cached key facts are never trusted for status.
_KEY_AND_EARLIER_ANSWER = (
    select(keys.c.status, messages.c.payload_sha256, messages.c.response)
    .select_from(
        keys.outerjoin(
            messages, (messages.c.kid == keys.c.kid) & (messages.c.msg_id == bindparam("k_msg_id"))
        )
    )
    .where(keys.c.kid == bindparam("k_kid"))
)

Apply = Callable[[Connection, int], Outcome]  # (conn, now_ms): the message's effect


def accept_verified(center: CenterContext, request: Verified) -> dict:
    """A verified message from an enrolled key: its answer, or the ApiError (signed when final)."""
    return accept(center, request.envelope, request.header, request.apply, advance_counter=True)


def accept(
    center: CenterContext, envelope: Envelope, header: Header, apply: Apply, *, advance_counter: bool
) -> dict:
    """Answer one verified message; `advance_counter` False for an enrollment (its key is new)."""
    payload_sha256 = rules.request_sha256(envelope)
    for attempt in range(MAX_ATTEMPTS):
        try:
            # The first attempt leaves a reused counter to the unique index on
            # (kid, ctr): one statement less on every request. A retry looks.
            return _accept_once(
                center,
                envelope,
                header,
                apply,
                payload_sha256,
                advance_counter,
                check_counter_unused=attempt > 0,
            )
        except IntegrityError:
            if attempt == MAX_ATTEMPTS - 1:
                raise
        except ApiError as error:
            if error.code not in LOST_RACE_CODES or attempt == MAX_ATTEMPTS - 1:
                refusal = final_refusal(center, envelope, header, payload_sha256, error, advance_counter)
                raise refusal from None
    raise AssertionError("unreachable")


def final_refusal(
    center: CenterContext,
    envelope: Envelope,
    header: Header,
    payload_sha256: str,
    error: ApiError,
    advance_counter: bool,
) -> ApiError:
    """The error to answer with: signed, and recorded when final (a resend gets the same refusal)."""
    if not error.final or error.refusal is not None:  # "try again", or an answer recorded earlier
        return error
    error = rules.signed_refusal(center, header, envelope, error)
    try:
        record_refusal(center, header, payload_sha256, error, advance_counter=advance_counter)
    except ApiError as superseding:  # counter_replayed, key_revoked: refused for that reason instead
        return rules.signed_refusal(center, header, envelope, superseding)
    return error


def record_refusal(
    center: CenterContext, header: Header, payload_sha256: str, refusal: ApiError, *, advance_counter: bool
) -> None:
    """Make a rule refusal final for this message id (a later resend cannot succeed)."""
    try:
        with center.engine.begin() as conn:
            if rules.earlier_answer_row(conn, header) is not None:
                return
            if advance_counter:
                rules.advance_counter(conn, header, check_unused=True)
            rules.store_answers(conn, [rules.refusal_row(header, payload_sha256, refusal, center.clock_ms())])
    except IntegrityError:
        pass  # a concurrent copy of this message (or one with its counter) recorded first: the refusal stands
    # An ApiError here (counter_replayed, key_revoked) supersedes the refusal:
    # the message was not recorded, so it is refused for that reason instead.


def _accept_once(
    center: CenterContext,
    envelope: Envelope,
    header: Header,
    apply: Apply,
    payload_sha256: str,
    advance_counter: bool,
    check_counter_unused: bool,
) -> dict:
    """In one transaction: an earlier answer to the same message, or counter, effect, audit
    entry, signed receipt and stored answer."""
    with center.engine.begin() as conn:
        earlier = _earlier_answer(conn, header, payload_sha256, of_enrolled_key=advance_counter)
        if earlier is not None:
            return earlier
        now_ms = center.clock_ms()
        if advance_counter:
            rules.advance_counter(conn, header, check_unused=check_counter_unused)
        outcome = apply(conn, now_ms)
        [answer] = rules.seal(center, conn, [rules.Handled(envelope, header, outcome, now_ms)])
        money.link_entry(conn, outcome, answer)
        rules.store_answers(conn, [rules.answer_row(header, payload_sha256, answer, now_ms)])
        return answer


def _earlier_answer(
    conn: Connection, header: Header, payload_sha256: str, *, of_enrolled_key: bool
) -> dict | None:
    """The recorded answer to these bytes (an error answer raised as its ApiError), or None."""
    if of_enrolled_key:
        row = conn.execute(_KEY_AND_EARLIER_ANSWER, {"k_kid": header.kid, "k_msg_id": header.msg_id}).first()
        if row is None or row.status != "active":
            raise inactive_key_error(row.status if row is not None else "revoked")
        if row.response is None:
            return None
    else:
        row = rules.earlier_answer_row(conn, header)
        if row is None:
            return None
    # A refusal recorded before refusals were signed has none: final_refusal signs it now.
    return rules.raise_error_answer(rules.recorded_answer(row, payload_sha256))
