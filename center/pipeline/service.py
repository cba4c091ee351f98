"""The center's domain logic, callable without HTTP: Center, the entry of every signed request.

Every signed request goes through the same steps: verify the signature with the pinned key and
algorithm, check type, audience and freshness (here), then in one transaction
(center.pipeline.accept): answer a resend from the idempotency record, advance the per-key
counter, apply the effect (center.pipeline.handlers), append the audit entry, sign the receipt,
store the answer. Payments take the same steps together (center.pipeline.group_commit and
batch). Each step's rule is written once, in center.pipeline.rules. Routes only translate HTTP.

Refusals: once a message's signature verified, a refusal that is not "try
again" (ApiError.final) is final for its message id: it is recorded like an
answer (a resend of the same bytes gets it again, never a later success), and
the center signs it like a receipt, binding the request's hash, so a wallet
can tell it from an impostor's. A message that did not verify (unknown key,
bad signature, malformed) burns nothing and gets an unsigned error.

Module graph (no cycles): types <- rules <- accept <- batch <- group_commit <- service, and
handlers (with operator_actions, console_login, rotation) <- batch, service.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, bindparam, select

from center.errors import ApiError
from center.keys import store_names
from center.keys.identity import CenterSigner
from center.keys.issuer_policy import IssuerPolicy, check_enrollment_certificate, enrollment_key_cert
from center.keys.lifecycle import inactive_key_error
from center.ledger import funding
from center.pipeline import accept, handlers, rules
from center.pipeline.batch import submit_batch
from center.pipeline.group_commit import GroupCommit
from center.pipeline.types import Outcome, Signer, Verified, now_ms
from center.storage.db import keys, parties
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import ENROLL, PAY, Header, check_freshness
from paywire.verify import verify_enrollment, verify_envelope

# Refusals met before the transaction that are not final by nature, so recorded there: a key
# not bound yet may be bound later, and the same bytes must then get the same refusal.
RECORDED_BEFORE_ACCEPT = frozenset({"key_not_bound"})
# Enrolled keys a process remembers (spki, algorithm, party, role never change
# for a kid). Status does change (revocation), and is not trusted from here:
# the counter update inside each request's transaction requires status
# 'active', so a key revoked by another process is refused all the same.
MAX_CACHED_KEYS = 100_000

STORE_ID_PATTERN = re.compile(r"S-[0-9a-f]{16}")

# Statements on the request path, built once (see center/ledger/book.py).
_KEY = (
    select(keys.c.kid, keys.c.spki, keys.c.algorithm, keys.c.status, keys.c.party_id, parties.c.role)
    .join(parties, parties.c.id == keys.c.party_id)
    .where(keys.c.kid == bindparam("k_kid"))
)


@dataclass
class Center:
    engine: Engine
    signer: CenterSigner
    currency: str
    webhook_secret: bytes | None = None
    clock_ms: Callable[[], int] = now_ms
    issuer_policy: IssuerPolicy | None = None  # None: policy "any" without an issuer CA
    # A standby's engine for the console's statistics and searches (config read_db_url); None: the primary.
    read_engine: Engine | None = None
    _known_keys: dict = field(default_factory=dict, repr=False)
    _payments: GroupCommit = field(init=False, repr=False)

    def __post_init__(self) -> None:
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

        def apply(conn: Connection, now_ms: int) -> Outcome:
            # Checked here, after the resend lookup: a resent enrollment that was
            # accepted gets its first receipt even if its certificate expired since.
            certificate = check_enrollment_certificate(self.issuer_policy, spki_der, cert_der, now_ms // 1000)
            outcome = handlers.enroll(conn, header, body, spki_der, now_ms)
            if certificate is not None:
                outcome.result["key_certificate"] = certificate  # the receipt states what was checked
            return outcome

        return accept.accept(self, envelope, header, apply, advance_counter=False)

    def submit(self, envelope: Envelope, expected_type: str) -> dict:
        """Any signed request from an enrolled key (top-up, payment, refund...)."""
        request = self.verify_request(envelope, expected_type)
        if expected_type == PAY:  # the hot path: concurrent payments share a commit (group_commit)
            return rules.raise_error_answer(self._payments.answer(request))
        return self.accept_verified(request)

    async def pay_async(self, request: Verified) -> dict:
        """A verified payment's answer for an HTTP request, awaited without holding a thread."""
        return rules.raise_error_answer(await self._payments.answer_async(request))

    def knows_key(self, kid: str) -> bool:
        """Whether verifying a message from this key needs no database read (for the event loop)."""
        return kid in self._known_keys

    def submit_batch(self, envelopes: list[Envelope], expected_type: str) -> list[dict]:
        """Many signed requests, each answered as if sent alone, sharing one transaction and commit."""
        return submit_batch(self, envelopes, expected_type)

    def accept_verified(self, request: Verified) -> dict:
        return accept.accept_verified(self, request)

    def verify_request(self, envelope: Envelope, expected_type: str) -> Verified:
        key = self._enrolled_key(envelope.kid)
        try:
            header, body = verify_envelope(envelope, spki_der=key.spki, algorithm=key.algorithm)
        except WireError as error:
            raise ApiError.from_wire(error) from None  # not verified: unsigned, burns nothing
        self._check_verified_header(header, envelope, expected_type, key_status=key.status)
        signer = Signer(kid=key.kid, party_id=key.party_id, role=key.role)
        handler = handlers.HANDLERS[expected_type]

        def apply(conn: Connection, now_ms: int) -> Outcome:
            return handler(self, conn, signer, header, body, now_ms)

        return Verified(envelope, header, apply, rules.request_sha256(envelope), signer, body)

    def store_info(self, store_id: str) -> dict:
        """Public facts a buyer's wallet shows before paying: the store's registered name."""
        if not STORE_ID_PATTERN.fullmatch(store_id):
            raise ApiError("unknown_payee", f"no store {store_id} at this center")
        with self.engine.connect() as conn:
            store = conn.execute(
                select(parties.c.id, parties.c.name, parties.c.status).where(
                    parties.c.id == store_id, parties.c.role == "store"
                )
            ).first()
            flag = store_names.name_flag(conn, store_id)  # a look-alike name, until an operator clears it
        if store is None:
            raise ApiError("unknown_payee", f"no store {store_id} at this center")
        return {"store_id": store.id, "name": store.name, "active": store.status == "active", **flag}

    def decide_topup(self, topup_id: str, decision: str, *, decided_by: str) -> dict:
        return funding.decide_topup(
            self.engine, topup_id, decision, decided_by=decided_by, now_ms=self.clock_ms()
        )

    def funding_webhook(self, timestamp: str | None, signature: str | None, body: bytes) -> dict:
        if not self.webhook_secret:
            raise ApiError("not_found", "this center has no funding webhook configured", 404)
        call = funding.parse_webhook(self.webhook_secret, timestamp, signature, body, self.clock_ms() // 1000)
        return funding.decide_topup(
            self.engine,
            call["topup_id"],
            call["decision"],
            decided_by="webhook:funding",
            now_ms=self.clock_ms(),
            expected_amount_minor=call["amount_minor"],
            evidence=body,
            evidence_alg="hmac-sha256",
        )

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

    def _check_verified_header(
        self, header: Header, envelope: Envelope, expected_type: str, key_status: str = "active"
    ) -> None:
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
            error = rules.signed_refusal(self, header, envelope, error)
            if error.code in RECORDED_BEFORE_ACCEPT:
                accept.record_refusal(
                    self, header, rules.request_sha256(envelope), error, advance_counter=False
                )
            raise error from None

    def _answered_before(self, header: Header) -> bool:
        with self.engine.connect() as conn:
            return rules.earlier_answer_row(conn, header) is not None

    def _check_header(self, header: Header, expected_type: str) -> None:
        if header.type != expected_type:
            raise ApiError(
                "wrong_message_type", f"this endpoint takes {expected_type!r} messages, not {header.type!r}"
            )
        if header.aud != self.center_id:
            raise ApiError(
                "wrong_audience",
                f"message is addressed to {header.aud!r}, not this center ({self.center_id})",
            )
        try:
            check_freshness(header, self.clock_ms() // 1000)
        except WireError as error:
            raise ApiError.from_wire(error) from None
