"""HTTP routes. Thin: parse, call center.service, translate errors."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from center.errors import ApiError
from center.service import Center
from paywire.envelope import Envelope, b64url_encode
from paywire.errors import WireError

MAX_BODY_BYTES = 64 * 1024


class EnvelopeIn(BaseModel):
    """A signed envelope; see paywire.envelope for the exact rules."""

    model_config = ConfigDict(extra="forbid")
    payload: str
    alg: str
    kid: str
    sig: str


class ReceiptOut(BaseModel):
    receipt: EnvelopeIn


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES = {status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422)}


def create_app(center: Center) -> FastAPI:
    app = FastAPI(title="tokenpay settlement center", version="1", responses=ERROR_RESPONSES)
    app.state.center = center
    _install_error_handlers(app)
    _install_body_limit(app)

    @app.get("/healthz")
    def healthz() -> dict:
        with center.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "center_id": center.center_id}

    @app.get("/v1/center")
    def center_info() -> dict:
        signer = center.signer
        return {"center_id": center.center_id, "currency": center.currency, "receipt_kid": signer.kid,
                "receipt_alg": signer.alg, "receipt_public_key": b64url_encode(signer.spki)}

    @app.post("/v1/enroll", response_model=ReceiptOut)
    def enroll(envelope: EnvelopeIn) -> dict:
        receipt = center.enroll(_parse_envelope(envelope))
        return {"receipt": receipt.to_json()}

    return app


def _parse_envelope(envelope: EnvelopeIn) -> Envelope:
    try:
        return Envelope.from_json(envelope.model_dump())
    except WireError as error:
        raise ApiError.from_wire(error) from None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"request does not match the schema at {where or 'body'}: {first.get('msg', 'invalid')}"
        return JSONResponse(ApiError("invalid_request", message).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(ApiError(code, str(error.detail), error.status_code).body(), status_code=error.status_code)


def _install_body_limit(app: FastAPI) -> None:
    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            error = ApiError("body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
            return JSONResponse(error.body(), status_code=error.status)
        return await call_next(request)
