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

Who asked for a challenge is recorded with it (the client's address, its user
agent, the time): `wallet console-login` fetches them (GET
/v1/console/challenges/CODE), shows them, and signs their hash with the code,
so an approval covers exactly the client the operator was shown. The client's
address is the TCP peer's, unless that peer is a configured trusted proxy
(config.json "trusted_proxies"; none by default), when the right-most
X-Forwarded-For address that is not itself a trusted proxy counts.

Challenges are made without authentication, so they are limited per client
(an IPv4 address, or an IPv6 /64): at most CLIENT_RATE challenges per
CLIENT_RATE_WINDOW_MS (then 429 too_many_challenges with retry_after), at most
CLIENT_PENDING_CAP waiting (a new one evicts that client's oldest), and at most
MAX_PENDING_CHALLENGES waiting in all (a new one evicts the oldest of the client
holding the most). One client's flood only ever evicts its own challenges.

Routes that need a session depend on `console_session(role)` (see there). A
session only reads: every write is a request signed on the operator's token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Literal

from fastapi import Cookie, Depends, FastAPI, Header, Request, Response
from pydantic import BaseModel
from sqlalchemy import Connection, delete, func, insert, select, update

from center.storage.db import console_challenges, console_sessions, keys, parties
from center.errors import ApiError, Refusal
from center.pipeline.operator_actions import require_operator_key
from center.keys.operators import OPERATOR_ROLES
from paywire.messages import CONSOLE_CHALLENGE_PATTERN, console_client_sha256
from paywire.messages import Header as WireHeader

if TYPE_CHECKING:
    from center.pipeline.handlers import Outcome
    from center.pipeline.service import Center, Signer

CHALLENGE_LIFETIME_MS = 120_000
SESSION_LIFETIME_MS = 15 * 60_000
LOGIN_COOKIE = "tokenpay_console_login"
SESSION_COOKIE = "tokenpay_console"
COOKIE_PATH = "/console"
CSRF_HEADER = "X-CSRF-Token"
# The browser keeps the login cookie a little past the challenge, so that a
# late poll hears "expired" rather than "unknown".
LOGIN_COOKIE_MAX_AGE_S = CHALLENGE_LIFETIME_MS // 1000 + 60
# Challenges are made without authentication: limit them per client and in all
# (see the module's text), and forget old ones and old sessions as new ones are made.
# A person's browser needs one code at a time, a few after reloads; an office behind
# one NAT address a few more.
CLIENT_PENDING_CAP = 8
CLIENT_RATE = 12
CLIENT_RATE_WINDOW_MS = 60_000
MAX_PENDING_CHALLENGES = 1000  # >> CLIENT_PENDING_CAP: filling it takes 125 clients, and evicts their own
MAX_USER_AGENT_CHARS = 200
MAX_FORWARDED_HOPS = 32
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


@dataclass(frozen=True)
class ClientFacts:
    """Who asks for a challenge, as the center sees it: recorded with it, shown by the wallet."""

    address: str
    user_agent: str

    @property
    def key(self) -> str:
        return client_key(self.address)


class TooManyChallenges(ApiError):
    """429 with the seconds after which this client may ask again (`retry_after`, as for every limit)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__("too_many_challenges", message, 429, retry_after_s=retry_after_s)


# --- pure helpers ---------------------------------------------------------------------

def parse_trusted_proxies(entries) -> tuple:
    """config.json's "trusted_proxies" as networks; a bad entry stops the worker, naming it."""
    if not isinstance(entries, (list, tuple)):
        raise TypeError("trusted_proxies must be a list of addresses or networks")
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {str(entry)[:64]!r} is not an IP address or network") from None
    return tuple(networks)


def _ip(text: str):
    """An address, IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer) as the IPv4 it is."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


def _trusted(address, trusted: tuple) -> bool:
    return address is not None and any(address.version == net.version and address in net for net in trusted)


def source_address(peer: str | None, forwarded_for: list[str], trusted: tuple) -> str:
    """The client's address: the TCP peer, unless the peer is a trusted proxy; then the right-most
    X-Forwarded-For address that is not itself a trusted proxy (what the nearest untrusted hop
    told our proxy). Anything earlier in the header was written by the client and proves nothing."""
    address = (peer or "unknown")[:64]
    if not _trusted(_ip(address), trusted):
        return address
    hops = [hop for value in forwarded_for for hop in value.split(",")][-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            return address  # a malformed hop: count the request against the proxy itself
        if not _trusted(ip, trusted):
            return str(ip)
    return address


def client_key(address: str) -> str:
    """What the limits count by: an IPv4 address, or the IPv6 /64 (one host commonly holds a whole /64)."""
    ip = _ip(address)
    if ip is None:
        return address[:64]
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def clean_user_agent(value: str | None) -> str:
    """Printable ASCII only, cut short: the wallet shows it to the operator as plain text."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in (value or "")[:MAX_USER_AGENT_CHARS]).strip()


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
    from center.pipeline.handlers import Outcome

    require_operator_key(signer)
    challenge = body["challenge"]
    row = conn.execute(select(console_challenges).where(console_challenges.c.challenge == challenge)
                       .with_for_update()).first()
    if row is None or row.consumed or row.approved_kid is not None:
        raise Refusal("unknown_challenge", f"no pending console login {challenge}: start a new login in the browser")
    if now >= row.expires_at_ms:
        raise Refusal("challenge_expired", f"console login {challenge} has expired: start a new login in the browser")
    if body["client_sha256"] != recorded_client_sha256(row):
        raise Refusal("challenge_details_mismatch", f"console login {challenge} was asked for by another client than "
                      "the one this approval names: nothing was approved; start a new login", 409)
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

def recorded_client_sha256(row) -> str:
    return console_client_sha256(row.challenge, row.client_address, row.user_agent, row.created_at_ms)


def create_challenge(center: "Center", client: ClientFacts) -> tuple[str, str]:
    """A new challenge and the browser secret bound to it, within this client's limits."""
    now = center.clock_ms()
    challenge, secret = new_challenge(), new_secret()
    with center.engine.begin() as conn:
        _purge(conn, now)
        _check_client_rate(conn, client.key, now)
        _make_room(conn, client.key, now)
        conn.execute(insert(console_challenges).values(
            challenge=challenge, browser_secret_sha256=secret_hash(secret), created_at_ms=now,
            expires_at_ms=now + CHALLENGE_LIFETIME_MS, approved_kid=None, approved_operator_id=None,
            approved_at_ms=None, consumed=False, client_address=client.address, client_key=client.key,
            user_agent=client.user_agent))
    return challenge, secret


def _check_client_rate(conn: Connection, key: str, now: int) -> None:
    """At most CLIENT_RATE challenges per client in any CLIENT_RATE_WINDOW_MS (evicted ones count)."""
    made, oldest = conn.execute(select(func.count(), func.min(console_challenges.c.created_at_ms)).where(
        console_challenges.c.client_key == key,
        console_challenges.c.created_at_ms > now - CLIENT_RATE_WINDOW_MS)).one()
    if made >= CLIENT_RATE:
        retry_after_s = max(1, math.ceil((oldest + CLIENT_RATE_WINDOW_MS - now) / 1000))
        raise TooManyChallenges(f"this client asked for {made} console login codes in the last "
                                f"{CLIENT_RATE_WINDOW_MS // 1000} s; try again in {retry_after_s} s", retry_after_s)


def _waiting(now: int):
    return console_challenges.c.consumed.is_(False), console_challenges.c.expires_at_ms > now


def _make_room(conn: Connection, key: str, now: int) -> None:
    """Evict this client's oldest waiting challenge at its cap; at the global cap, the oldest of
    whichever client holds the most. Evicted challenges are marked used: nobody can approve or collect them."""
    mine = conn.execute(select(console_challenges.c.challenge)
                        .where(console_challenges.c.client_key == key, *_waiting(now))
                        .order_by(console_challenges.c.created_at_ms)).scalars().all()
    _evict(conn, mine[:max(0, len(mine) - CLIENT_PENDING_CAP + 1)])
    waiting = conn.execute(select(func.count()).select_from(console_challenges).where(*_waiting(now))).scalar_one()
    if waiting >= MAX_PENDING_CHALLENGES:
        heaviest = conn.execute(select(console_challenges.c.client_key).where(*_waiting(now))
                                .group_by(console_challenges.c.client_key)
                                .order_by(func.count().desc(), func.min(console_challenges.c.created_at_ms))
                                .limit(1)).scalar_one()
        oldest = conn.execute(select(console_challenges.c.challenge)
                              .where(console_challenges.c.client_key == heaviest, *_waiting(now))
                              .order_by(console_challenges.c.created_at_ms)
                              .limit(waiting - MAX_PENDING_CHALLENGES + 1)).scalars().all()
        _evict(conn, oldest)


def _evict(conn: Connection, challenges: list[str]) -> None:
    if challenges:
        conn.execute(update(console_challenges).where(console_challenges.c.challenge.in_(challenges))
                     .values(consumed=True))


def challenge_details(center: "Center", challenge: str) -> dict:
    """What `wallet console-login` shows before it signs: the client facts recorded with a waiting challenge."""
    if not isinstance(challenge, str) or not CONSOLE_CHALLENGE_PATTERN.fullmatch(challenge):
        raise ApiError("invalid_request", "a console login code is four groups of four of A-Z and 2-7")
    now = center.clock_ms()
    with center.engine.connect() as conn:
        row = conn.execute(select(console_challenges).where(console_challenges.c.challenge == challenge)).first()
    if row is None or row.consumed or row.approved_kid is not None:
        raise ApiError("unknown_challenge", f"no pending console login {challenge}: start a new login in the browser")
    if now >= row.expires_at_ms:
        raise ApiError("challenge_expired", f"console login {challenge} has expired: start a new login in the browser")
    return {"challenge": row.challenge, "client_address": row.client_address, "user_agent": row.user_agent,
            "created_at_ms": row.created_at_ms, "expires_at_ms": row.expires_at_ms}


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
    response.set_cookie(name, value, max_age=max_age_s, path=COOKIE_PATH, secure=True, httponly=True,
                        samesite="strict")


def _clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")


def configured_trusted_proxies() -> tuple:
    """The trusted proxies of the center this worker serves: `center serve` names its data directory
    in CENTER_DATA_DIR, as center.api.asgi reads it. An app built in-process (tests) trusts none."""
    data_dir = os.environ.get("CENTER_DATA_DIR")
    if not data_dir:
        return ()
    from center.storage.config import CenterConfig

    return parse_trusted_proxies(CenterConfig.load(Path(data_dir)).trusted_proxies)


def request_client(request: Request) -> ClientFacts:
    peer = request.client.host if request.client else None
    address = source_address(peer, request.headers.getlist("x-forwarded-for"), request.app.state.trusted_proxies)
    return ClientFacts(address=address, user_agent=clean_user_agent(request.headers.get("user-agent")))


def install_console_auth(app: FastAPI, center: "Center | None") -> None:
    """Add the console's login routes. `center` may be None (an app built only for its OpenAPI
    spec): the routes read the center from app.state when called."""
    from center.api.app import ErrorOut

    app.state.trusted_proxies = configured_trusted_proxies()

    @app.post("/console/api/challenge", response_model=ChallengeOut, tags=["console"],
              responses={429: {"model": ErrorOut}})
    def console_challenge(request: Request, response: Response) -> dict:
        challenge, secret = create_challenge(request.app.state.center, request_client(request))
        _set_cookie(response, LOGIN_COOKIE, secret, LOGIN_COOKIE_MAX_AGE_S)
        return {"challenge": challenge, "expires_in_s": CHALLENGE_LIFETIME_MS // 1000}

    @app.get("/v1/console/challenges/{challenge}", response_model=ChallengeDetailsOut, tags=["console"],
             summary="Who asked for a console login code: shown by `wallet console-login` before it signs")
    def console_challenge_details(challenge: str, request: Request) -> dict:
        return challenge_details(request.app.state.center, challenge)

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
