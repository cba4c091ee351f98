"""The signed API: enrollment, one route per signed message type, and the payment batch.

Thin: parse the envelope, ask the limiter (center.api.ratelimit), call center.pipeline.service,
count the answer for the metrics. To route a new signed message type, add it to SIGNED_ROUTES.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from center.api.middleware import BATCH_PATH
from center.api.ratelimit import NOTICES_PER_KEY, PAYMENTS_PER_KEY, SIGNED_PER_KEY, Limits
from center.api.schemas import BatchIn, BatchOut, EnvelopeIn, ReceiptOut, SignedResponseOut, parse_envelope
from center.console.clients import request_client
from center.errors import ApiError
from center.ops import observability
from center.pipeline.batch import MAX_BATCH_ITEMS
from center.pipeline.rules import error_answer
from center.pipeline.service import Center
from paywire.algorithms import ED25519, ES256
from paywire.messages import (
    ACCOUNT_INFO,
    BALANCE,
    CONSOLE_LOGIN,
    NOTICES,
    OPERATOR_ACTION,
    PAY,
    PAYOUT,
    REFUND,
    TOPUP,
)

SIGNED_ROUTES = {
    "/v1/topups": TOPUP,
    "/v1/payments": PAY,
    "/v1/refunds": REFUND,
    "/v1/payouts": PAYOUT,
    "/v1/notices": NOTICES,
    "/v1/balance": BALANCE,
    "/v1/account": ACCOUNT_INFO,
    "/v1/operator/actions": OPERATOR_ACTION,
    "/v1/console/login": CONSOLE_LOGIN,
}
# Payments verified on the event loop itself: algorithms whose cost is fixed by the algorithm and
# below a thread hop (measured here, cryptography 50: ES256 ~60 us, Ed25519 ~80 us per verification;
# a run_in_threadpool round trip ~100-120 us). RSA goes to a worker thread: its cost is chosen by
# the key's owner (RSA-2048 ~20 us, 4096 ~60 us, 8192 ~210 us with e = 65537; a 3,070-bit exponent,
# now refused, cost 7 ms), and the loop's worst case must not depend on what a member enrolls.
# cryptography releases the GIL while it verifies, so a thread keeps the loop serving meanwhile.
INLINE_VERIFY_ALGORITHMS = frozenset({ED25519, ES256})


def install_signed_routes(app: FastAPI, center: Center, limits: Limits) -> None:
    _add_enroll_route(app, center, limits)
    for path, msg_type in SIGNED_ROUTES.items():
        handler = _pay_route(center, limits) if msg_type == PAY else _submit_route(center, limits, msg_type)
        app.post(
            path,
            response_model=SignedResponseOut,
            response_model_exclude_none=True,
            name=f"submit_{msg_type}",
            summary=f"Submit a signed {msg_type!r} message",
        )(handler)
    _add_batch_route(app, center, limits)


def _add_enroll_route(app: FastAPI, center: Center, limits: Limits) -> None:
    @app.post("/v1/enroll", response_model=ReceiptOut)
    def enroll(envelope: EnvelopeIn, request: Request) -> dict:
        observability.note_signed(envelope.kid, center.clock_ms())
        parsed = parse_envelope(envelope)
        done = limits.begin_enrollment(request_client(request).address, parsed.kid)
        try:
            response = center.enroll(parsed)
        except ApiError as error:
            # A refusal recorded as final (signed) stored a row: it counts like an accepted
            # enrollment. One that stored nothing (malformed, bad signature, try again) is given back.
            done(error.refusal is not None)
            raise
        except BaseException:
            done(False)
            raise
        done(True)
        observability.observe_answer(response)  # ids for the log
        return response


def _submit_route(center: Center, limits: Limits, msg_type: str):
    per_key = (SIGNED_PER_KEY, NOTICES_PER_KEY) if msg_type == NOTICES else (SIGNED_PER_KEY,)

    def submit(envelope: EnvelopeIn) -> dict:
        observability.note_signed(envelope.kid, center.clock_ms())
        parsed = parse_envelope(envelope)
        limits.check_key(parsed.kid, per_key)
        try:
            response = center.submit(parsed, msg_type)
        except ApiError as error:
            limits.charge_answered(parsed.kid, per_key, error.code)
            raise
        limits.charge_answered(parsed.kid, per_key)
        observability.observe_answer(response)  # counts an accepted payment from its receipt; no SQL
        return response

    return submit


def _pay_route(center: Center, limits: Limits):
    async def pay(envelope: EnvelopeIn) -> Response:
        # The hot path: no worker thread is held while the payment waits for its group commit
        # (center.pipeline.group_commit), and the answer (our own dict, already exact) skips the
        # response model's re-validation. Verifying is CPU work done here only for a cached key of a
        # fixed, small cost (INLINE_VERIFY_ALGORITHMS); otherwise in a worker thread.
        observability.note_signed(envelope.kid, center.clock_ms())
        parsed = parse_envelope(envelope)
        if parsed.alg in INLINE_VERIFY_ALGORITHMS and center.knows_key(parsed.kid):
            # verify_envelope insists the key's algorithm is parsed.alg
            request = center.verify_request(parsed, PAY)
        else:
            request = await run_in_threadpool(center.verify_request, parsed, PAY)
        limits.charge_key(request.signer.kid, (PAYMENTS_PER_KEY,))  # verified: the holder's own allowance
        response = await center.pay_async(request)
        observability.observe_answer(response)
        return JSONResponse(response)

    return pay


def _add_batch_route(app: FastAPI, center: Center, limits: Limits) -> None:
    @app.post(
        BATCH_PATH,
        response_model=BatchOut,
        response_model_exclude_none=True,
        summary="Submit many individually signed payments; each is answered on its own",
    )
    def submit_payment_batch(batch: BatchIn) -> Response:
        started_ms = center.clock_ms()  # for observe_batch: a resent item's stored receipt is older
        if not batch.payments:
            raise ApiError("invalid_request", "a batch needs at least one signed payment", 422)
        if len(batch.payments) > MAX_BATCH_ITEMS:
            raise ApiError("batch_too_large", f"a batch holds at most {MAX_BATCH_ITEMS} signed payments")
        answers = _answer_batch(center, limits, batch.payments)
        observability.observe_batch(answers, started_ms)  # payments and refusals by code; no SQL
        # Our own answers, already exact: skip the response model's re-validation of 100 receipts.
        return JSONResponse({"results": answers})


def _answer_batch(center: Center, limits: Limits, items: list[EnvelopeIn]) -> list[dict]:
    """One answer per item, in order; a malformed or rate-limited item does not sink the others."""
    envelopes, answers = [], {}
    for index, item in enumerate(items):
        try:
            envelope = parse_envelope(item)
            limits.check_key(envelope.kid, (PAYMENTS_PER_KEY,))
            envelopes.append((index, envelope))
        except ApiError as error:  # malformed, or this payer's allowance is spent
            answers[index] = error_answer(error)
    if envelopes:
        results = center.submit_batch([envelope for _, envelope in envelopes], PAY)
        for (index, envelope), result in zip(envelopes, results, strict=True):
            answers[index] = result
            limits.charge_answered(envelope.kid, (PAYMENTS_PER_KEY,), result.get("error", {}).get("code"))
    return [answers[index] for index in range(len(items))]
