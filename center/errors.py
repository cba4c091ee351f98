"""API errors: one stable code per refusal, one HTTP status per code.

Every 4xx body is {"error": {"code": ..., "message": ...}}. Codes are part of
the API contract (clients and tests match on them); messages are for people.
"""

from __future__ import annotations

from paywire.errors import WireError

# Codes not listed answer 400.
STATUS_FOR_CODE = {
    "bad_signature": 401,
    "unknown_key": 401,
    "key_revoked": 403,
    "key_not_certified": 403,
    "wrong_audience": 403,
    "expired": 403,
    "not_yet_valid": 403,
    "key_already_enrolled": 409,
    "message_id_conflict": 409,
    "counter_replayed": 409,
    "not_found": 404,
    "insufficient_funds": 409,
    "refund_exceeds_payment": 409,
    "nothing_to_pay_out": 409,
    "payee_name_mismatch": 409,
    "topup_not_pending": 409,
    "amount_mismatch": 409,  # README has always said 409; unlisted codes answered 400
    "unknown_payee": 404,
    "unknown_payment": 404,
    "unknown_topup": 404,
    "unknown_party": 404,
    "wrong_role": 403,
    "not_your_payment": 403,
    "bad_webhook_signature": 401,
    "balance_limit": 409,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "batch_too_large": 413,
    "overloaded": 503,
    "invalid_request": 422,
    # operators and the console (center.pipeline.operator_actions, center.console.auth)
    "not_an_operator": 403,
    "operator_role_required": 403,
    "unknown_challenge": 404,
    "challenge_expired": 403,
    "console_login_required": 401,
    "csrf_failed": 403,
    "too_many_challenges": 429,
    # key lifecycle: lost card -> new key bound to the account; rotation (center.keys.lifecycle, key_binding)
    "key_not_bound": 403,
    "key_rotated": 403,
    "key_rejected": 403,
    "key_proof_mismatch": 400,
    "party_has_active_key": 409,
    "key_not_pending": 409,
    "too_many_pending_keys": 409,
}


# Answers that mean "try again" (later, or after something else happens first): never final for
# a message id, never signed as a refusal. Every other refusal of a message whose signature
# verified is final (center.pipeline.service records it; center.pipeline.batch likewise), and the center signs it.
RETRY_CODES = frozenset({
    "overloaded", "database_unavailable", "too_many_requests", "rate_limited",
    "not_yet_valid",  # the signer's clock is ahead: the same bytes are accepted once the time comes
})


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None, refusal: dict | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_FOR_CODE.get(code, 400)
        # The center-signed refusal (an envelope's JSON) binding the refused request, once
        # center.pipeline.service has signed it; sent beside the error body.
        self.refusal = refusal
        # For a limit (429): when to try again, in the body (`retry_after`) and the Retry-After header.
        self.retry_after_s = retry_after_s

    @classmethod
    def from_wire(cls, error: WireError) -> "ApiError":
        return cls(error.code, error.message)

    @property
    def final(self) -> bool:
        """Whether this refusal, of a message whose signature verified, stands for that message for good.

        The one place that decides it, for the single and the batch path: 5xx and 429 answers and
        RETRY_CODES mean "try again"; everything else is a rule refusal.
        """
        return self.status < 500 and self.status != 429 and self.code not in RETRY_CODES

    def body(self) -> dict:
        body = {"error": {"code": self.code, "message": self.message}}
        if self.retry_after_s is not None:
            body["error"]["retry_after"] = self.retry_after_s
        if self.refusal is not None:
            body["refusal"] = self.refusal
        return body


class Refusal(ApiError):
    """A verified, well-formed request that the center's rules refuse (no funds,
    unknown payee...). Final, like every ApiError whose `final` holds once the
    signature verified: it is recorded under its message id, so resending the
    same signed bytes gets the same refusal, and its counter is used up."""
