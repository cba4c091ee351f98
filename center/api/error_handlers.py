"""Every error answer has one shape, {"error": {"code", "message"}}: ours, FastAPI's and Starlette's."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from center.errors import ApiError
from center.ops import observability

# Starlette's own statuses, as codes (anything else it raises: http_error).
HTTP_STATUS_CODES = {404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI) -> None:
    app.exception_handler(ApiError)(api_error)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.exception_handler(StarletteHTTPException)(http_error)


async def api_error(_request: Request, error: ApiError) -> JSONResponse:
    observability.note_error(error.code)
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = f"request does not match the schema at {where or 'body'}: {first.get('msg', 'invalid')}"
    observability.note_error("invalid_request")
    return JSONResponse(ApiError("invalid_request", message).body(), status_code=422)


async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    if error.status_code == 400:  # FastAPI: the body could not be decoded at all
        observability.note_error("invalid_request")
        body = ApiError("invalid_request", "request body is not UTF-8 JSON").body()
        return JSONResponse(body, status_code=422)
    code = HTTP_STATUS_CODES.get(error.status_code, "http_error")
    observability.note_error(code)
    return JSONResponse(
        ApiError(code, str(error.detail), error.status_code).body(),
        status_code=error.status_code,
        headers=getattr(error, "headers", None),
    )
