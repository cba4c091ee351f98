"""HTTP routes. Thin: parse, call center.service, translate errors."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from center import observability
from center.console import install_console, install_console_headers
from center.console_auth import install_console_auth
from center.batch import MAX_BATCH_ITEMS, error_answer
from center.errors import ApiError
from center.key_routes import install_key_routes
from center.service import Center
from paywire.envelope import Envelope, b64url_encode
from paywire.errors import WireError
from paywire.messages import BALANCE, CONSOLE_LOGIN, NOTICES, OPERATOR_ACTION, PAY, PAYOUT, REFUND, TOPUP
from paywire.money import minor_exponent
from starlette.concurrency import run_in_threadpool

MAX_BODY_BYTES = 64 * 1024
BATCH_PATH = "/v1/payments/batch"
# A batch carries up to center.batch.MAX_BATCH_ITEMS envelopes of up to ~8 KiB each.
MAX_BATCH_BODY_BYTES = 1024 * 1024


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
    """Individually signed payments from one terminal or gateway; at most 100 (center.batch)."""

    model_config = ConfigDict(extra="forbid")
    payments: list[EnvelopeIn]


class BatchItemOut(BaseModel):
    """Exactly one of: the receipt, or the error with the status it would have had alone."""

    receipt: EnvelopeIn | None = None
    error: ErrorDetail | None = None
    status: int | None = None


class BatchOut(BaseModel):
    results: list[BatchItemOut]


ERROR_RESPONSES = {status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422)}


def create_app(center: Center) -> FastAPI:
    app = FastAPI(title="tokenpay settlement center", version="1", responses=ERROR_RESPONSES)
    app.state.center = center
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
    def enroll(envelope: EnvelopeIn) -> dict:
        observability.note_signed(envelope.kid, center.clock_ms())
        response = center.enroll(_parse_envelope(envelope))
        observability.observe_answer(response)  # ids for the log
        return response

    for path, msg_type in SIGNED_ROUTES.items():
        _add_signed_route(app, center, path, msg_type)
    _add_batch_route(app, center)

    @app.post("/v1/funding/webhook", response_model=TopupDecisionOut, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": WebhookIn.model_json_schema()}}}})
    async def funding_webhook(request: Request, x_tokenpay_timestamp: Annotated[str | None, Header()] = None,
                              x_tokenpay_signature: Annotated[str | None, Header()] = None) -> dict:
        body = await request.body()
        return await run_in_threadpool(center.funding_webhook, request.headers.get("x-tokenpay-timestamp"),
                                       request.headers.get("x-tokenpay-signature"), body)

    install_console_auth(app, center)
    install_key_routes(app, center)  # POST /v1/keys/rotate (center.key_lifecycle)
    install_console(app, center)  # the operator console under /console (page, read APIs, CSV); last, see there
    return app


def _add_signed_route(app: FastAPI, center: Center, path: str, msg_type: str) -> None:
    def submit(envelope: EnvelopeIn) -> dict:
        observability.note_signed(envelope.kid, center.clock_ms())
        response = center.submit(_parse_envelope(envelope), msg_type)
        observability.observe_answer(response)  # counts an accepted payment from its receipt; no SQL
        return response

    async def pay(envelope: EnvelopeIn) -> Response:
        # The hot path: no worker thread is held while the payment waits for its group commit
        # (center.group_commit), and the answer (our own dict, already exact) skips the response
        # model's re-validation. Verifying is CPU work done here, unless the key must be read.
        observability.note_signed(envelope.kid, center.clock_ms())
        parsed = _parse_envelope(envelope)
        if center.knows_key(parsed.kid):
            request = center.verify_request(parsed, PAY)
        else:
            request = await run_in_threadpool(center.verify_request, parsed, PAY)
        response = await center.pay_async(request)
        observability.observe_answer(response)
        return JSONResponse(response)

    app.post(path, response_model=SignedResponseOut, response_model_exclude_none=True, name=f"submit_{msg_type}",
             summary=f"Submit a signed {msg_type!r} message")(pay if msg_type == PAY else submit)


def _add_batch_route(app: FastAPI, center: Center) -> None:
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
                envelopes.append((index, Envelope.from_json(item.model_dump())))
            except WireError as error:  # one malformed item does not sink the others
                answers[index] = error_answer(ApiError.from_wire(error))
        if envelopes:
            results = center.submit_batch([envelope for _, envelope in envelopes], PAY)
            answers.update({index: result for (index, _), result in zip(envelopes, results)})
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
        return JSONResponse(error.body(), status_code=error.status)

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
