"""Receipts: the center's signed answer to an accepted signed request.

The center builds them with `build_receipt_payload`; the wallet checks them
with `check_receipt` against the center key it pinned, before recording
anything. A receipt names the request by key id, message id and the SHA-256
of the exact request bytes, so it cannot be replayed onto another request.
"""

from __future__ import annotations

import hashlib

from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import RECEIPT, Header, build_payload, new_message_id
from paywire.verify import verify_envelope

RECEIPT_LIFETIME_S = 30 * 24 * 3600


def request_digest(request: Envelope) -> str:
    return hashlib.sha256(request.payload).hexdigest()


def build_receipt_payload(*, center_kid: str, request_header: Header, request: Envelope, result: dict,
                          ctr: int, now_s: int) -> dict:
    body = {
        "for_kid": request_header.kid, "for_msg_id": request_header.msg_id, "for_type": request_header.type,
        "request_sha256": request_digest(request), "result": result,
    }
    return build_payload(RECEIPT, aud=request_header.kid, kid=center_kid, msg_id=new_message_id(), ctr=ctr,
                         body=body, now_s=now_s, lifetime_s=RECEIPT_LIFETIME_S)


def check_receipt(receipt: Envelope, *, center_spki: bytes, center_alg: str, request: Envelope) -> dict:
    """Verify the center's signature and that the receipt answers `request`; return its result."""
    header, body = verify_envelope(receipt, spki_der=center_spki, algorithm=center_alg)
    if header.type != RECEIPT:
        raise WireError("wrong_message_type", "the center's answer is not a receipt")
    if header.aud != request.kid or body["for_kid"] != request.kid:
        raise WireError("wrong_audience", "the receipt is addressed to another key")
    if body["request_sha256"] != request_digest(request):
        raise WireError("receipt_mismatch", "the receipt answers a different request")
    return body
