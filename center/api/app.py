"""HTTP routes. Thin: parse, call center.pipeline.service, translate errors."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from center.ops import observability
from center.console.routes import install_console, install_console_headers
from center.console.auth import install_console_auth, request_client
from center.pipeline.batch import MAX_BATCH_ITEMS, error_answer
from center.errors import ApiError
from center.api.key_routes import install_key_routes
from center.api.ratelimit import NOTICES_PER_KEY, PAYMENTS_PER_KEY, SIGNED_PER_KEY, Limits, rate_limited
from center.pipeline.service import Center
from paywire.algorithms import ED25519, ES256
from paywire.envelope import Envelope, b64url_encode
from paywire.errors import WireError
from paywire.messages import BALANCE, CONSOLE_LOGIN, NOTICES, OPERATOR_ACTION, PAY, PAYOUT, REFUND, TOPUP
from paywire.money import minor_exponent
from starlette.concurrency import run_in_threadpool

MAX_BODY_BYTES = 64 * 1024
BATCH_PATH = "/v1/payments/batch"
# A batch carries up to center.pipeline.batch.MAX_BATCH_ITEMS envelopes of up to ~8 KiB each.
MAX_BATCH_BODY_BYTES = 1024 * 1024
# Payments verified on the event loop itself: algorithms whose cost is fixed by the algorithm and
# below a thread hop (measured here, cryptography 50: ES256 ~60 us, Ed25519 ~80 us per verification;
# a run_in_threadpool round trip ~100-120 us). RSA goes to a worker thread: its cost is chosen by
# the key's owner (RSA-2048 ~20 us, 4096 ~60 us, 8192 ~210 us with e = 65537; a 3,070-bit exponent,
# now refused, cost 7 ms), and the loop's worst case must not depend on what a member enrolls.
# cryptography releases the GIL while it verifies, so a thread keeps the loop serving meanwhile.
INLINE_VERIFY_ALGORITHMS = frozenset({ES256, ED25519})
# Answers that come before a signature is known good: a request naming someone else's key id
# gets one of these and must not spend that key's allowance (center.api.ratelimit).
UNVERIFIED_CODES = frozenset({"unknown_key", "bad_signature", "algorithm_mismatch", "kid_mismatch",
                              "bad_public_key", "unsupported_algorithm", "key_not_allowed"})


class EnvelopeIn(BaseModel):
    """A signed envelope; see paywire.envelope for the exact rules."""

    model_config = ConfigDict(extra="forbid")
    payload: str
    alg: str
    kid: str
    sig: str


class ReceiptOut(BaseModel):
    receipt: EnvelopeIn




class SignedResponseOut(BaseModel):
    receipt: EnvelopeIn
    notices: list[EnvelopeIn] | None = None


SIGNED_ROUTES = {"/v1/topups": TOPUP, "/v1/payments": PAY, "/v1/refunds": REFUND, "/v1/payouts": PAYOUT,
                 "/v1/notices": NOTICES, "/v1/balance": BALANCE,
                 "/v1/operator/actions": OPERATOR_ACTION, "/v1/console/login": CONSOLE_LOGIN}


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
    name_flagged: bool = False  # equal to or confusable with an earlier store's name (center.keys.store_names)
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


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


class BatchIn(BaseModel):
    """Individually signed payments from one terminal or gateway; at most 100 (center.pipeline.batch)."""

    model_config = ConfigDict(extra="forbid")
    payments: list[EnvelopeIn]


class BatchItemOut(BaseModel):
    """Exactly one of: the receipt, or the error with the status it would have had alone."""

    receipt: EnvelopeIn | None = None
    error: ErrorDetail | None = None
    status: int | None = None


class BatchOut(BaseModel):
    results: list[BatchItemOut]


ERROR_RESPONSES = {status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422, 429)}


def create_app(center: Center, limits: Limits | None = None) -> FastAPI:
    """The API; `limits` from config.json (center.api.ratelimit.limits_from_config), else the defaults."""
    app = FastAPI(title="tokenpay settlement center", version="1", responses=ERROR_RESPONSES)
    app.state.center = center
    app.state.limits = limits = limits or Limits()
    _install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    install_console_headers(app)  # the operator console's security headers
    observability.install_observability(app)  # /metrics, request logs; outermost middleware

    @app.get("/healthz", response_model=HealthOut)
    def healthz() -> dict:
        with center.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "center_id": center.center_id}

    @app.get("/v1/center", response_model=CenterInfoOut)
    def center_info() -> dict:
        signer = center.signer
        return {"center_id": center.center_id, "currency": center.currency,
                "minor_exponent": minor_exponent(center.currency), "receipt_kid": signer.kid,
                "receipt_alg": signer.alg, "receipt_public_key": b64url_encode(signer.spki)}

    @app.get("/v1/stores/{store_id}", response_model=StoreInfoOut)
    def store_info(store_id: str) -> dict:
        return center.store_info(store_id)

    @app.post("/v1/enroll", response_model=ReceiptOut)
    def enroll(envelope: EnvelopeIn, request: Request) -> dict:
        observability.note_signed(envelope.kid, center.clock_ms())
        parsed = _parse_envelope(envelope)
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

    for path, msg_type in SIGNED_ROUTES.items():
        _add_signed_route(app, center, limits, path, msg_type)
    _add_batch_route(app, center, limits)

    @app.post("/v1/funding/webhook", response_model=TopupDecisionOut, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": WebhookIn.model_json_schema()}}}})
    async def funding_webhook(request: Request, x_tokenpay_timestamp: Annotated[str | None, Header()] = None,
                              x_tokenpay_signature: Annotated[str | None, Header()] = None) -> dict:
        body = await request.body()
        return await run_in_threadpool(center.funding_webhook, request.headers.get("x-tokenpay-timestamp"),
                                       request.headers.get("x-tokenpay-signature"), body)

    install_console_auth(app, center)
    install_key_routes(app, center)  # POST /v1/keys/rotate (center.keys.lifecycle)
    install_console(app, center)  # the operator console under /console (page, read APIs, CSV); last, see there
    return app


def _add_signed_route(app: FastAPI, center: Center, limits: Limits, path: str, msg_type: str) -> None:
    per_key = (SIGNED_PER_KEY, NOTICES_PER_KEY) if msg_type == NOTICES else (SIGNED_PER_KEY,)

    def submit(envelope: EnvelopeIn) -> dict:
        observability.note_signed(envelope.kid, center.clock_ms())
        parsed = _parse_envelope(envelope)
        _check_key_allowance(limits, parsed.kid, per_key)
        try:
            response = center.submit(parsed, msg_type)
        except ApiError as error:
            if error.code not in UNVERIFIED_CODES:  # the key's holder sent it: it counts
                _charge_key(limits, parsed.kid, per_key)
            raise
        _charge_key(limits, parsed.kid, per_key)
        observability.observe_answer(response)  # counts an accepted payment from its receipt; no SQL
        return response

    async def pay(envelope: EnvelopeIn) -> Response:
        # The hot path: no worker thread is held while the payment waits for its group commit
        # (center.pipeline.group_commit), and the answer (our own dict, already exact) skips the response
        # model's re-validation. Verifying is CPU work done here only for a cached key of a
        # fixed, small cost (INLINE_VERIFY_ALGORITHMS); otherwise in a worker thread.
        observability.note_signed(envelope.kid, center.clock_ms())
        parsed = _parse_envelope(envelope)
        if parsed.alg in INLINE_VERIFY_ALGORITHMS and center.knows_key(parsed.kid):
            request = center.verify_request(parsed, PAY)  # verify_envelope insists the key's algorithm is parsed.alg
        else:
            request = await run_in_threadpool(center.verify_request, parsed, PAY)
        limits.charge_key(request.signer.kid, (PAYMENTS_PER_KEY,))  # verified: the holder's own allowance
        response = await center.pay_async(request)
        observability.observe_answer(response)
        return JSONResponse(response)

    app.post(path, response_model=SignedResponseOut, response_model_exclude_none=True, name=f"submit_{msg_type}",
             summary=f"Submit a signed {msg_type!r} message")(pay if msg_type == PAY else submit)


def _check_key_allowance(limits: Limits, kid: str, names: tuple[str, ...]) -> None:
    """Refuse a key whose allowance is spent; spends nothing (the signature is not checked yet)."""
    for name in names:
        wait_s = limits.key_wait_s(kid, name)
        if wait_s:
            raise rate_limited(wait_s, f"too many requests from this key ({name.replace('_', ' ')})")


def _charge_key(limits: Limits, kid: str, names: tuple[str, ...]) -> None:
    for name in names:
        limits.charge_key_after(kid, name)


def _add_batch_route(app: FastAPI, center: Center, limits: Limits) -> None:
    @app.post(BATCH_PATH, response_model=BatchOut, response_model_exclude_none=True,
              summary="Submit many individually signed payments; each is answered on its own")
    def submit_payment_batch(batch: BatchIn) -> Response:
        started_ms = center.clock_ms()  # for observe_batch: a resent item's stored receipt is older
        if not batch.payments:
            raise ApiError("invalid_request", "a batch needs at least one signed payment", 422)
        if len(batch.payments) > MAX_BATCH_ITEMS:
            raise ApiError("batch_too_large", f"a batch holds at most {MAX_BATCH_ITEMS} signed payments")
        envelopes, answers = [], {}
        for index, item in enumerate(batch.payments):
            try:
                envelope = Envelope.from_json(item.model_dump())
                _check_key_allowance(limits, envelope.kid, (PAYMENTS_PER_KEY,))
                envelopes.append((index, envelope))
            except WireError as error:  # one malformed item does not sink the others
                answers[index] = error_answer(ApiError.from_wire(error))
            except ApiError as error:  # rate_limited: this payer's allowance is spent
                answers[index] = error_answer(error)
        if envelopes:
            results = center.submit_batch([envelope for _, envelope in envelopes], PAY)
            answers.update({index: result for (index, _), result in zip(envelopes, results)})
            for (_, envelope), result in zip(envelopes, results):
                if result.get("error", {}).get("code") not in UNVERIFIED_CODES:
                    limits.charge_key_after(envelope.kid, PAYMENTS_PER_KEY)
        observability.observe_batch(answers.values(), started_ms)  # payments and refusals by code; no SQL
        # Our own answers, already exact: skip the response model's re-validation of 100 receipts.
        return JSONResponse({"results": [answers[index] for index in range(len(batch.payments))]})


def _parse_envelope(envelope: EnvelopeIn) -> Envelope:
    try:
        return Envelope.from_json(envelope.model_dump())
    except WireError as error:
        raise ApiError.from_wire(error) from None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        observability.note_error(error.code)
        headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"request does not match the schema at {where or 'body'}: {first.get('msg', 'invalid')}"
        observability.note_error("invalid_request")
        return JSONResponse(ApiError("invalid_request", message).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400:  # FastAPI: the body could not be decoded at all
            observability.note_error("invalid_request")
            return JSONResponse(ApiError("invalid_request", "request body is not UTF-8 JSON").body(), status_code=422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        observability.note_error(code)
        return JSONResponse(ApiError(code, str(error.detail), error.status_code).body(), status_code=error.status_code,
                            headers=getattr(error, "headers", None))


class BodyLimitMiddleware:
    """Refuse bodies over MAX_BODY_BYTES however they are framed (Content-Length or chunked).

    A declared Content-Length over the limit is refused before reading; otherwise the body is
    read as it arrives, refused as soon as it passes the limit, and replayed to the app.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = MAX_BATCH_BODY_BYTES if scope["path"] == BATCH_PATH else MAX_BODY_BYTES
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(scope, receive, send, limit)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(scope, receive, send, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(scope, receive, send, limit: int) -> None:
    error = ApiError("body_too_large", f"request bodies here are limited to {limit} bytes")
    observability.note_error(error.code)
    await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
