"""Receipts: the center's signed answer to an accepted signed request.

The center builds them with `build_receipt_payload`; the wallet checks them
with `check_receipt` against the center key it pinned, before recording
anything. A receipt names the request by key id, message id and the SHA-256
of the exact request bytes, so it cannot be replayed onto another request.

A refusal is signed the same way (`build_refusal_payload`, `check_refusal`): a
receipt whose result is {"action": "refused", "code", "message", "status"}. The
wallet believes a refusal only when it verifies and names its exact request;
`check_receipt` never takes a refusal for an acceptance, nor the reverse.
"""

from __future__ import annotations

import hashlib

from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.messages import RECEIPT, Header, build_payload, new_message_id
from paywire.verify import verify_envelope

RECEIPT_LIFETIME_S = 30 * 24 * 3600
REFUSED = "refused"  # the result action of a signed refusal
MAX_REFUSAL_MESSAGE_CHARS = 500


def request_digest(request: Envelope) -> str:
    return hashlib.sha256(request.payload).hexdigest()


def build_receipt_payload(
    *, center_kid: str, request_header: Header, request: Envelope, result: dict, ctr: int, now_s: int
) -> dict:
    body = {
        "for_kid": request_header.kid,
        "for_msg_id": request_header.msg_id,
        "for_type": request_header.type,
        "request_sha256": request_digest(request),
        "result": result,
    }
    return build_payload(
        RECEIPT,
        aud=request_header.kid,
        kid=center_kid,
        msg_id=new_message_id(),
        ctr=ctr,
        body=body,
        now_s=now_s,
        lifetime_s=RECEIPT_LIFETIME_S,
    )


def build_refusal_payload(
    *,
    center_kid: str,
    request_header: Header,
    request: Envelope,
    code: str,
    message: str,
    status: int,
    now_s: int,
) -> dict:
    """The center's signed statement that it refused these exact request bytes, for good."""
    result = {
        "action": REFUSED,
        "code": code,
        "message": message[:MAX_REFUSAL_MESSAGE_CHARS],
        "status": status,
    }
    return build_receipt_payload(
        center_kid=center_kid,
        request_header=request_header,
        request=request,
        result=result,
        ctr=request_header.ctr,
        now_s=now_s,
    )


def check_receipt(receipt: Envelope, *, center_spki: bytes, center_alg: str, request: Envelope) -> dict:
    """Verify the center's signature and that the receipt answers `request`; return its result."""
    body = _check_answer(receipt, "receipt", center_spki=center_spki, center_alg=center_alg, request=request)
    if body["result"].get("action") == REFUSED:
        raise WireError("receipt_mismatch", "the center's answer is a refusal, not a receipt")
    return body


def check_refusal(refusal: Envelope, *, center_spki: bytes, center_alg: str, request: Envelope) -> dict:
    """Verify a signed refusal of `request` (signature, this key, this message, these bytes); return
    {"code", "message", "status"}."""
    result = _check_answer(
        refusal, "refusal", center_spki=center_spki, center_alg=center_alg, request=request
    )["result"]
    if (
        result.get("action") != REFUSED
        or not isinstance(result.get("code"), str)
        or not isinstance(result.get("message"), str)
        or type(result.get("status")) is not int
    ):
        raise WireError("receipt_mismatch", "the center's answer is not a refusal")
    return {"code": result["code"], "message": result["message"], "status": result["status"]}


def _check_answer(
    answer: Envelope, what: str, *, center_spki: bytes, center_alg: str, request: Envelope
) -> dict:
    """The checks every signed answer passes: the center's key, a receipt-type document, addressed to
    the request's key and naming these exact request bytes."""
    header, body = verify_envelope(answer, spki_der=center_spki, algorithm=center_alg)
    if header.type != RECEIPT:
        raise WireError("wrong_message_type", f"the center's answer is not a {what}")
    if header.aud != request.kid or body["for_kid"] != request.kid:
        raise WireError("wrong_audience", f"the {what} is addressed to another key")
    if body["request_sha256"] != request_digest(request):
        raise WireError("receipt_mismatch", f"the {what} answers a different request")
    return body
