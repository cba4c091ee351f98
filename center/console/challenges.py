"""Console login codes ("challenges"): made for a browser, approved by a signed message, collected once.

A challenge is 16 base32 characters, shown as XXXX-XXXX-XXXX-XXXX, stored with the hash of a
random browser secret (the login cookie: only that browser can collect the login) and with who
asked for it (center.console.clients.ClientFacts), which `wallet console-login` shows and signs.
The operator's signed `console_login` message approves it (center.pipeline.console_login);
login_status then issues the session, once (center.console.sessions).

Challenges are made without authentication, so they are limited per client (an IPv4 address, or
an IPv6 /64): at most CLIENT_RATE challenges per CLIENT_RATE_WINDOW_MS (then 429
too_many_challenges with retry_after), at most CLIENT_PENDING_CAP waiting (a new one evicts that
client's oldest), and at most MAX_PENDING_CHALLENGES waiting in all (a new one evicts the oldest
of the client holding the most). One client's flood only ever evicts its own challenges.
"""

from __future__ import annotations

import base64
import math
import secrets

from sqlalchemy import Connection, delete, func, insert, select, update

from center.console.clients import ClientFacts
from center.console.sessions import new_secret, purge_sessions, secret_hash, start_session, well_formed_secret
from center.errors import ApiError
from center.keys.operators import OPERATOR_ROLES
from center.pipeline.console_login import check_waiting
from center.pipeline.service import Center
from center.storage.db import console_challenges, keys, parties
from paywire.fields import CONSOLE_CHALLENGE_PATTERN

CHALLENGE_LIFETIME_MS = 120_000
CHALLENGE_BYTES = 10  # 80 bits: 16 base32 characters
CHALLENGE_CHARS = 16
CHALLENGE_GROUP_CHARS = 4
# A person's browser needs one code at a time, a few after reloads; an office behind
# one NAT address a few more.
CLIENT_PENDING_CAP = 8
CLIENT_RATE = 12
CLIENT_RATE_WINDOW_MS = 60_000
MAX_PENDING_CHALLENGES = 1000  # >> CLIENT_PENDING_CAP: filling it takes 125 clients, and evicts their own
# Old challenges and sessions are forgotten as new challenges are made.
PURGE_AFTER_MS = 24 * 3600 * 1000
NO_LOGIN_WAITING = "this browser has no console login waiting: start a new login"


class TooManyChallenges(ApiError):
    """429 with the seconds after which this client may ask again (`retry_after`, as for every limit)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__("too_many_challenges", message, 429, retry_after_s=retry_after_s)


def new_challenge() -> str:
    text = base64.b32encode(secrets.token_bytes(CHALLENGE_BYTES)).decode("ascii")
    assert len(text) == CHALLENGE_CHARS and "=" not in text
    starts = range(0, CHALLENGE_CHARS, CHALLENGE_GROUP_CHARS)
    return "-".join(text[start : start + CHALLENGE_GROUP_CHARS] for start in starts)


def create_challenge(center: Center, client: ClientFacts) -> tuple[str, str]:
    """A new challenge and the browser secret bound to it, within this client's limits."""
    now_ms = center.clock_ms()
    challenge, secret = new_challenge(), new_secret()
    with center.engine.begin() as conn:
        _purge(conn, now_ms)
        _check_client_rate(conn, client.key, now_ms)
        _make_room(conn, client.key, now_ms)
        conn.execute(
            insert(console_challenges).values(
                challenge=challenge,
                browser_secret_sha256=secret_hash(secret),
                created_at_ms=now_ms,
                expires_at_ms=now_ms + CHALLENGE_LIFETIME_MS,
                approved_kid=None,
                approved_operator_id=None,
                approved_at_ms=None,
                consumed=False,
                client_address=client.address,
                client_key=client.key,
                user_agent=client.user_agent,
            )
        )
    return challenge, secret


def _check_client_rate(conn: Connection, key: str, now_ms: int) -> None:
    """At most CLIENT_RATE challenges per client in any CLIENT_RATE_WINDOW_MS (evicted ones count)."""
    made, oldest_ms = conn.execute(
        select(func.count(), func.min(console_challenges.c.created_at_ms)).where(
            console_challenges.c.client_key == key,
            console_challenges.c.created_at_ms > now_ms - CLIENT_RATE_WINDOW_MS,
        )
    ).one()
    if made >= CLIENT_RATE:
        retry_after_s = max(1, math.ceil((oldest_ms + CLIENT_RATE_WINDOW_MS - now_ms) / 1000))
        raise TooManyChallenges(
            f"this client asked for {made} console login codes in the last "
            f"{CLIENT_RATE_WINDOW_MS // 1000} s; try again in {retry_after_s} s",
            retry_after_s,
        )


def _waiting(now_ms: int):
    return console_challenges.c.consumed.is_(False), console_challenges.c.expires_at_ms > now_ms


def _make_room(conn: Connection, key: str, now_ms: int) -> None:
    """Evict this client's oldest waiting challenge at its cap; at the global cap, the oldest of
    whichever client holds the most. Evicted challenges are marked used: nobody can approve or
    collect them."""
    mine = (
        conn.execute(
            select(console_challenges.c.challenge)
            .where(console_challenges.c.client_key == key, *_waiting(now_ms))
            .order_by(console_challenges.c.created_at_ms)
        )
        .scalars()
        .all()
    )
    _evict(conn, mine[: max(0, len(mine) - CLIENT_PENDING_CAP + 1)])
    waiting = conn.execute(
        select(func.count()).select_from(console_challenges).where(*_waiting(now_ms))
    ).scalar_one()
    if waiting >= MAX_PENDING_CHALLENGES:
        _evict(conn, _heaviest_clients_oldest(conn, waiting - MAX_PENDING_CHALLENGES + 1, now_ms))


def _heaviest_clients_oldest(conn: Connection, count: int, now_ms: int) -> list[str]:
    """The `count` oldest waiting challenges of the client holding the most."""
    heaviest = conn.execute(
        select(console_challenges.c.client_key)
        .where(*_waiting(now_ms))
        .group_by(console_challenges.c.client_key)
        .order_by(func.count().desc(), func.min(console_challenges.c.created_at_ms))
        .limit(1)
    ).scalar_one()
    return (
        conn.execute(
            select(console_challenges.c.challenge)
            .where(console_challenges.c.client_key == heaviest, *_waiting(now_ms))
            .order_by(console_challenges.c.created_at_ms)
            .limit(count)
        )
        .scalars()
        .all()
    )


def _evict(conn: Connection, challenges: list[str]) -> None:
    if challenges:
        conn.execute(
            update(console_challenges)
            .where(console_challenges.c.challenge.in_(challenges))
            .values(consumed=True)
        )


def challenge_details(center: Center, challenge: str) -> dict:
    """What `wallet console-login` shows before it signs: the client facts recorded with a waiting
    challenge."""
    if not isinstance(challenge, str) or not CONSOLE_CHALLENGE_PATTERN.fullmatch(challenge):
        raise ApiError("invalid_request", "a console login code is four groups of four of A-Z and 2-7")
    now_ms = center.clock_ms()
    with center.engine.connect() as conn:
        row = conn.execute(
            select(console_challenges).where(console_challenges.c.challenge == challenge)
        ).first()
    check_waiting(row, challenge, now_ms)
    return {
        "challenge": row.challenge,
        "client_address": row.client_address,
        "user_agent": row.user_agent,
        "created_at_ms": row.created_at_ms,
        "expires_at_ms": row.expires_at_ms,
    }


def login_status(center: Center, browser_secret: str | None) -> tuple[dict, str | None]:
    """(answer, new session id or None). The session is issued once, when the challenge is approved."""
    secret = well_formed_secret(browser_secret)
    if secret is None:
        raise ApiError("unknown_challenge", NO_LOGIN_WAITING)
    now_ms = center.clock_ms()
    with center.engine.begin() as conn:
        row = conn.execute(
            select(console_challenges)
            .where(console_challenges.c.browser_secret_sha256 == secret_hash(secret))
            .with_for_update()
        ).first()
        if row is None or row.consumed:
            raise ApiError("unknown_challenge", NO_LOGIN_WAITING)
        if now_ms >= row.expires_at_ms:
            return {"status": "expired"}, None
        if row.approved_kid is None:
            return {"status": "pending"}, None
        return _issue_session(conn, row, now_ms)


def _issue_session(conn: Connection, challenge, now_ms: int) -> tuple[dict, str]:
    owner = conn.execute(
        select(keys.c.status, parties.c.role, parties.c.status.label("party_status"))
        .join(parties, parties.c.id == keys.c.party_id)
        .where(keys.c.kid == challenge.approved_kid)
    ).one()
    if owner.status != "active" or owner.party_status != "active":
        raise ApiError(
            "key_revoked", "the key that approved this login has been revoked; no session was issued"
        )
    assert owner.role in OPERATOR_ROLES  # console_login.approve admits operator keys only
    consumed = conn.execute(
        update(console_challenges)
        .where(
            console_challenges.c.challenge == challenge.challenge, console_challenges.c.consumed.is_(False)
        )
        .values(consumed=True)
    )
    if consumed.rowcount != 1:
        raise ApiError("unknown_challenge", "this console login was already used: start a new login")
    session_id, csrf_token = start_session(
        conn, challenge.approved_operator_id, challenge.approved_kid, owner.role, now_ms
    )
    answer = {
        "status": "approved",
        "operator_id": challenge.approved_operator_id,
        "role": owner.role,
        "csrf_token": csrf_token,
    }
    return answer, session_id


def _purge(conn: Connection, now_ms: int) -> None:
    conn.execute(
        delete(console_challenges).where(console_challenges.c.expires_at_ms < now_ms - PURGE_AFTER_MS)
    )
    purge_sessions(conn, now_ms - PURGE_AFTER_MS)
