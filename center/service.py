"""The center's domain logic, callable without HTTP.

Every signed request goes through the same steps: verify the signature with
the pinned key and algorithm, check type, audience and freshness, then in one
transaction: answer a resend from the idempotency record, advance the per-key
counter, apply the effect (center.handlers), append the audit entry, sign the
receipt, store the answer. Routes only translate HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Connection, Engine, case, insert, select, update
from sqlalchemy.exc import IntegrityError

from center import audit, funding, handlers
from center.db import keys, messages, parties
from center.errors import ApiError, Refusal
from center.identity import CenterSigner
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import ENROLL, Header, check_freshness
from paywire.verify import verify_enrollment, verify_envelope

# A request can race another with the same key or message id; after a unique
# violation the retry finds the winner's record and answers from it.
MAX_ATTEMPTS = 3
# Counters must rise, but requests signed in order may arrive out of order
# (a store terminal sending concurrently, a batch). A counter is accepted once,
# and only within this window below the highest counter seen for the key.
COUNTER_WINDOW = 4096
# Refusals that can mean "a concurrent copy of this very message won": a copy
# that read "no earlier answer" before the winner committed then meets the
# winner's counter or key. Retried like a unique violation; the retry's first
# step finds the winner's answer. A genuine replay is still refused.
LOST_RACE_CODES = ("counter_replayed", "key_already_enrolled")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Signer:
    """Who signed a request, as the center knows them."""

    kid: str
    party_id: str
    role: str


@dataclass
class Center:
    engine: Engine
    signer: CenterSigner
    currency: str
    webhook_secret: bytes | None = None
    clock_ms: Callable[[], int] = now_ms

    @property
    def center_id(self) -> str:
        return self.signer.center_id

    def enroll(self, envelope: Envelope) -> dict:
        try:
            header, body, spki_der = verify_enrollment(envelope)
        except WireError as error:
            raise ApiError.from_wire(error) from None
        self._check_header(header, ENROLL)

        def apply(conn: Connection, now: int) -> handlers.Outcome:
            return handlers.enroll(conn, header, body, spki_der, now)

        return self._accept(envelope, header, apply, advance_counter=False)

    def submit(self, envelope: Envelope, expected_type: str) -> dict:
        """Any signed request from an enrolled key (top-up, payment, refund...)."""
        key = self._enrolled_key(envelope.kid)
        try:
            header, body = verify_envelope(envelope, spki_der=key.spki, algorithm=key.algorithm)
        except WireError as error:
            raise ApiError.from_wire(error) from None
        self._check_header(header, expected_type)
        signer = Signer(kid=key.kid, party_id=key.party_id, role=key.role)
        handler = handlers.HANDLERS[expected_type]

        def apply(conn: Connection, now: int) -> handlers.Outcome:
            return handler(self, conn, signer, header, body, now)

        return self._accept(envelope, header, apply, advance_counter=True)

    def store_info(self, store_id: str) -> dict:
        """Public facts a buyer's wallet shows before paying: the store's registered name."""
        if not re.fullmatch(r"S-[0-9a-f]{16}", store_id):
            raise ApiError("unknown_payee", f"no store {store_id} at this center")
        with self.engine.connect() as conn:
            store = conn.execute(select(parties.c.id, parties.c.name, parties.c.status)
                                 .where(parties.c.id == store_id, parties.c.role == "store")).first()
        if store is None:
            raise ApiError("unknown_payee", f"no store {store_id} at this center")
        return {"store_id": store.id, "name": store.name, "active": store.status == "active"}

    def decide_topup(self, topup_id: str, decision: str, *, decided_by: str) -> dict:
        return funding.decide_topup(self.engine, topup_id, decision, decided_by=decided_by, now_ms=self.clock_ms())

    def funding_webhook(self, timestamp: str | None, signature: str | None, body: bytes) -> dict:
        if not self.webhook_secret:
            raise ApiError("not_found", "this center has no funding webhook configured", 404)
        call = funding.parse_webhook(self.webhook_secret, timestamp, signature, body, self.clock_ms() // 1000)
        return funding.decide_topup(self.engine, call["topup_id"], call["decision"], decided_by="webhook:funding",
                                    now_ms=self.clock_ms(), expected_amount_minor=call["amount_minor"],
                                    evidence=body, evidence_alg="hmac-sha256")

    def _enrolled_key(self, kid: str):
        with self.engine.connect() as conn:
            key = conn.execute(
                select(keys.c.kid, keys.c.spki, keys.c.algorithm, keys.c.status, keys.c.party_id, parties.c.role)
                .join(parties, parties.c.id == keys.c.party_id).where(keys.c.kid == kid)).first()
        if key is None:
            raise ApiError("unknown_key", "this key is not enrolled at this center")
        if key.status != "active":
            raise ApiError("key_revoked", "this key has been revoked; messages signed by it are refused")
        return key

    def _check_header(self, header: Header, expected_type: str) -> None:
        if header.type != expected_type:
            raise ApiError("wrong_message_type", f"this endpoint takes {expected_type!r} messages, not {header.type!r}")
        if header.aud != self.center_id:
            raise ApiError("wrong_audience", f"message is addressed to {header.aud!r}, not this center ({self.center_id})")
        try:
            check_freshness(header, self.clock_ms() // 1000)
        except WireError as error:
            raise ApiError.from_wire(error) from None

    def _accept(self, envelope: Envelope, header: Header, apply, *, advance_counter: bool) -> dict:
        payload_sha256 = hashlib.sha256(envelope.payload).hexdigest()
        for attempt in range(MAX_ATTEMPTS):
            try:
                return self._accept_once(envelope, header, apply, payload_sha256, advance_counter)
            except Refusal as refusal:
                self._record_refusal(header, payload_sha256, refusal, advance_counter)
                raise
            except IntegrityError:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
            except ApiError as error:
                if error.code not in LOST_RACE_CODES or attempt == MAX_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _accept_once(self, envelope, header, apply, payload_sha256, advance_counter) -> dict:
        with self.engine.begin() as conn:
            earlier = _earlier_answer(conn, header, payload_sha256)
            if earlier is not None:
                return earlier
            now = self.clock_ms()
            if advance_counter:
                _advance_counter(conn, header)
            outcome = apply(conn, now)
            seq = audit.append_envelope(conn, envelope, msg_type=header.type, msg_id=header.msg_id, action=outcome.result,
                               now_ms=now)
            receipt = self.signer.sign_receipt(request_header=header, request=envelope, result=outcome.result,
                                               ctr=seq, now_s=now // 1000)
            response = {"receipt": receipt.to_json(), **outcome.extras}
            _store_answer(conn, header, payload_sha256, response, now)
            return response

    def _record_refusal(self, header: Header, payload_sha256: str, refusal: Refusal, advance_counter: bool) -> None:
        """Make a rule refusal final for this message id (a later resend cannot succeed)."""
        try:
            with self.engine.begin() as conn:
                if _earlier_answer_row(conn, header) is not None:
                    return
                if advance_counter:
                    _advance_counter(conn, header)
                _store_answer(conn, header, payload_sha256, refusal.body() | {"status": refusal.status}, self.clock_ms())
        except (ApiError, IntegrityError):
            pass  # a concurrent request recorded it first, or the counter moved on: the refusal stands anyway


def _advance_counter(conn: Connection, header: Header) -> None:
    """Accept each counter once, within COUNTER_WINDOW below the highest; the update locks the key row."""
    raised = conn.execute(
        update(keys).where(keys.c.kid == header.kid, keys.c.status == "active",
                           keys.c.last_ctr < header.ctr + COUNTER_WINDOW)
        .values(last_ctr=case((keys.c.last_ctr < header.ctr, header.ctr), else_=keys.c.last_ctr)))
    if raised.rowcount != 1:
        status = conn.execute(select(keys.c.status).where(keys.c.kid == header.kid)).scalar_one_or_none()
        if status != "active":
            raise ApiError("key_revoked", "this key has been revoked; messages signed by it are refused")
        raise ApiError("counter_replayed", f"the message counter is more than {COUNTER_WINDOW} below the highest "
                                           "accepted from this key")
    used = conn.execute(select(messages.c.msg_id).where(messages.c.kid == header.kid, messages.c.ctr == header.ctr))
    if used.first() is not None:
        raise ApiError("counter_replayed", "this message counter was already used by this key")


def _earlier_answer_row(conn: Connection, header: Header):
    return conn.execute(select(messages.c.payload_sha256, messages.c.response)
                        .where(messages.c.kid == header.kid, messages.c.msg_id == header.msg_id)).first()


def _earlier_answer(conn: Connection, header: Header, payload_sha256: str) -> dict | None:
    row = _earlier_answer_row(conn, header)
    if row is None:
        return None
    if row.payload_sha256 != payload_sha256:
        raise ApiError("message_id_conflict", "this message id was already used for a different message")
    response = json.loads(row.response)
    if "error" in response:
        error = response["error"]
        raise ApiError(error["code"], error["message"], response["status"])
    return response


def _store_answer(conn: Connection, header: Header, payload_sha256: str, response: dict, now: int) -> None:
    conn.execute(insert(messages).values(
        kid=header.kid, msg_id=header.msg_id, msg_type=header.type, ctr=header.ctr, payload_sha256=payload_sha256,
        response=json.dumps(response, separators=(",", ":")), created_at_ms=now))
