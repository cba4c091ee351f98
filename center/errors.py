"""API errors: one stable code per refusal, one HTTP status per code (ERROR_CODES).

Every error body is {"error": {"code": ..., "message": ...}} (ErrorOut). Codes are part of
the API contract (clients and tests match on them); messages are for people. The table is
also docs/api.md's error list (center.api.reference). The bottom leaf of the center: it imports
only paywire, pydantic and the standard library.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel

from paywire.errors import WireError


class Code(NamedTuple):
    status: int | None  # None: only for http_error, which keeps the HTTP layer's status
    meaning: str  # one line for docs/api.md (center.api.reference renders this table)


# Every code the center answers with or the wire layer raises, and its one HTTP status.
# tests/test_api_reference.py fails on a code raised anywhere in center/ or paywire/ that is not
# here, on a literal status at a raise site that differs from this one, and on a code listed here
# that nothing raises. Codes never change meaning: clients match on them.
ERROR_CODES: dict[str, Code] = {
    # --- the wire layer (paywire.WireError, answered through ApiError.from_wire) ---
    "malformed_envelope": Code(400, "the body is not an envelope {payload, alg, kid, sig} (base64url)"),
    "malformed_payload": Code(400, "the signed payload is not a well-formed message of its type"),
    "payload_not_canonical": Code(400, "the payload bytes are not RFC 8785 canonical JSON"),
    "payload_too_large": Code(400, "the signed payload is over the wire limit (paywire MAX_PAYLOAD_BYTES)"),
    "wrong_domain": Code(400, "the payload is not a message of this protocol and version"),
    "unknown_message_type": Code(400, "the payload's message type is not one the protocol knows"),
    "text_not_allowed": Code(400, "a text field holds characters that are not plain visible text"),
    "unsupported_algorithm": Code(400, "the signature algorithm or key type is not one the center accepts"),
    "algorithm_mismatch": Code(400, "the envelope's algorithm is not the one the key is pinned to"),
    "bad_public_key": Code(400, "the public key is not a valid, canonical SubjectPublicKeyInfo (or PEM)"),
    "key_not_allowed": Code(400, "a key of an accepted type that is not allowed (RSA exponent not 65537)"),
    "kid_mismatch": Code(400, "the kid is not the key's SHA-256, or signed and envelope kids differ"),
    "bad_signature": Code(401, "the signature does not verify"),
    "expired": Code(403, "the message is past its expiry: sign it again"),
    "not_yet_valid": Code(403, "the message is issued in the future: check the signer's clock"),
    "wrong_audience": Code(403, "the message (or a key's proof) is addressed to another center"),
    "wrong_message_type": Code(400, "this endpoint takes another message type"),
    "console_login_outdated": Code(400, "a console login approval from an old wallet: it names no client"),
    "operator_action_outdated": Code(400, "a top-up decision from an old wallet, not naming what it decides"),
    "receipt_mismatch": Code(400, "(wallet) the center's answer does not answer the request sent"),
    # --- the HTTP layer (center.api) ---
    "invalid_request": Code(422, "the request or its arguments do not match the schema or limits"),
    "log_proof_invalid": Code(400, "(wallet) a Merkle proof does not verify against the signed tree head"),
    "log_query_required": Code(401, "a log read without a signed log_query in the Tokenpay-Query header"),
    "log_query_lifetime": Code(403, "a signed log_query lives longer than 300 s: sign it again"),
    "log_query_mismatch": Code(403, "the signed log_query authorizes another path or query"),
    "log_size_invalid": Code(
        400, "a log size or index beyond the newest signed tree head (or no head at that size)"
    ),
    "not_found": Code(404, "no such path, console view or file (or no funding webhook configured)"),
    "method_not_allowed": Code(405, "the path does not take this method (the Allow header says which)"),
    "http_error": Code(None, "another error of the HTTP layer, with its status (none raised today)"),
    "body_too_large": Code(413, "the request body is over the limit of its endpoint"),
    "batch_too_large": Code(413, "a batch holds more signed messages than the limit"),
    "rate_limited": Code(429, "the key's or address's allowance is spent: retry after `retry_after` s"),
    "overloaded": Code(503, "too many payments wait to be committed: send the same signed bytes again later"),
    # Failing over, unreachable, or a commit not done in time (center.api.unavailable).
    "database_unavailable": Code(
        503, "the database cannot answer now: resend the same bytes after `retry_after` s"
    ),
    "internal_error": Code(500, "an unexpected failure (a metrics label; the body is a plain 500)"),
    # --- signers and their keys ---
    # Two meanings, two codes (unknown_key used to answer 404 for the second): a request signed by
    # a key the center does not know fails authentication (401; the README and clients know it as
    # unknown_key); an operator's lookup of a kid that does not exist is a 404 like unknown_party.
    "unknown_key": Code(401, "a request is signed by a key that is not enrolled at this center"),
    "key_not_found": Code(404, "an operator named a kid that is not enrolled at this center"),
    "key_revoked": Code(403, "the signing key has been revoked"),
    "key_rotated": Code(403, "the signing key was replaced by a newer key of its account"),
    "key_not_bound": Code(403, "the signing key waits for an operator to bind it to its account"),
    "key_rejected": Code(403, "an operator rejected the signing key's claim to an account"),
    "key_not_certified": Code(403, "this center takes only keys certified by its card issuer"),
    "key_already_enrolled": Code(409, "the key is enrolled already: each account needs its own key"),
    "key_proof_mismatch": Code(400, "a rotation's new-key proof names another key to replace"),
    "key_not_pending": Code(409, "the key did not ask to be bound, or was decided already"),
    "party_has_active_key": Code(409, "the account still has an active key: revoke it before binding one"),
    "too_many_pending_keys": Code(409, "the account has too many unproven keys waiting to be bound"),
    "wrong_recovery_code": Code(403, "the recovery code matches no code or unused ticket of the account"),
    "too_many_recovery_attempts": Code(429, "too many wrong recovery codes for the account lately"),
    "too_many_tickets": Code(409, "the account has too many unused recovery tickets"),
    "wrong_role": Code(403, "the signer's role (member, store, operator) cannot do this"),
    "counter_replayed": Code(409, "the message counter was used already, or is too far below the highest"),
    "message_id_conflict": Code(409, "the message id was used already for a different message"),
    # --- accounts, payments, top-ups, payouts ---
    "unknown_party": Code(404, "no such (active) member or store account"),
    "unknown_payee": Code(404, "no such (active) store"),
    "unknown_payment": Code(404, "no such payment"),
    "unknown_topup": Code(404, "no such top-up"),
    "unknown_batch": Code(404, "no such payout batch"),
    "payee_name_mismatch": Code(409, "the store is registered under another name than the payment names"),
    "currency_mismatch": Code(400, "the message names another currency than the center settles in"),
    "duplicate_order": Code(409, "the buyer paid this order to this store before: send repeat true if meant"),
    "insufficient_funds": Code(409, "the balance does not cover the amount; nothing changed"),
    "balance_limit": Code(409, "the credit would take the balance beyond what receipts can state"),
    "not_your_payment": Code(403, "only the store that was paid can refund a payment"),
    "refund_exceeds_payment": Code(409, "the refund is more than what is left of the payment"),
    "nothing_to_pay_out": Code(409, "the store balance is zero"),
    "topup_not_pending": Code(409, "the top-up was decided already"),
    "topup_details_mismatch": Code(409, "the signed decision names another member, amount or currency"),
    "amount_mismatch": Code(409, "the funding webhook states another amount than the top-up's"),
    "bad_webhook_signature": Code(401, "the funding webhook's HMAC signature or timestamp is missing/wrong"),
    "payout_changed": Code(409, "a payout changed during an export or settlement: run it again"),
    "batch_settled": Code(409, "the payout batch is settled already: a new file would pay it twice"),
    "store_not_flagged": Code(409, "the store's name was never flagged as a look-alike"),
    # --- operators and the console ---
    "not_an_operator": Code(403, "an operator action signed by a member's or store's key"),
    "operator_role_required": Code(403, "the operator's role does not allow this action"),
    "signed_action_required": Code(403, "a console session cannot do this: sign it with an operator token"),
    "console_login_required": Code(401, "no console session: log in with `wallet console-login`"),
    "csrf_failed": Code(403, "the console write does not carry the session's CSRF token"),
    "unknown_challenge": Code(404, "no such console login waiting (used, approved, or never asked)"),
    "challenge_expired": Code(403, "the console login has expired: start a new one"),
    "challenge_details_mismatch": Code(409, "the approval names another client than the one that asked"),
    "too_many_challenges": Code(429, "too many console logins asked or waiting: retry after `retry_after`"),
    # --- local commands (center CLI: exports), never an HTTP answer today: "(CLI)" ---
    # 409 as the payout export always answered (the audit export's answered 400): a clash with state.
    "file_exists": Code(409, "(CLI) the export file exists already; exports never overwrite"),
    "file_not_written": Code(500, "(CLI) the payout batch is recorded but its file could not be written"),
    "invalid_certificate": Code(400, "(CLI) the audit export's center certificate is invalid or another's"),
    "audit_corrupt": Code(400, "(CLI) a recorded audit entry is not readable: run `center audit verify`"),
}
# What a code answers when it is not in the table (e.g. a new code before it is listed).
DEFAULT_STATUS = 400
STATUS_FOR_CODE = {code: entry.status for code, entry in ERROR_CODES.items() if entry.status is not None}


def status_for(code: str) -> int:
    return STATUS_FOR_CODE.get(code, DEFAULT_STATUS)


# Answers that mean "try again" (later, or after something else happens first): never final for
# a message id, never signed as a refusal. Every other refusal of a message whose signature
# verified is final (center.pipeline.service records it; center.pipeline.batch likewise), and the
# center signs it.
RETRY_CODES = frozenset(
    {
        "overloaded",
        "database_unavailable",
        "rate_limited",
        "not_yet_valid",  # the signer's clock is ahead: the same bytes are accepted once the time comes
    }
)


def means_try_again(code: str, status: int) -> bool:
    """5xx and 429 answers and RETRY_CODES: the refused bytes may be accepted when sent again."""
    return status >= 500 or status == 429 or code in RETRY_CODES


class ApiError(Exception):
    """A refusal with its code; its HTTP status is the code's in ERROR_CODES.

    `status` is passed only to replay a recorded answer exactly as it was first sent (its status
    then) or by the HTTP layer for http_error; a literal status at a raise site must equal the
    table's (tests/test_api_reference.py checks every one).
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        refusal: dict | None = None,
        retry_after_s: int | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or status_for(code)
        # The center-signed refusal (an envelope's JSON) binding the refused request, once
        # center.pipeline.service has signed it; sent beside the error body.
        self.refusal = refusal
        # For a limit (429): when to try again, in the body (`retry_after`) and the Retry-After header.
        self.retry_after_s = retry_after_s

    @classmethod
    def from_wire(cls, error: WireError) -> ApiError:
        return cls(error.code, error.message)

    @property
    def final(self) -> bool:
        """Whether this refusal, of a message whose signature verified, stands for that message for good.

        The one place that decides it, for the single and the batch path (and docs/api.md's "retry"
        column): means_try_again; everything else is a rule refusal.
        """
        return not means_try_again(self.code, self.status)

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


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    """The body of every error answer the center writes: {"error": {"code": ..., "message": ...}}."""

    error: ErrorDetail
