"""The API: create_app assembles the middleware, the error handlers and every route.

The routes are thin (parse, call center.pipeline.service, translate errors). Where each part is:
schemas (center.api.schemas), the body limit (center.api.middleware), error bodies
(center.api.error_handlers), the signed routes and the payment batch (center.api.signed_routes),
key rotation (center.api.key_routes), request limits (center.api.ratelimit), the console's login
and pages (center.console).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header, Request
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from center.api.error_handlers import install_error_handlers
from center.api.key_routes import install_key_routes
from center.api.log_routes import install_log_routes
from center.api.middleware import BodyLimitMiddleware
from center.api.ratelimit import Limits
from center.api.schemas import (
    ERROR_RESPONSES,
    CenterInfoOut,
    HealthOut,
    StoreInfoOut,
    TopupDecisionOut,
    WebhookIn,
)
from center.api.signed_routes import install_signed_routes
from center.api.unavailable import REQUEST_DEADLINE_S, DeadlineMiddleware, install_unavailable_handlers
from center.console.auth import install_console_auth
from center.console.routes import install_console, install_console_headers
from center.ops import observability
from center.pipeline.service import Center
from paywire.envelope import b64url_encode
from paywire.money import minor_exponent


def create_app(
    center: Center, limits: Limits | None = None, deadline_s: float = REQUEST_DEADLINE_S
) -> FastAPI:
    """The API; `limits` from config.json (center.api.ratelimit.limits_from_config), else the defaults;
    `deadline_s`: a request not answered by then gets 503 database_unavailable (center.api.unavailable)."""
    app = FastAPI(title="tokenpay settlement center", version="1", responses=ERROR_RESPONSES)
    app.state.center = center
    app.state.limits = limits = limits or Limits()
    install_error_handlers(app)
    install_unavailable_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(DeadlineMiddleware, deadline_s=deadline_s)
    install_console_headers(app)  # the operator console's security headers
    observability.install_observability(app)  # /metrics, request logs; outermost middleware
    _add_public_routes(app, center)
    install_signed_routes(app, center, limits)
    _add_funding_webhook(app, center)
    install_console_auth(app, center)
    install_key_routes(app, center)  # POST /v1/keys/rotate (center.keys.lifecycle)
    install_log_routes(app, center, limits)  # GET /v1/log/sth|consistency|inclusion (signed reads)
    # The operator console under /console (page, read APIs, CSV); last, see there.
    install_console(app, center)
    return app


def _add_public_routes(app: FastAPI, center: Center) -> None:
    @app.get("/healthz", response_model=HealthOut)
    def healthz() -> dict:
        with center.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "center_id": center.center_id}

    @app.get("/v1/center", response_model=CenterInfoOut)
    def center_info() -> dict:
        signer = center.signer
        return {
            "center_id": center.center_id,
            "currency": center.currency,
            "minor_exponent": minor_exponent(center.currency),
            "receipt_kid": signer.kid,
            "receipt_alg": signer.alg,
            "receipt_public_key": b64url_encode(signer.spki),
        }

    @app.get("/v1/stores/{store_id}", response_model=StoreInfoOut)
    def store_info(store_id: str) -> dict:
        return center.store_info(store_id)


def _add_funding_webhook(app: FastAPI, center: Center) -> None:
    # The body is read raw: its signature covers the exact bytes. The schema is documented only.
    body_schema = {
        "required": True,
        "content": {"application/json": {"schema": WebhookIn.model_json_schema()}},
    }

    @app.post(
        "/v1/funding/webhook", response_model=TopupDecisionOut, openapi_extra={"requestBody": body_schema}
    )
    async def funding_webhook(
        request: Request,
        x_tokenpay_timestamp: Annotated[str | None, Header()] = None,
        x_tokenpay_signature: Annotated[str | None, Header()] = None,
    ) -> dict:
        body = await request.body()
        return await run_in_threadpool(
            center.funding_webhook,
            request.headers.get("x-tokenpay-timestamp"),
            request.headers.get("x-tokenpay-signature"),
            body,
        )
