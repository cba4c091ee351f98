"""Console login bound to an operator's token, and the console's sessions.

A device-style flow, so that no password ever exists for the console:

1. The browser asks POST /console/api/challenge. The center makes a challenge
   (16 base32 characters, shown as XXXX-XXXX-XXXX-XXXX) and a random browser
   secret, stores the secret's hash with the challenge, and sets the secret as
   the cookie `tokenpay_console_login`: only that browser can collect the login.
2. The operator types the challenge into `wallet console-login`, which signs a
   `console_login` message with the token key. It goes through the signed
   pipeline (Center.submit: pinned key, audience, freshness, idempotency,
   counter, audit entry with the signed bytes, signed receipt);
   center.pipeline.console_login.approve then marks the challenge approved by
   that operator. Member and store keys are refused (`not_an_operator`).
3. The browser polls GET /console/api/login-status with its cookie. Once the
   challenge is approved, and only once, it gets a session: the cookie
   `tokenpay_console` (15 minutes, Path=/console), a CSRF token, and its role.

Challenges and sessions live in the database (`center serve --workers N` runs
several processes), as hashes only. Where each part is:
- center.console.challenges: making codes (limited per client), their details,
  the login status that issues the session once;
- center.console.sessions: sessions, roles, CSRF, the `console_session(role)`
  dependency every console route uses (a session only reads: every write is a
  request signed on the operator's token);
- center.console.clients: who the client is (address after the trusted-proxy
  rule, user agent), recorded with the challenge and shown by the wallet;
- this module: the HTTP routes and cookies of the login.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Cookie, Depends, FastAPI, Request, Response
from pydantic import BaseModel

from center.console.challenges import CHALLENGE_LIFETIME_MS, challenge_details, create_challenge, login_status
from center.console.clients import configured_trusted_proxies, request_client
from center.console.sessions import (
    SESSION_COOKIE,
    SESSION_LIFETIME_MS,
    ConsoleSession,
    console_session,
    end_session,
    operator_name,
)
from center.errors import ErrorOut
from center.pipeline.service import Center

LOGIN_COOKIE = "tokenpay_console_login"
COOKIE_PATH = "/console"
# The browser keeps the login cookie a little past the challenge, so that a
# late poll hears "expired" rather than "unknown".
LOGIN_COOKIE_GRACE_S = 60
LOGIN_COOKIE_MAX_AGE_S = CHALLENGE_LIFETIME_MS // 1000 + LOGIN_COOKIE_GRACE_S


class ChallengeOut(BaseModel):
    challenge: str
    expires_in_s: int


class ChallengeDetailsOut(BaseModel):
    challenge: str
    client_address: str
    user_agent: str
    created_at_ms: int
    expires_at_ms: int


class LoginStatusOut(BaseModel):
    status: Literal["pending", "approved", "expired"]
    operator_id: str | None = None
    role: Literal["operator", "auditor"] | None = None
    csrf_token: str | None = None


class MeOut(BaseModel):
    operator_id: str
    name: str
    role: Literal["operator", "auditor"]
    kid: str
    csrf_token: str
    expires_at_ms: int


class LogoutOut(BaseModel):
    status: Literal["logged_out"]


def _set_cookie(response: Response, name: str, value: str, max_age_s: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age_s, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict"
    )


def _clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")


def install_console_auth(app: FastAPI, center: Center | None) -> None:
    """Add the console's login routes. `center` may be None (an app built only for its OpenAPI
    spec): the routes read the center from app.state when called."""
    app.state.trusted_proxies = configured_trusted_proxies()

    @app.post(
        "/console/api/challenge",
        response_model=ChallengeOut,
        tags=["console"],
        responses={429: {"model": ErrorOut}},
    )
    def console_challenge(request: Request, response: Response) -> dict:
        challenge, secret = create_challenge(request.app.state.center, request_client(request))
        _set_cookie(response, LOGIN_COOKIE, secret, LOGIN_COOKIE_MAX_AGE_S)
        return {"challenge": challenge, "expires_in_s": CHALLENGE_LIFETIME_MS // 1000}

    @app.get(
        "/v1/console/challenges/{challenge}",
        response_model=ChallengeDetailsOut,
        tags=["console"],
        summary="Who asked for a console login code: shown by `wallet console-login` before it signs",
    )
    def console_challenge_details(challenge: str, request: Request) -> dict:
        return challenge_details(request.app.state.center, challenge)

    @app.get(
        "/console/api/login-status",
        response_model=LoginStatusOut,
        response_model_exclude_none=True,
        tags=["console"],
    )
    def console_login_status(
        request: Request, response: Response, tokenpay_console_login: Annotated[str | None, Cookie()] = None
    ) -> dict:
        answer, session_id = login_status(request.app.state.center, tokenpay_console_login)
        if session_id is not None:
            _set_cookie(response, SESSION_COOKIE, session_id, SESSION_LIFETIME_MS // 1000)
            _clear_cookie(response, LOGIN_COOKIE)
        return answer

    @app.get("/console/api/me", response_model=MeOut, tags=["console"])
    def console_me(request: Request, session: Annotated[ConsoleSession, Depends(console_session())]) -> dict:
        return {
            "operator_id": session.operator_id,
            "name": operator_name(request.app.state.center, session.operator_id),
            "role": session.role,
            "kid": session.kid,
            "csrf_token": session.csrf_token,
            "expires_at_ms": session.expires_at_ms,
        }

    @app.post("/console/api/logout", response_model=LogoutOut, tags=["console"])
    def console_logout(
        request: Request, response: Response, session: Annotated[ConsoleSession, Depends(console_session())]
    ) -> dict:
        end_session(request.app.state.center, session)
        _clear_cookie(response, SESSION_COOKIE)
        return {"status": "logged_out"}
