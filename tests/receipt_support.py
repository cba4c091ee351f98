"""Reading the center's receipts in tests: a receipt is the request's audit entry, its inclusion
proof and a signed tree head (paywire.receipts.build_log_receipt).

`checked_result` verifies it the way the wallet does (proof, head signature, the request's own
bytes) and returns the result; `receipt_result` only reads the result, for tests about something
else; `receipt_seq` the audit entry it names.
"""

from __future__ import annotations

from paywire.envelope import Envelope
from paywire.receipts import check_receipt


def checked_result(
    answer: dict, request: Envelope, *, center_spki: bytes, center_alg: str, center_id: str | None = None
) -> dict:
    """Verify the answer's receipt against the center's key and the request sent; its result."""
    checked = check_receipt(
        answer["receipt"],
        center_spki=center_spki,
        center_alg=center_alg,
        request=request,
        center_id=center_id,
    )
    assert answer["receipt"].get("format") == "tokenpay-log-receipt", "the center answers with log receipts"
    assert checked["log"] is not None and checked["log"]["seq"] == answer["receipt"]["entry"]["seq"]
    return checked["result"]


def checked_by_center(answer: dict, request: Envelope, center) -> dict:
    """checked_result against an in-process center's signer."""
    signer = center.signer
    return checked_result(
        answer, request, center_spki=signer.spki, center_alg=signer.alg, center_id=signer.center_id
    )


def receipt_result(answer: dict) -> dict:
    """The result the receipt states, unverified (a test checking something else reads it)."""
    return answer["receipt"]["entry"]["action"]


def receipt_seq(answer: dict) -> int:
    """The seq of the audit entry the receipt proves (its leaf index is seq - 1)."""
    return answer["receipt"]["entry"]["seq"]


def receipt_head(answer: dict) -> Envelope:
    """The signed tree head the receipt's proof leads to."""
    return Envelope.from_json(answer["receipt"]["tree_head"])
