"""The center's domain logic, callable without HTTP.

Every signed request goes through the same steps (`_accept`): verify the
signature with the pinned key, check type, audience and freshness, then in one
transaction: answer a replay from the idempotency record, apply the effect,
sign a receipt, store it, append the audit entry. Routes only translate HTTP.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from center import audit
from center.db import keys, messages, parties
from center.errors import ApiError
from center.identity import CenterSigner
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import ENROLL, Header, check_freshness
from paywire.verify import verify_enrollment

# A request can race another with the same key or message id; after a unique
# violation the retry finds the winner's record and answers from it.
MAX_ATTEMPTS = 3

Handler = Callable[[Connection, Header, dict, int], dict]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Center:
    engine: Engine
    signer: CenterSigner
    currency: str
    clock_ms: Callable[[], int] = now_ms

    @property
    def center_id(self) -> str:
        return self.signer.center_id

    def enroll(self, envelope: Envelope) -> Envelope:
        try:
            header, body, spki_der = verify_enrollment(envelope)
        except WireError as error:
            raise ApiError.from_wire(error) from None
        self._check_header(header, ENROLL)

        def apply(conn: Connection, header: Header, body: dict, now: int) -> dict:
            return _create_party(conn, header, body, spki_der, now)

        return self._accept(envelope, header, body, apply)

    def _check_header(self, header: Header, expected_type: str) -> None:
        if header.type != expected_type:
            raise ApiError("wrong_message_type", f"this endpoint takes {expected_type!r} messages, not {header.type!r}")
        if header.aud != self.center_id:
            raise ApiError("wrong_audience", f"message is addressed to {header.aud!r}, not this center ({self.center_id})")
        try:
            check_freshness(header, self.clock_ms() // 1000)
        except WireError as error:
            raise ApiError.from_wire(error) from None

    def _accept(self, envelope: Envelope, header: Header, body: dict, apply: Handler) -> Envelope:
        payload_sha256 = hashlib.sha256(envelope.payload).hexdigest()
        for attempt in range(MAX_ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    earlier = _earlier_answer(conn, header, payload_sha256)
                    if earlier is not None:
                        return earlier
                    return self._apply_once(conn, envelope, header, body, payload_sha256, apply)
            except IntegrityError:
                if attempt == MAX_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _apply_once(self, conn: Connection, envelope: Envelope, header: Header, body: dict,
                    payload_sha256: str, apply: Handler) -> Envelope:
        now = self.clock_ms()
        result = apply(conn, header, body, now)
        seq = audit.append(conn, envelope, msg_type=header.type, msg_id=header.msg_id, action=result, now_ms=now)
        receipt = self.signer.sign_receipt(request_header=header, request=envelope, result=result, ctr=seq,
                                           now_s=now // 1000)
        conn.execute(insert(messages).values(
            kid=header.kid, msg_id=header.msg_id, msg_type=header.type, payload_sha256=payload_sha256,
            response=json.dumps(receipt.to_json()), created_at_ms=now))
        return receipt


def _earlier_answer(conn: Connection, header: Header, payload_sha256: str) -> Envelope | None:
    row = conn.execute(select(messages.c.payload_sha256, messages.c.response)
                       .where(messages.c.kid == header.kid, messages.c.msg_id == header.msg_id)).first()
    if row is None:
        return None
    if row.payload_sha256 != payload_sha256:
        raise ApiError("message_id_conflict", "this message id was already used for a different message")
    return Envelope.from_json(json.loads(row.response))


def _create_party(conn: Connection, header: Header, body: dict, spki_der: bytes, now: int) -> dict:
    if conn.execute(select(keys.c.kid).where(keys.c.kid == header.kid)).first() is not None:
        raise ApiError("key_already_enrolled", "this key is already enrolled; use a new token key for a new account")
    role = body["role"]
    party_id = ("M-" if role == "member" else "S-") + secrets.token_hex(8)
    conn.execute(insert(parties).values(
        id=party_id, role=role, name=body["name"], address=body["address"], birth_date=body.get("birth_date"),
        bank_account=body.get("bank_account"), status="active", created_at_ms=now))
    conn.execute(insert(keys).values(
        kid=header.kid, party_id=party_id, algorithm=body["alg"], spki=spki_der, status="active",
        last_ctr=header.ctr, created_at_ms=now))
    return {"action": "enrolled", "member_id": party_id, "role": role, "kid": header.kid, "algorithm": body["alg"]}
