"""Console login bound to an operator's token, and the console's sessions.

A device-style flow, so that no password ever exists for the console:

1. The browser asks POST /console/api/challenge. The center makes a challenge
   (16 base32 characters, shown as XXXX-XXXX-XXXX-XXXX) and a random browser
   secret, stores the secret's hash with the challenge, and sets the secret as
   the cookie `tokenpay_console_login`: only that browser can collect the login.
2. The operator types the challenge into `wallet console-login`, which signs a
   `console_login` message with the token key. It goes through the signed
   pipeline (Center.submit: pinned key, audience, freshness, idempotency,
   counter, audit entry with the signed bytes, signed receipt); `approve` below
   then marks the challenge approved by that operator. Member and store keys
   are refused (`not_an_operator`).
3. The browser polls GET /console/api/login-status with its cookie. Once the
   challenge is approved, and only once, it gets a session: the cookie
   `tokenpay_console` (15 minutes, Path=/console), a CSRF token, and its role.

Challenges and sessions live in the database (`center serve --workers N` runs
several processes); the database holds only SHA-256 hashes of the browser
secret and the session id, so reading it does not let anyone log in. Every
request re-checks the session against its key: revoking an operator's key
ends that operator's sessions at once.

Routes that need a session depend on `console_session(role)` (see there).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Callable, Literal

from fastapi import Cookie, Depends, FastAPI, Header, Request, Response
from pydantic import BaseModel
from sqlalchemy import Connection, delete, func, insert, select, update

from center.db import console_challenges, console_sessions, keys, parties
from center.errors import ApiError, Refusal
from center.operator_actions import require_operator_key
from center.operators import OPERATOR_ROLES
from paywire.messages import Header as WireHeader

if TYPE_CHECKING:
    from center.handlers import Outcome
    from center.service import Center, Signer

CHALLENGE_LIFETIME_MS = 120_000
SESSION_LIFETIME_MS = 15 * 60_000
LOGIN_COOKIE = "tokenpay_console_login"
SESSION_COOKIE = "tokenpay_console"
COOKIE_PATH = "/console"
CSRF_HEADER = "X-CSRF-Token"
# The browser keeps the login cookie a little past the challenge, so that a
# late poll hears "expired" rather than "unknown".
LOGIN_COOKIE_MAX_AGE_S = CHALLENGE_LIFETIME_MS // 1000 + 60
# Challenges are made without authentication: cap how many may wait at once,
# and forget old ones and old sessions as new ones are made.
MAX_PENDING_CHALLENGES = 1000
PURGE_AFTER_MS = 24 * 3600 * 1000
CHALLENGE_BYTES = 10  # 80 bits: 16 base32 characters
SECRET_BYTES = 32
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
# A higher rank may do what a lower one may: operators can read what auditors read.
ROLE_RANK = {"auditor": 1, "operator": 2}
assert set(ROLE_RANK) == set(OPERATOR_ROLES)
SAFE_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class ConsoleSession:
    """A live console session. session_id is the SHA-256 (hex) of the cookie's
    session id, as stored: safe to log; the cookie value itself is never kept."""

    session_id: str
    operator_id: str
    kid: str
    role: str
    csrf_token: str
    expires_at_ms: int


# --- pure helpers ---------------------------------------------------------------------

def new_challenge() -> str:
    text = base64.b32encode(secrets.token_bytes(CHALLENGE_BYTES)).decode("ascii")
    assert len(text) == 16 and "=" not in text
    return "-".join(text[i:i + 4] for i in range(0, 16, 4))


def new_secret() -> str:
    secret = secrets.token_urlsafe(SECRET_BYTES)
    assert SECRET_PATTERN.fullmatch(secret)
    return secret


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def well_formed_secret(value: str | None) -> str | None:
    """A cookie value we could have issued, or None (so odd cookies never reach the database)."""
    return value if value is not None and SECRET_PATTERN.fullmatch(value) else None


def role_allows(session_role: str, required: str | None) -> bool:
    return required is None or ROLE_RANK[session_role] >= ROLE_RANK[required]


def csrf_matches(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    # Header values arrive as latin-1 text; compare bytes in constant time.
    return hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode("ascii"))


# --- the signed approval (handler of `console_login` messages) -----------------------

def approve(center: "Center", conn: Connection, signer: "Signer", header: WireHeader, body: dict,
            now: int) -> "Outcome":
    """Mark the challenge approved by this operator's key, inside the signed request's transaction."""
    from center.handlers import Outcome

    require_operator_key(signer)
    challenge = body["challenge"]
    row = conn.execute(select(console_challenges).where(console_challenges.c.challenge == challenge)
                       .with_for_update()).first()
    if row is None or row.consumed or row.approved_kid is not None:
        raise Refusal("unknown_challenge", f"no pending console login {challenge}: start a new login in the browser")
    if now >= row.expires_at_ms:
        raise Refusal("challenge_expired", f"console login {challenge} has expired: start a new login in the browser")
    approved = conn.execute(
        update(console_challenges)
        .where(console_challenges.c.challenge == challenge, console_challenges.c.approved_kid.is_(None),
               console_challenges.c.consumed.is_(False))
        .values(approved_kid=signer.kid, approved_operator_id=signer.party_id, approved_at_ms=now))
    if approved.rowcount != 1:
        raise Refusal("unknown_challenge", f"console login {challenge} was approved meanwhile")
    return Outcome({"action": "console_login_approved", "challenge": challenge, "operator_id": signer.party_id,
                    "role": signer.role, "expires_at_ms": row.expires_at_ms})


# --- challenges, login status, sessions ------------------------------------------------

def create_challenge(center: "Center") -> tuple[str, str]:
    """A new challenge and the browser secret bound to it."""
    now = center.clock_ms()
    challenge, secret = new_challenge(), new_secret()
    with center.engine.begin() as conn:
        _purge(conn, now)
        waiting = conn.execute(select(func.count()).select_from(console_challenges).where(
            console_challenges.c.expires_at_ms > now, console_challenges.c.consumed.is_(False))).scalar_one()
        if waiting >= MAX_PENDING_CHALLENGES:
            raise ApiError("too_many_challenges", "too many console logins are waiting; try again in two minutes")
        conn.execute(insert(console_challenges).values(
            challenge=challenge, browser_secret_sha256=secret_hash(secret), created_at_ms=now,
            expires_at_ms=now + CHALLENGE_LIFETIME_MS, approved_kid=None, approved_operator_id=None,
            approved_at_ms=None, consumed=False))
    return challenge, secret


def login_status(center: "Center", browser_secret: str | None) -> tuple[dict, str | None]:
    """(answer, new session id or None). The session is issued once, when the challenge is approved."""
    secret = well_formed_secret(browser_secret)
    if secret is None:
        raise ApiError("unknown_challenge", "this browser has no console login waiting: start a new login")
    now = center.clock_ms()
    with center.engine.begin() as conn:
        row = conn.execute(select(console_challenges)
                           .where(console_challenges.c.browser_secret_sha256 == secret_hash(secret))
                           .with_for_update()).first()
        if row is None or row.consumed:
            raise ApiError("unknown_challenge", "this browser has no console login waiting: start a new login")
        if now >= row.expires_at_ms:
            return {"status": "expired"}, None
        if row.approved_kid is None:
            return {"status": "pending"}, None
        return _issue_session(conn, row, now)


def _issue_session(conn: Connection, challenge, now: int) -> tuple[dict, str]:
    owner = conn.execute(select(keys.c.status, parties.c.role, parties.c.status.label("party_status"))
                         .join(parties, parties.c.id == keys.c.party_id)
                         .where(keys.c.kid == challenge.approved_kid)).one()
    if owner.status != "active" or owner.party_status != "active":
        raise ApiError("key_revoked", "the key that approved this login has been revoked; no session was issued")
    assert owner.role in OPERATOR_ROLES  # approve() admits operator keys only
    consumed = conn.execute(update(console_challenges)
                            .where(console_challenges.c.challenge == challenge.challenge,
                                   console_challenges.c.consumed.is_(False))
                            .values(consumed=True))
    if consumed.rowcount != 1:
        raise ApiError("unknown_challenge", "this console login was already used: start a new login")
    session_id, csrf_token = new_secret(), new_secret()
    conn.execute(insert(console_sessions).values(
        session_sha256=secret_hash(session_id), operator_id=challenge.approved_operator_id,
        kid=challenge.approved_kid, role=owner.role, csrf_token=csrf_token, created_at_ms=now,
        expires_at_ms=now + SESSION_LIFETIME_MS, revoked=False))
    answer = {"status": "approved", "operator_id": challenge.approved_operator_id, "role": owner.role,
              "csrf_token": csrf_token}
    return answer, session_id


def load_session(center: "Center", session_id: str | None) -> ConsoleSession | None:
    """The live session for this cookie value: not expired, not logged out, its key and party still active."""
    secret = well_formed_secret(session_id)
    if secret is None:
        return None
    now = center.clock_ms()
    with center.engine.connect() as conn:
        row = conn.execute(
            select(console_sessions)
            .join(keys, keys.c.kid == console_sessions.c.kid)
            .join(parties, parties.c.id == console_sessions.c.operator_id)
            .where(console_sessions.c.session_sha256 == secret_hash(secret), console_sessions.c.revoked.is_(False),
                   console_sessions.c.expires_at_ms > now, keys.c.status == "active",
                   parties.c.status == "active")).first()
    if row is None:
        return None
    return ConsoleSession(session_id=row.session_sha256, operator_id=row.operator_id, kid=row.kid, role=row.role,
                          csrf_token=row.csrf_token, expires_at_ms=row.expires_at_ms)


def end_session(center: "Center", session: ConsoleSession) -> None:
    with center.engine.begin() as conn:
        conn.execute(update(console_sessions).where(console_sessions.c.session_sha256 == session.session_id)
                     .values(revoked=True))


def operator_name(center: "Center", operator_id: str) -> str:
    with center.engine.connect() as conn:
        return conn.execute(select(parties.c.name).where(parties.c.id == operator_id)).scalar_one()


def _purge(conn: Connection, now: int) -> None:
    conn.execute(delete(console_challenges).where(console_challenges.c.expires_at_ms < now - PURGE_AFTER_MS))
    conn.execute(delete(console_sessions).where(console_sessions.c.expires_at_ms < now - PURGE_AFTER_MS))


# --- the FastAPI side -----------------------------------------------------------------------

def console_session(role: str | None = None) -> Callable[..., ConsoleSession]:
    """A dependency: the request's console session, or an ApiError.

    role None: any operator or auditor; "auditor": auditors and operators;
    "operator": operators only. No or an expired session -> console_login_required
    (401); a lower role -> operator_role_required (403); a request other than
    GET/HEAD whose X-CSRF-Token header is not the session's token -> csrf_failed (403).
    """
    assert role is None or role in ROLE_RANK, role

    def dependency(request: Request, tokenpay_console: Annotated[str | None, Cookie()] = None,
                   x_csrf_token: Annotated[str | None, Header()] = None) -> ConsoleSession:
        session = load_session(request.app.state.center, tokenpay_console)
        if session is None:
            raise ApiError("console_login_required", "log in to the console with `wallet console-login` first")
        if not role_allows(session.role, role):
            raise ApiError("operator_role_required", f"this needs the role {role}; you are logged in as {session.role}")
        if request.method not in SAFE_METHODS and not csrf_matches(x_csrf_token, session.csrf_token):
            raise ApiError("csrf_failed", f"the {CSRF_HEADER} header must carry this session's CSRF token")
        return session

    return dependency


class ChallengeOut(BaseModel):
    challenge: str
    expires_in_s: int


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
    response.set_cookie(name, value, max_age=max_age_s, path=COOKIE_PATH, secure=True, httponly=True,
                        samesite="strict")


def _clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")


def install_console_auth(app: FastAPI, center: "Center | None") -> None:
    """Add the console's login routes. `center` may be None (an app built only for its OpenAPI
    spec): the routes read the center from app.state when called."""
    from center.app import ErrorOut

    @app.post("/console/api/challenge", response_model=ChallengeOut, tags=["console"],
              responses={429: {"model": ErrorOut}})
    def console_challenge(request: Request, response: Response) -> dict:
        challenge, secret = create_challenge(request.app.state.center)
        _set_cookie(response, LOGIN_COOKIE, secret, LOGIN_COOKIE_MAX_AGE_S)
        return {"challenge": challenge, "expires_in_s": CHALLENGE_LIFETIME_MS // 1000}

    @app.get("/console/api/login-status", response_model=LoginStatusOut, response_model_exclude_none=True,
             tags=["console"])
    def console_login_status(request: Request, response: Response,
                             tokenpay_console_login: Annotated[str | None, Cookie()] = None) -> dict:
        answer, session_id = login_status(request.app.state.center, tokenpay_console_login)
        if session_id is not None:
            _set_cookie(response, SESSION_COOKIE, session_id, SESSION_LIFETIME_MS // 1000)
            _clear_cookie(response, LOGIN_COOKIE)
        return answer

    @app.get("/console/api/me", response_model=MeOut, tags=["console"])
    def console_me(request: Request,
                   session: Annotated[ConsoleSession, Depends(console_session())]) -> dict:
        return {"operator_id": session.operator_id, "name": operator_name(request.app.state.center,
                                                                          session.operator_id),
                "role": session.role, "kid": session.kid, "csrf_token": session.csrf_token,
                "expires_at_ms": session.expires_at_ms}

    @app.post("/console/api/logout", response_model=LogoutOut, tags=["console"])
    def console_logout(request: Request, response: Response,
                       session: Annotated[ConsoleSession, Depends(console_session())]) -> dict:
        end_session(request.app.state.center, session)
        _clear_cookie(response, SESSION_COOKIE)
        return {"status": "logged_out"}
