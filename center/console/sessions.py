"""Console sessions: issued once per approved login (center.console.challenges), checked on every request.

The database holds only SHA-256 hashes of the session id (and of the browser's login secret),
so reading it does not let anyone log in. Every request re-checks the session against its key:
revoking an operator's key ends that operator's sessions at once. Routes that need a session
depend on `console_session(role)`; a session only reads: every write is a request signed on the
operator's token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Cookie, Header, Request
from sqlalchemy import Connection, delete, insert, select, update

from center.errors import ApiError
from center.keys.operators import OPERATOR_ROLES
from center.pipeline.service import Center
from center.storage.db import console_sessions, keys, parties

SESSION_LIFETIME_MS = 15 * 60_000
SESSION_COOKIE = "tokenpay_console"  # console_session's `tokenpay_console` parameter reads it
CSRF_HEADER = "X-CSRF-Token"
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


def new_secret() -> str:
    """A session id, CSRF token or browser login secret."""
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


def start_session(conn: Connection, operator_id: str, kid: str, role: str, now_ms: int) -> tuple[str, str]:
    """Store a new session; (session id for the cookie, CSRF token). Only the id's hash is kept."""
    session_id, csrf_token = new_secret(), new_secret()
    conn.execute(
        insert(console_sessions).values(
            session_sha256=secret_hash(session_id),
            operator_id=operator_id,
            kid=kid,
            role=role,
            csrf_token=csrf_token,
            created_at_ms=now_ms,
            expires_at_ms=now_ms + SESSION_LIFETIME_MS,
            revoked=False,
        )
    )
    return session_id, csrf_token


def load_session(center: Center, session_id: str | None) -> ConsoleSession | None:
    """The live session for this cookie value: not expired, not logged out, its key and party still active."""
    secret = well_formed_secret(session_id)
    if secret is None:
        return None
    now_ms = center.clock_ms()
    with center.engine.connect() as conn:
        row = conn.execute(
            select(console_sessions)
            .join(keys, keys.c.kid == console_sessions.c.kid)
            .join(parties, parties.c.id == console_sessions.c.operator_id)
            .where(
                console_sessions.c.session_sha256 == secret_hash(secret),
                console_sessions.c.revoked.is_(False),
                console_sessions.c.expires_at_ms > now_ms,
                keys.c.status == "active",
                parties.c.status == "active",
            )
        ).first()
    if row is None:
        return None
    return ConsoleSession(
        session_id=row.session_sha256,
        operator_id=row.operator_id,
        kid=row.kid,
        role=row.role,
        csrf_token=row.csrf_token,
        expires_at_ms=row.expires_at_ms,
    )


def end_session(center: Center, session: ConsoleSession) -> None:
    with center.engine.begin() as conn:
        conn.execute(
            update(console_sessions)
            .where(console_sessions.c.session_sha256 == session.session_id)
            .values(revoked=True)
        )


def purge_sessions(conn: Connection, before_ms: int) -> None:
    """Forget sessions that expired before `before_ms`."""
    conn.execute(delete(console_sessions).where(console_sessions.c.expires_at_ms < before_ms))


def operator_name(center: Center, operator_id: str) -> str:
    with center.engine.connect() as conn:
        return conn.execute(select(parties.c.name).where(parties.c.id == operator_id)).scalar_one()


def console_session(role: str | None = None) -> Callable[..., ConsoleSession]:
    """A dependency: the request's console session, or an ApiError.

    role None: any operator or auditor; "auditor": auditors and operators;
    "operator": operators only. No or an expired session -> console_login_required
    (401); a lower role -> operator_role_required (403); a request other than
    GET/HEAD whose X-CSRF-Token header is not the session's token -> csrf_failed (403).
    """
    assert role is None or role in ROLE_RANK, role

    def dependency(
        request: Request,
        tokenpay_console: Annotated[str | None, Cookie()] = None,
        x_csrf_token: Annotated[str | None, Header()] = None,
    ) -> ConsoleSession:
        session = load_session(request.app.state.center, tokenpay_console)
        if session is None:
            raise ApiError(
                "console_login_required", "log in to the console with `wallet console-login` first"
            )
        if not role_allows(session.role, role):
            raise ApiError(
                "operator_role_required", f"this needs the role {role}; you are logged in as {session.role}"
            )
        if request.method not in SAFE_METHODS and not csrf_matches(x_csrf_token, session.csrf_token):
            raise ApiError("csrf_failed", f"the {CSRF_HEADER} header must carry this session's CSRF token")
        return session

    return dependency
