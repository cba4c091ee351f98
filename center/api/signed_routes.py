"""The signed API: enrollment, one route per signed message type, and the payment batch.

Thin: parse the envelope, ask the limiter (center.api.ratelimit), call center.pipeline.service,
count the answer for the metrics. To route a new signed message type, add it to SIGNED_ROUTES.

The two payment routes are the hot path and read their bodies themselves (orjson, then the
checks EnvelopeIn and BatchIn stand for, with the same refusal: 422 invalid_request), and send
their answers as orjson bytes: no pydantic model per request, in or out. Their OpenAPI entries
still document EnvelopeIn and BatchIn (openapi_extra), so the documented contract is unchanged
(tests/test_group_booking.py holds the lean parse to the model route's answers).
"""

from __future__ import annotations

import json

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
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
from paywire.envelope import ENVELOPE_FIELDS, Envelope
from paywire.errors import WireError
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


def _documented_body(schema: dict) -> dict:
    """The OpenAPI request body of a route that reads its body itself: the model it checks against."""
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}


# EnvelopeIn is a component of the app's schema (every other signed route takes it). BatchIn is taken
# by no route now, so it is given inline; the EnvelopeIn it names is that component.
_ENVELOPE_SCHEMA = {"$ref": "#/components/schemas/EnvelopeIn"}
_BATCH_SCHEMA = {
    key: value
    for key, value in BatchIn.model_json_schema(ref_template="#/components/schemas/{model}").items()
    if key != "$defs"
}


def install_signed_routes(app: FastAPI, center: Center, limits: Limits) -> None:
    _add_enroll_route(app, center, limits)
    for path, msg_type in SIGNED_ROUTES.items():
        lean = msg_type == PAY
        handler = _pay_route(center, limits) if lean else _submit_route(center, limits, msg_type)
        app.post(
            path,
            response_model=SignedResponseOut,
            response_model_exclude_none=True,
            name=f"submit_{msg_type}",
            summary=f"Submit a signed {msg_type!r} message",
            openapi_extra=_documented_body(_ENVELOPE_SCHEMA) if lean else None,
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
    async def pay(request: Request) -> Response:
        # The hot path: no worker thread is held while the payment waits for its group commit
        # (center.pipeline.group_commit), and the answer (our own dict, already exact) skips the
        # response model's re-validation. Verifying is CPU work done here only for a cached key of a
        # fixed, small cost (INLINE_VERIFY_ALGORITHMS); otherwise in a worker thread.
        document = _json_body(request, await request.body())
        _check_envelope_document(document, "body")
        observability.note_signed(document["kid"], center.clock_ms())
        parsed = envelope_from_document(document, "body")
        if parsed.alg in INLINE_VERIFY_ALGORITHMS and center.knows_key(parsed.kid):
            # verify_envelope insists the key's algorithm is parsed.alg
            verified = center.verify_request(parsed, PAY)
        else:
            verified = await run_in_threadpool(center.verify_request, parsed, PAY)
        limits.charge_key(verified.signer.kid, (PAYMENTS_PER_KEY,))  # verified: the holder's own allowance
        response = await center.pay_async(verified)
        observability.observe_answer(response)
        return json_response(response)

    return pay


def _add_batch_route(app: FastAPI, center: Center, limits: Limits) -> None:
    @app.post(
        BATCH_PATH,
        response_model=BatchOut,
        response_model_exclude_none=True,
        summary="Submit many individually signed payments; each is answered on its own",
        openapi_extra=_documented_body(_BATCH_SCHEMA),
    )
    async def submit_payment_batch(request: Request) -> Response:
        started_ms = center.clock_ms()  # for observe_batch: a resent item's stored receipt is older
        items = _batch_items(_json_body(request, await request.body()))
        if not items:
            raise ApiError("invalid_request", "a batch needs at least one signed payment", 422)
        if len(items) > MAX_BATCH_ITEMS:
            raise ApiError("batch_too_large", f"a batch holds at most {MAX_BATCH_ITEMS} signed payments")
        # Verifying 100 signatures and the commit block: a worker thread, not the event loop.
        answers = await run_in_threadpool(_answer_batch, center, limits, items)
        observability.observe_batch(answers, started_ms)  # payments and refusals by code; no SQL
        # Our own answers, already exact: skip the response model's re-validation of 100 receipts.
        return json_response({"results": answers})


def _answer_batch(center: Center, limits: Limits, items: list[dict]) -> list[dict]:
    """One answer per item, in order; a malformed or rate-limited item does not sink the others."""
    envelopes, answers = [], {}
    for index, item in enumerate(items):
        try:
            envelope = envelope_from_document(item, f"body.payments.{index}")
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


# --- the payment routes' own body parsing (what EnvelopeIn and BatchIn check) -----------------


def json_response(document: dict) -> Response:
    """JSONResponse's bytes (compact, UTF-8, no NaN), written by orjson."""
    return Response(orjson.dumps(document), media_type="application/json")


def _json_body(request: Request, body: bytes) -> object:
    """The body as JSON, taken as FastAPI takes a JSON body (strict content type: application/json
    or application/*+json, and nothing without a Content-Type). What FastAPI would refuse is refused
    as it is (422 invalid_request)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise _not_the_schema("body", "a JSON body (Content-Type: application/json) is required")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses a little JSON that Python's parser (FastAPI's) takes: lone surrogates, integers
    # past 64 bits, NaN. Those bodies get the answer they always got.
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _not_the_schema("body", "JSON decode error") from None


def _batch_items(document: object) -> list:
    """BatchIn's check: an object with exactly "payments", a list of envelope objects."""
    if not isinstance(document, dict) or set(document) != {"payments"}:
        raise _not_the_schema("body", 'an object with exactly the member "payments" is required')
    items = document["payments"]
    if not isinstance(items, list):
        raise _not_the_schema("body.payments", "a list of signed envelopes is required")
    for index, item in enumerate(items):
        _check_envelope_document(item, f"body.payments.{index}")
    return items


def envelope_from_document(document: object, where: str) -> Envelope:
    """EnvelopeIn's check (exactly payload, alg, kid, sig, all strings: 422 invalid_request), then
    the wire envelope's own rules (center.api.schemas.parse_envelope)."""
    _check_envelope_document(document, where)
    try:
        return Envelope.from_json(document)
    except WireError as error:
        raise ApiError.from_wire(error) from None


def _check_envelope_document(document: object, where: str) -> None:
    if (
        not isinstance(document, dict)
        or document.keys() != ENVELOPE_FIELDS
        or not all(isinstance(value, str) for value in document.values())
    ):
        raise _not_the_schema(where, f"an object with exactly the string members {sorted(ENVELOPE_FIELDS)}")


def _not_the_schema(where: str, message: str) -> ApiError:
    """The refusal center.api.error_handlers.invalid_request gives for a body that fails its model."""
    return ApiError("invalid_request", f"request does not match the schema at {where}: {message}", 422)
