"""The center's domain logic, callable without HTTP.

Every signed request goes through the same steps: verify the signature with
the pinned key and algorithm, check type, audience and freshness, then in one
transaction: answer a resend from the idempotency record, advance the per-key
counter, apply the effect (center.pipeline.handlers), append the audit entry, sign the
receipt, store the answer. Routes only translate HTTP.

Refusals: once a message's signature verified, a refusal that is not "try
again" (ApiError.final) is final for its message id: it is recorded like an
answer (a resend of the same bytes gets it again, never a later success), and
the center signs it like a receipt, binding the request's hash, so a wallet
can tell it from an impostor's. A message that did not verify (unknown key,
bad signature, malformed) burns nothing and gets an unsigned error.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import Connection, Engine, bindparam, case, insert, select, update
from sqlalchemy.exc import IntegrityError

from center.ledger import audit

from center.ledger import funding

from center.pipeline import handlers

from center.keys import store_names
from center.storage.db import keys, messages, parties
from center.errors import ApiError
from center.keys.identity import CenterSigner
from center.keys.lifecycle import inactive_key_error
from center.keys.issuer_policy import IssuerPolicy, check_enrollment_certificate, enrollment_key_cert
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import ENROLL, PAY, Header, check_freshness
from paywire.receipts import build_refusal_payload
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
# Refusals met before the transaction that are not final by nature, so recorded there: a key
# not bound yet may be bound later, and the same bytes must then get the same refusal.
RECORDED_BEFORE_ACCEPT = frozenset({"key_not_bound"})
# Enrolled keys a process remembers (spki, algorithm, party, role never change
# for a kid). Status does change (revocation), and is not trusted from here:
# the counter update inside each request's transaction requires status
# 'active', so a key revoked by another process is refused all the same.
MAX_CACHED_KEYS = 100_000

# Statements on the request path, built once (see center/ledger.py).
_KEY = (select(keys.c.kid, keys.c.spki, keys.c.algorithm, keys.c.status, keys.c.party_id, parties.c.role)
        .join(parties, parties.c.id == keys.c.party_id).where(keys.c.kid == bindparam("k_kid")))
_KEY_STATUS = select(keys.c.status).where(keys.c.kid == bindparam("k_kid"))
_ADVANCE_COUNTER = (update(keys)
                    .where(keys.c.kid == bindparam("k_kid"), keys.c.status == "active",
                           keys.c.last_ctr < bindparam("k_ceiling"))
                    .values(last_ctr=case((keys.c.last_ctr < bindparam("k_ctr"), bindparam("k_ctr")),
                                          else_=keys.c.last_ctr)))
_COUNTER_USED = select(messages.c.msg_id).where(messages.c.kid == bindparam("k_kid"),
                                                messages.c.ctr == bindparam("k_ctr"))
_EARLIER_ANSWER = select(messages.c.payload_sha256, messages.c.response).where(
    messages.c.kid == bindparam("k_kid"), messages.c.msg_id == bindparam("k_msg_id"))
# The same, with the key's current status: a revoked key's resends are refused
# too, and the cached key facts are never trusted for status.
_KEY_AND_EARLIER_ANSWER = (select(keys.c.status, messages.c.payload_sha256, messages.c.response)
                           .select_from(keys.outerjoin(messages, (messages.c.kid == keys.c.kid)
                                                       & (messages.c.msg_id == bindparam("k_msg_id"))))
                           .where(keys.c.kid == bindparam("k_kid")))
_STORE_ANSWER = insert(messages)


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
    issuer_policy: IssuerPolicy | None = None  # None: policy "any" without an issuer CA
    _known_keys: dict = field(default_factory=dict, repr=False)
    _payments: "GroupCommit" = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from center.pipeline.group_commit import GroupCommit

        self._payments = GroupCommit(self)

    @property
    def center_id(self) -> str:
        return self.signer.center_id

    def enroll(self, envelope: Envelope) -> dict:
        try:
            header, body, spki_der = verify_enrollment(envelope)
        except WireError as error:
            raise ApiError.from_wire(error) from None
        self._check_verified_header(header, envelope, ENROLL)
        cert_der = enrollment_key_cert(body)

        def apply(conn: Connection, now: int) -> handlers.Outcome:
            # Checked here, after the resend lookup: a resent enrollment that was
            # accepted gets its first receipt even if its certificate expired since.
            certificate = check_enrollment_certificate(self.issuer_policy, spki_der, cert_der, now // 1000)
            outcome = handlers.enroll(conn, header, body, spki_der, now)
            if certificate is not None:
                outcome.result["key_certificate"] = certificate  # the receipt states what was checked
            return outcome

        return self._accept(envelope, header, apply, advance_counter=False)

    def signed_refusal(self, header: Header, envelope: Envelope, error: ApiError) -> ApiError:
        """`error` with the center's signed refusal of these verified bytes attached, when it is final.

        A "try again" answer (not final) stays unsigned: the wallet keeps the message and resends it.
        """
        if not error.final or error.refusal is not None:
            return error
        now = self.clock_ms()
        payload = build_refusal_payload(center_kid=self.signer.kid, request_header=header, request=envelope,
                                        code=error.code, message=error.message, status=error.status,
                                        now_s=now // 1000)
        error.refusal = self.signer.seal(payload).to_json()
        return error

    def submit(self, envelope: Envelope, expected_type: str) -> dict:
        """Any signed request from an enrolled key (top-up, payment, refund...)."""
        request = self.verify_request(envelope, expected_type)
        if expected_type == PAY:  # the hot path: concurrent payments share a commit (center.pipeline.group_commit)
            return _raise_error_answer(self._payments.answer(request))
        return self._accept(envelope, request.header, request.apply, advance_counter=True)

    async def pay_async(self, request: "Verified") -> dict:
        """A verified payment's answer for an HTTP request, awaited without holding a thread."""
        return _raise_error_answer(await self._payments.answer_async(request))

    def knows_key(self, kid: str) -> bool:
        """Whether verifying a message from this key needs no database read (for the event loop)."""
        return kid in self._known_keys

    def submit_batch(self, envelopes: list[Envelope], expected_type: str) -> list[dict]:
        """Many signed requests, each answered as if sent alone, sharing one transaction and commit."""
        from center.pipeline.batch import submit_batch

        return submit_batch(self, envelopes, expected_type)

    def accept_verified(self, request: "Verified") -> dict:
        return self._accept(request.envelope, request.header, request.apply, advance_counter=True)

    def verify_request(self, envelope: Envelope, expected_type: str) -> "Verified":
        key = self._enrolled_key(envelope.kid)
        try:
            header, body = verify_envelope(envelope, spki_der=key.spki, algorithm=key.algorithm)
        except WireError as error:
            raise ApiError.from_wire(error) from None  # not verified: unsigned, burns nothing
        self._check_verified_header(header, envelope, expected_type, key_status=key.status)
        signer = Signer(kid=key.kid, party_id=key.party_id, role=key.role)
        handler = handlers.HANDLERS[expected_type]

        def apply(conn: Connection, now: int) -> handlers.Outcome:
            return handler(self, conn, signer, header, body, now)

        return Verified(envelope, header, apply, hashlib.sha256(envelope.payload).hexdigest(), signer, body)

    def store_info(self, store_id: str) -> dict:
        """Public facts a buyer's wallet shows before paying: the store's registered name."""
        if not re.fullmatch(r"S-[0-9a-f]{16}", store_id):
            raise ApiError("unknown_payee", f"no store {store_id} at this center")
        with self.engine.connect() as conn:
            store = conn.execute(select(parties.c.id, parties.c.name, parties.c.status)
                                 .where(parties.c.id == store_id, parties.c.role == "store")).first()
            flag = store_names.name_flag(conn, store_id)  # a look-alike name, until an operator clears it
        if store is None:
            raise ApiError("unknown_payee", f"no store {store_id} at this center")
        return {"store_id": store.id, "name": store.name, "active": store.status == "active", **flag}

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
        key = self._known_keys.get(kid)
        if key is not None:
            return key
        with self.engine.connect() as conn:
            key = conn.execute(_KEY, {"k_kid": kid}).first()
        if key is None:
            raise ApiError("unknown_key", "this key is not enrolled at this center")
        if key.status != "active":
            return key  # refused once its signature verified (verify_request); never cached
        if len(self._known_keys) >= MAX_CACHED_KEYS:
            self._known_keys.clear()  # rare; a cold cache costs one lookup per key
        self._known_keys[kid] = key
        return key

    def _check_verified_header(self, header: Header, envelope: Envelope, expected_type: str,
                               key_status: str = "active") -> None:
        """Type, audience, freshness, then key status (checked after the signature, so that the
        refusal can be signed). An expired resend of a message answered before gets that answer
        (the next step finds it): a signed "expired" must never hide a receipt."""
        try:
            self._check_header(header, expected_type)
            if key_status != "active":
                raise inactive_key_error(key_status)  # revoked, rotated, not bound yet, rejected
        except ApiError as error:
            if error.code == "expired" and self._answered_before(header):
                return
            error = self.signed_refusal(header, envelope, error)
            if error.code in RECORDED_BEFORE_ACCEPT:
                self._record_refusal(header, hashlib.sha256(envelope.payload).hexdigest(), error,
                                     advance_counter=False)
            raise error from None

    def _answered_before(self, header: Header) -> bool:
        with self.engine.connect() as conn:
            return _earlier_answer_row(conn, header) is not None

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
                # The first attempt leaves a reused counter to the unique index on
                # (kid, ctr): one statement less on every request. A retry looks.
                return self._accept_once(envelope, header, apply, payload_sha256, advance_counter,
                                         check_counter_unused=attempt > 0)
            except IntegrityError:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
            except ApiError as error:
                if error.code not in LOST_RACE_CODES or attempt == MAX_ATTEMPTS - 1:
                    raise self._final_refusal(envelope, header, payload_sha256, error, advance_counter) from None
        raise AssertionError("unreachable")

    def _final_refusal(self, envelope: Envelope, header: Header, payload_sha256: str, error: ApiError,
                       advance_counter: bool) -> ApiError:
        """The error to answer with: signed, and recorded when final (a resend gets the same refusal)."""
        if not error.final or error.refusal is not None:  # "try again", or an answer recorded earlier
            return error
        error = self.signed_refusal(header, envelope, error)
        try:
            self._record_refusal(header, payload_sha256, error, advance_counter)
        except ApiError as superseding:  # counter_replayed, key_revoked: refused for that reason instead
            return self.signed_refusal(header, envelope, superseding)
        return error

    def _accept_once(self, envelope, header, apply, payload_sha256, advance_counter, check_counter_unused) -> dict:
        """In one transaction: an earlier answer to the same message, or counter, effect, audit
        entry, signed receipt and stored answer."""
        with self.engine.begin() as conn:
            earlier = _earlier_answer(conn, header, payload_sha256, of_enrolled_key=advance_counter)
            if earlier is not None:
                return earlier
            now = self.clock_ms()
            if advance_counter:
                _advance_counter(conn, header, check_unused=check_counter_unused)
            outcome = apply(conn, now)
            seq = audit.append_envelope(conn, envelope, msg_type=header.type, msg_id=header.msg_id,
                                        action=outcome.result, now_ms=now)
            receipt = self.signer.sign_receipt(request_header=header, request=envelope, result=outcome.result,
                                               ctr=seq, now_s=now // 1000)
            response = {"receipt": receipt.to_json(), **outcome.extras}
            _store_answer(conn, header, payload_sha256, response, now)
            return response

    def _record_refusal(self, header: Header, payload_sha256: str, refusal: ApiError, advance_counter: bool) -> None:
        """Make a rule refusal final for this message id (a later resend cannot succeed)."""
        try:
            with self.engine.begin() as conn:
                if _earlier_answer_row(conn, header) is not None:
                    return
                if advance_counter:
                    _advance_counter(conn, header, check_unused=True)
                _store_answer(conn, header, payload_sha256, refusal.body() | {"status": refusal.status},
                              self.clock_ms())
        except IntegrityError:
            pass  # a concurrent copy of this message (or one with its counter) recorded first: the refusal stands
        # An ApiError here (counter_replayed, key_revoked) supersedes the refusal:
        # the message was not recorded, so it is refused for that reason instead.


@dataclass(frozen=True)
class Verified:
    """A request whose signature, type, audience and freshness were checked; `apply` makes its effect."""

    envelope: Envelope
    header: Header
    apply: Callable[[Connection, int], handlers.Outcome]
    payload_sha256: str
    # What the batch path (center.pipeline.batch) books payments from, without calling `apply`.
    signer: Signer | None = None
    body: dict | None = None


def _raise_error_answer(answer: dict) -> dict:
    if "error" in answer:
        raise ApiError(answer["error"]["code"], answer["error"]["message"], answer["status"], answer.get("refusal"))
    return answer


def _advance_counter(conn: Connection, header: Header, *, check_unused: bool) -> None:
    """Accept each counter once, within COUNTER_WINDOW below the highest; the update locks the key row.

    A counter used before is refused here when `check_unused`, and otherwise by
    the unique index on messages (kid, ctr) when the answer is stored.
    """
    raised = conn.execute(_ADVANCE_COUNTER, {"k_kid": header.kid, "k_ctr": header.ctr,
                                             "k_ceiling": header.ctr + COUNTER_WINDOW})
    if raised.rowcount != 1:
        status = conn.execute(_KEY_STATUS, {"k_kid": header.kid}).scalar_one_or_none()
        if status != "active":
            raise inactive_key_error(status)
        raise counter_too_old()
    if check_unused and conn.execute(_COUNTER_USED, {"k_kid": header.kid, "k_ctr": header.ctr}).first() is not None:
        raise counter_reused()


# The counter refusals, shared with the batch path's in-memory counters (center.pipeline.batch).

def counter_too_old() -> ApiError:
    return ApiError("counter_replayed", f"the message counter is more than {COUNTER_WINDOW} below the highest "
                                        "accepted from this key")


def counter_reused() -> ApiError:
    return ApiError("counter_replayed", "this message counter was already used by this key")


def _earlier_answer_row(conn: Connection, header: Header):
    return conn.execute(_EARLIER_ANSWER, {"k_kid": header.kid, "k_msg_id": header.msg_id}).first()


def _earlier_answer(conn: Connection, header: Header, payload_sha256: str, *, of_enrolled_key: bool) -> dict | None:
    if of_enrolled_key:
        row = conn.execute(_KEY_AND_EARLIER_ANSWER, {"k_kid": header.kid, "k_msg_id": header.msg_id}).first()
        if row is None or row.status != "active":
            raise inactive_key_error(row.status if row is not None else "revoked")
        if row.response is None:
            return None
    else:
        row = _earlier_answer_row(conn, header)
        if row is None:
            return None
    if row.payload_sha256 != payload_sha256:
        raise ApiError("message_id_conflict", "this message id was already used for a different message")
    response = json.loads(row.response)
    if "error" in response:
        error = response["error"]
        # A refusal recorded before refusals were signed has none: center.pipeline.service signs it now.
        raise ApiError(error["code"], error["message"], response["status"], response.get("refusal"))
    return response


def _store_answer(conn: Connection, header: Header, payload_sha256: str, response: dict, now: int) -> None:
    conn.execute(_STORE_ANSWER, {"kid": header.kid, "msg_id": header.msg_id, "msg_type": header.type,
                                 "ctr": header.ctr, "payload_sha256": payload_sha256,
                                 "response": json.dumps(response, separators=(",", ":")), "created_at_ms": now})
