"""The API's request and response models, and the one parse of a signed envelope.

The error body's models (ErrorOut, ErrorDetail) live in center.errors: the console's routes,
below this package, document their errors with them too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from center.errors import ApiError, ErrorDetail, ErrorOut
from paywire.envelope import Envelope
from paywire.errors import WireError

# The 4xx answers every route may give, documented once for the whole app.
ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 422, 429)
ERROR_RESPONSES = {status: {"model": ErrorOut} for status in ERROR_STATUSES}


class EnvelopeIn(BaseModel):
    """A signed envelope; see paywire.envelope for the exact rules."""

    model_config = ConfigDict(extra="forbid")
    payload: str
    alg: str
    kid: str
    sig: str


class LogEntryOut(BaseModel):
    """The request's audit entry, as far as the request itself does not hold it (paywire.receipts)."""

    seq: int
    created_at_ms: int
    kid: str
    alg: str
    msg_type: str
    msg_id: str
    action: dict


class LogReceiptOut(BaseModel):
    """A receipt: the request's audit entry, its inclusion proof (base64url hashes) and the signed
    tree head it leads to (paywire.receipts.build_log_receipt / check_receipt)."""

    format: Literal["tokenpay-log-receipt"]
    v: Literal[1]
    entry: LogEntryOut
    proof: list[str]
    tree_head: EnvelopeIn


# A resend of a message answered before the log became a Merkle tree gets its stored signed receipt.
Receipt = LogReceiptOut | EnvelopeIn


class ReceiptOut(BaseModel):
    receipt: Receipt


class FullLogEntryOut(LogEntryOut):
    """A whole audit entry (paywire.log_entry.entry_fields): the request's bytes and signature too."""

    payload: str
    signature: str


class NoticeLogItemOut(BaseModel):
    """A notice's payment: the buyer's PAY entry and its inclusion proof (paywire.notice_proof)."""

    entry: FullLogEntryOut
    index: int
    proof: list[str]


class NoticesLogOut(BaseModel):
    """Beside a fetch's notices: one signed tree head and, per notice in order, its payment's proof
    (None only for a payment not linked to its entry: the store refuses the fetch)."""

    tree_head: EnvelopeIn | None
    items: list[NoticeLogItemOut | None]


class SignedResponseOut(BaseModel):
    receipt: Receipt
    notices: list[EnvelopeIn] | None = None
    notices_log: NoticesLogOut | None = None


class HealthOut(BaseModel):
    status: Literal["ok"]
    center_id: str


class CenterInfoOut(BaseModel):
    center_id: str
    currency: str
    minor_exponent: int
    receipt_kid: str
    receipt_alg: str
    receipt_public_key: str


class StoreInfoOut(BaseModel):
    store_id: str
    name: str
    active: bool
    # equal to or confusable with an earlier store's name (center.keys.store_names)
    name_flagged: bool = False
    resembles: str | None = None  # that earlier store, while flagged


class TopupDecisionOut(BaseModel):
    action: str
    topup_id: str
    member_id: str
    amount_minor: int
    method: str
    status: str
    repeated: bool


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topup_id: str
    decision: Literal["confirm", "decline"]
    amount_minor: int
    reference: str


class BatchIn(BaseModel):
    """Individually signed payments from one terminal or gateway; at most 100 (center.pipeline.batch)."""

    model_config = ConfigDict(extra="forbid")
    payments: list[EnvelopeIn]


class BatchItemOut(BaseModel):
    """Exactly one of: the receipt, or the error with the status it would have had alone."""

    receipt: Receipt | None = None
    error: ErrorDetail | None = None
    status: int | None = None


class BatchOut(BaseModel):
    results: list[BatchItemOut]


def parse_envelope(envelope: EnvelopeIn) -> Envelope:
    """The wire envelope of a request body, or the ApiError naming what is wrong with it."""
    try:
        return Envelope.from_json(envelope.model_dump())
    except WireError as error:
        raise ApiError.from_wire(error) from None
