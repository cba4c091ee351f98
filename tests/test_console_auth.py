"""Console login bound to an operator's token (center.console.auth), at the API level,
on SQLite and PostgreSQL: challenge, signed approval, one session per approval,
cookies, CSRF, roles, expiry, revocation, several workers on one database."""

from __future__ import annotations

import re
from typing import Annotated

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from operator_support import BASE_URL, Clock, error_code, https_client, new_operator, receipt_result, signed
from sqlalchemy import select
from support import SoftwareSigner

from center.api.app import create_app
from center.console import challenges as challenge_limits
from center.console.auth import LOGIN_COOKIE
from center.console.challenges import CHALLENGE_LIFETIME_MS
from center.console.clients import parse_trusted_proxies, source_address
from center.console.sessions import (
    SESSION_COOKIE,
    SESSION_LIFETIME_MS,
    ConsoleSession,
    console_session,
    secret_hash,
)
from center.keys.admin import revoke_key
from center.ledger.audit import verify_chain
from center.pipeline.service import Center
from center.storage.db import audit_log, console_challenges, console_sessions
from paywire.bodies import console_client_sha256
from paywire.envelope import Envelope, seal
from paywire.messages import new_message_id

CHALLENGE_SHAPE = re.compile(r"[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}")


@pytest.fixture
def clock(center) -> Clock:
    clock = Clock()
    center.clock_ms = clock
    return clock


@pytest.fixture
def app(center, clock):
    app = create_app(center)
    # Routes like the console's pages will have, to test the dependency itself.

    @app.get("/console/api/test/operator-only")
    def operator_only(session: Annotated[ConsoleSession, Depends(console_session("operator"))]) -> dict:
        return {"operator_id": session.operator_id}

    @app.post("/console/api/test/auditor-or-above")
    def auditor_or_above(session: Annotated[ConsoleSession, Depends(console_session("auditor"))]) -> dict:
        return {"role": session.role}

    return app


@pytest.fixture
def browser(center, app):
    with https_client(center, app) as client:
        yield client


def set_cookies(response) -> dict[str, str]:
    """name -> the whole Set-Cookie header, lower-cased attributes included."""
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


def approval_body(client, challenge: str) -> dict:
    """What `wallet console-login` signs: the code, and the hash of the client facts the center shows for it
    (zeros when it shows none: unknown and expired codes are refused before the hash is looked at)."""
    details = client.get(f"/v1/console/challenges/{challenge}")
    if details.status_code != 200:
        return {"challenge": challenge, "client_sha256": "0" * 64}
    facts = details.json()
    return {
        "challenge": challenge,
        "client_sha256": console_client_sha256(
            challenge, facts["client_address"], facts["user_agent"], facts["created_at_ms"]
        ),
    }


def approve(center, client, signer: SoftwareSigner, challenge: str, body: dict | None = None):
    request = signed(center, signer, "console_login", body or approval_body(client, challenge))
    return request, client.post("/v1/console/login", json=request.to_json())


def signed_outdated(center, signer: SoftwareSigner, msg_type: str, body: dict) -> Envelope:
    """A message in a form today's builder refuses (as an older wallet signed it), signed all the same."""
    signer.counter += 1
    now_s = center.clock_ms() // 1000
    payload = {
        "dom": "tokenpay",
        "v": 1,
        "type": msg_type,
        "aud": center.center_id,
        "kid": signer.kid,
        "msg_id": new_message_id(),
        "ctr": signer.counter,
        "iat": now_s,
        "exp": now_s + 3600,
        "body": body,
    }
    return seal(payload, alg=signer.algorithm, kid=signer.kid, sign=signer.sign)


def log_in(center, browser, signer) -> dict:
    challenge = browser.post("/console/api/challenge").json()["challenge"]
    _request, response = approve(center, browser, signer, challenge)
    assert response.status_code == 200, response.text
    status = browser.get("/console/api/login-status")
    assert status.status_code == 200 and status.json()["status"] == "approved", status.text
    return status.json()


def test_challenge_is_typable_and_binds_this_browser_with_a_strict_cookie(center, browser):
    response = browser.post("/console/api/challenge")
    assert response.status_code == 200
    document = response.json()
    assert CHALLENGE_SHAPE.fullmatch(document["challenge"]) and document["expires_in_s"] == 120
    cookie = set_cookies(response)[LOGIN_COOKIE]
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/console"):
        assert attribute in cookie, cookie
    secret = browser.cookies.get(LOGIN_COOKIE)
    assert secret and secret not in document["challenge"]
    with center.engine.connect() as conn:
        row = conn.execute(select(console_challenges)).one()
    # Only a hash of the browser secret is stored.
    assert row.challenge == document["challenge"] and secret not in row.browser_secret_sha256
    assert row.browser_secret_sha256 == secret_hash(secret) and row.consumed is False
    assert browser.get("/console/api/login-status").json() == {"status": "pending"}


def test_the_whole_login_issues_one_session_to_this_browser_only(center, browser, app):
    operator, view = new_operator(center)
    challenge = browser.post("/console/api/challenge").json()["challenge"]
    request, response = approve(center, browser, operator, challenge)
    assert response.status_code == 200, response.text
    result = receipt_result(center, request, response.json())  # signed by the center, checked against its key
    assert result == {
        "action": "console_login_approved",
        "challenge": challenge,
        "operator_id": view["operator_id"],
        "role": "operator",
        "expires_at_ms": result["expires_at_ms"],
    }

    with https_client(center, app) as stranger:  # no login cookie: learns nothing, gets nothing
        assert error_code(stranger.get("/console/api/login-status")) == (404, "unknown_challenge")
        assert error_code(stranger.get("/console/api/me")) == (401, "console_login_required")

    status = browser.get("/console/api/login-status")
    assert status.status_code == 200
    document = status.json()
    assert set(document) == {"status", "operator_id", "role", "csrf_token"}
    assert (document["status"], document["operator_id"], document["role"]) == (
        "approved",
        view["operator_id"],
        "operator",
    )
    cookies = set_cookies(status)
    for attribute in (
        "HttpOnly",
        "Secure",
        "SameSite=strict",
        "Path=/console",
        f"Max-Age={SESSION_LIFETIME_MS // 1000}",
    ):
        assert attribute in cookies[SESSION_COOKIE], cookies
    assert "Max-Age=0" in cookies[LOGIN_COOKIE]  # the login cookie is spent
    session_id = browser.cookies.get(SESSION_COOKIE)

    me = browser.get("/console/api/me")
    assert me.status_code == 200
    assert me.json() == {
        "operator_id": view["operator_id"],
        "name": "Ops One",
        "role": "operator",
        "kid": operator.kid,
        "csrf_token": document["csrf_token"],
        "expires_at_ms": center.clock_ms() + SESSION_LIFETIME_MS,
    }

    # A second poll gets no second session (the replayed login cookie: see the next test).
    assert error_code(browser.get("/console/api/login-status")) == (404, "unknown_challenge")
    with center.engine.connect() as conn:
        sessions = conn.execute(select(console_sessions)).all()
        challenge_row = conn.execute(select(console_challenges)).one()
    assert len(sessions) == 1 and challenge_row.consumed is True
    assert sessions[0].session_sha256 == secret_hash(session_id) != session_id


def test_replaying_the_login_cookie_after_the_session_was_issued_gets_nothing(center, browser, app):
    operator, _ = new_operator(center)
    browser.post("/console/api/challenge")
    login_secret = browser.cookies.get(LOGIN_COOKIE)
    approve(center, browser, operator, browser_challenge(center))
    assert browser.get("/console/api/login-status").json()["status"] == "approved"
    with https_client(center, app) as thief:  # the login cookie copied elsewhere after use
        thief.cookies.set(LOGIN_COOKIE, login_secret, path="/console")
        assert error_code(thief.get("/console/api/login-status")) == (404, "unknown_challenge")
        assert thief.cookies.get(SESSION_COOKIE) is None


def browser_challenge(center) -> str:
    with center.engine.connect() as conn:
        return conn.execute(select(console_challenges.c.challenge)).scalar_one()


def test_an_auditor_logs_in_with_the_auditor_role(center, browser):
    auditor, _view = new_operator(center, role="auditor", name="Audit Desk")
    assert log_in(center, browser, auditor)["role"] == "auditor"
    assert browser.get("/console/api/me").json()["role"] == "auditor"


@pytest.mark.parametrize("role", ["member", "store"])
def test_a_member_or_store_key_cannot_log_in(center, browser, role):
    member = SoftwareSigner()
    enrolled = center.enroll(signed(center, member, "enroll", member.enroll_body(role)))
    assert "receipt" in enrolled
    challenge = browser.post("/console/api/challenge").json()["challenge"]
    _, response = approve(center, browser, member, challenge)
    assert error_code(response) == (403, "not_an_operator")
    assert browser.get("/console/api/login-status").json() == {"status": "pending"}
    assert browser.cookies.get(SESSION_COOKIE) is None


def test_unknown_expired_and_used_challenges_are_refused(center, browser, clock):
    operator, view = new_operator(center)
    other, _ = new_operator(center, name="Ops Two")
    _, response = approve(center, browser, operator, "AAAA-BBBB-CCCC-DDDD")
    assert error_code(response) == (404, "unknown_challenge")

    challenge = browser.post("/console/api/challenge").json()["challenge"]
    clock.advance(CHALLENGE_LIFETIME_MS)
    _, response = approve(center, browser, operator, challenge)
    assert error_code(response) == (403, "challenge_expired")
    assert browser.get("/console/api/login-status").json() == {"status": "expired"}

    challenge = browser.post("/console/api/challenge").json()["challenge"]
    assert approve(center, browser, operator, challenge)[1].status_code == 200
    _, response = approve(center, browser, other, challenge)  # someone else's approval of the same code
    assert error_code(response) == (404, "unknown_challenge")
    assert (
        browser.get("/console/api/login-status").json()["operator_id"] == view["operator_id"]
    )  # the first one


def test_an_approval_collected_after_the_challenge_expired_issues_nothing(center, browser, clock):
    operator, _ = new_operator(center)
    challenge = browser.post("/console/api/challenge").json()["challenge"]
    assert approve(center, browser, operator, challenge)[1].status_code == 200
    clock.advance(CHALLENGE_LIFETIME_MS)
    assert browser.get("/console/api/login-status").json() == {"status": "expired"}
    assert browser.cookies.get(SESSION_COOKIE) is None


def test_the_signed_approval_is_idempotent_and_audited(center, browser):
    operator, _ = new_operator(center)
    challenge = browser.post("/console/api/challenge").json()["challenge"]
    request, first = approve(center, browser, operator, challenge)
    again = browser.post("/v1/console/login", json=request.to_json())  # the same signed bytes, resent
    assert again.status_code == 200 and again.json() == first.json()
    with center.engine.connect() as conn:
        entries = conn.execute(select(audit_log).where(audit_log.c.msg_type == "console_login")).all()
        assert verify_chain(conn)[1] is None
    assert (
        len(entries) == 1 and bytes(entries[0].payload) == request.payload and entries[0].kid == operator.kid
    )


def test_the_session_ends_after_15_minutes(center, browser, clock):
    operator, _ = new_operator(center)
    log_in(center, browser, operator)
    clock.advance(SESSION_LIFETIME_MS - 1)
    assert browser.get("/console/api/me").status_code == 200
    clock.advance(1)
    assert error_code(browser.get("/console/api/me")) == (401, "console_login_required")


def test_logout_needs_the_csrf_token_and_ends_the_session(center, browser):
    operator, _ = new_operator(center)
    csrf = log_in(center, browser, operator)["csrf_token"]
    assert error_code(browser.post("/console/api/logout")) == (403, "csrf_failed")
    assert error_code(browser.post("/console/api/logout", headers={"X-CSRF-Token": "x" * 43})) == (
        403,
        "csrf_failed",
    )
    assert error_code(
        browser.post("/console/api/logout", headers={"X-CSRF-Token": "é".encode("latin-1")})
    ) == (403, "csrf_failed")
    assert browser.get("/console/api/me").status_code == 200  # the failed attempts changed nothing
    out = browser.post("/console/api/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200 and out.json() == {"status": "logged_out"}
    assert "Max-Age=0" in set_cookies(out)[SESSION_COOKIE]
    assert error_code(browser.get("/console/api/me")) == (401, "console_login_required")


def test_the_session_dependency_checks_role_and_csrf(center, app):
    operator, view = new_operator(center)
    auditor, _ = new_operator(center, role="auditor", name="Audit Desk")
    with https_client(center, app) as ops, https_client(center, app) as audit:
        ops_csrf = log_in(center, ops, operator)["csrf_token"]
        audit_csrf = log_in(center, audit, auditor)["csrf_token"]
        assert ops.get("/console/api/test/operator-only").json() == {"operator_id": view["operator_id"]}
        assert error_code(audit.get("/console/api/test/operator-only")) == (403, "operator_role_required")
        # "auditor" admits auditors and operators; a POST needs the session's own CSRF token.
        assert audit.post(
            "/console/api/test/auditor-or-above", headers={"X-CSRF-Token": audit_csrf}
        ).json() == {"role": "auditor"}
        assert ops.post("/console/api/test/auditor-or-above", headers={"X-CSRF-Token": ops_csrf}).json() == {
            "role": "operator"
        }
        assert error_code(
            ops.post("/console/api/test/auditor-or-above", headers={"X-CSRF-Token": audit_csrf})
        ) == (403, "csrf_failed")


def test_revoking_the_operator_key_ends_its_sessions(center, browser):
    operator, _ = new_operator(center)
    log_in(center, browser, operator)
    assert browser.get("/console/api/me").status_code == 200
    revoke_key(
        center.engine, operator.kid, reason="lost token", decided_by="admin:test", now_ms=center.clock_ms()
    )
    assert error_code(browser.get("/console/api/me")) == (401, "console_login_required")


def test_a_key_revoked_between_approval_and_collection_gets_no_session(center, browser):
    operator, _ = new_operator(center)
    challenge = browser.post("/console/api/challenge").json()["challenge"]
    assert approve(center, browser, operator, challenge)[1].status_code == 200
    revoke_key(
        center.engine, operator.kid, reason="lost token", decided_by="admin:test", now_ms=center.clock_ms()
    )
    assert error_code(browser.get("/console/api/login-status")) == (403, "key_revoked")
    assert browser.cookies.get(SESSION_COOKIE) is None


def test_a_session_made_by_one_worker_works_in_another(center, browser, clock):
    """`center serve --workers N`: state is in the database, not in a process."""
    operator, _ = new_operator(center)
    challenge = browser.post("/console/api/challenge").json()["challenge"]
    other_worker = Center(
        engine=center.engine, signer=center.signer, currency=center.currency, clock_ms=clock
    )
    with https_client(other_worker) as worker_b:
        _, response = approve(other_worker, worker_b, operator, challenge)
        assert response.status_code == 200
        worker_b.cookies.set(LOGIN_COOKIE, browser.cookies.get(LOGIN_COOKIE), path="/console")
        assert worker_b.get("/console/api/login-status").json()["status"] == "approved"
        session_id = worker_b.cookies.get(SESSION_COOKIE)
    browser.cookies.set(SESSION_COOKIE, session_id, path="/console")
    assert browser.get("/console/api/me").json()["kid"] == operator.kid


def test_forged_or_odd_cookies_are_just_not_logged_in(center, browser):
    for value in ("", "x" * 43, "a" * 4000, "\x00" * 43, "../../etc/passwd"):
        browser.cookies.set(SESSION_COOKIE, value, path="/console")
        assert error_code(browser.get("/console/api/me")) == (401, "console_login_required"), value
        browser.cookies.set(LOGIN_COOKIE, value, path="/console")
        assert error_code(browser.get("/console/api/login-status")) == (404, "unknown_challenge"), value


def client_at(app, address: str, **headers) -> TestClient:
    """A browser whose TCP peer address the center sees as `address`."""
    return TestClient(app, base_url=BASE_URL, client=(address, 50000), headers=headers)


def waiting_of(center) -> dict[str, list[str]]:
    with center.engine.connect() as conn:
        rows = conn.execute(
            select(console_challenges.c.client_key, console_challenges.c.challenge)
            .where(console_challenges.c.consumed.is_(False))
            .order_by(console_challenges.c.created_at_ms)
        ).all()
    waiting: dict[str, list[str]] = {}
    for key, challenge in rows:
        waiting.setdefault(key, []).append(challenge)
    return waiting


def test_the_challenge_records_its_client_and_the_approval_binds_it(center, app, clock):
    operator, view = new_operator(center)
    with client_at(app, "203.0.113.7", **{"User-Agent": "Mozilla/5.0 [bold]x\x7f"}) as browser:
        challenge = browser.post("/console/api/challenge").json()["challenge"]
        details = browser.get(f"/v1/console/challenges/{challenge}").json()
        assert details == {
            "challenge": challenge,
            "client_address": "203.0.113.7",
            "user_agent": "Mozilla/5.0 [bold]x?",
            "created_at_ms": clock.now_ms,
            "expires_at_ms": clock.now_ms + CHALLENGE_LIFETIME_MS,
        }
        # An approval naming other client facts (what another request would have shown) approves nothing.
        other = console_client_sha256(
            challenge, "198.51.100.1", details["user_agent"], details["created_at_ms"]
        )
        _request, response = approve(
            center, browser, operator, challenge, {"challenge": challenge, "client_sha256": other}
        )
        assert error_code(response) == (409, "challenge_details_mismatch")
        assert browser.get("/console/api/login-status").json() == {"status": "pending"}
        # The old form, without client facts, is refused as outdated before anything is looked at.
        outdated = signed_outdated(center, operator, "console_login", {"challenge": challenge})
        response = browser.post("/v1/console/login", json=outdated.to_json())
        assert error_code(response) == (400, "console_login_outdated")
        assert approve(center, browser, operator, challenge)[1].status_code == 200
        assert browser.get("/console/api/login-status").json()["operator_id"] == view["operator_id"]
        assert error_code(browser.get(f"/v1/console/challenges/{challenge}")) == (404, "unknown_challenge")
        assert error_code(browser.get("/v1/console/challenges/not-a-code")) == (422, "invalid_request")


def test_a_client_at_its_cap_evicts_its_own_oldest_challenge(center, app, monkeypatch):
    monkeypatch.setattr(challenge_limits, "CLIENT_PENDING_CAP", 3)
    operator, _ = new_operator(center)
    with client_at(app, "203.0.113.7") as browser:
        codes = [browser.post("/console/api/challenge").json()["challenge"] for _ in range(4)]
        assert waiting_of(center) == {"203.0.113.7": codes[1:]}
        _, response = approve(
            center, browser, operator, codes[0], {"challenge": codes[0], "client_sha256": "0" * 64}
        )
        assert error_code(response) == (404, "unknown_challenge")  # evicted: nobody can approve it
        assert approve(center, browser, operator, codes[3])[1].status_code == 200  # the newest logs in
        assert browser.get("/console/api/login-status").json()["status"] == "approved"


def test_a_client_asking_too_fast_gets_429_with_retry_after(center, app, monkeypatch, clock):
    monkeypatch.setattr(challenge_limits, "CLIENT_RATE", 3)
    with client_at(app, "203.0.113.7") as flood, client_at(app, "2001:db8::1") as other:
        for _ in range(3):
            assert flood.post("/console/api/challenge").status_code == 200
            clock.advance(1_000)
        refused = flood.post("/console/api/challenge")
        assert error_code(refused) == (429, "too_many_challenges")
        retry_after = refused.json()["error"]["retry_after"]
        assert retry_after == (challenge_limits.CLIENT_RATE_WINDOW_MS - 3_000) // 1000
        assert refused.headers["retry-after"] == str(retry_after) and "set-cookie" not in refused.headers
        assert other.post("/console/api/challenge").status_code == 200  # another client is not slowed
        clock.advance(retry_after * 1000)
        assert flood.post("/console/api/challenge").status_code == 200


def test_a_full_center_evicts_the_heaviest_clients_oldest_not_a_newcomer(center, app, monkeypatch):
    monkeypatch.setattr(challenge_limits, "CLIENT_PENDING_CAP", 3)
    monkeypatch.setattr(challenge_limits, "MAX_PENDING_CHALLENGES", 5)
    with (
        client_at(app, "203.0.113.7") as flood,
        client_at(app, "203.0.113.8") as second,
        client_at(app, "203.0.113.9") as newcomer,
    ):
        flooded = [flood.post("/console/api/challenge").json()["challenge"] for _ in range(3)]
        mine = [second.post("/console/api/challenge").json()["challenge"] for _ in range(2)]
        assert newcomer.post("/console/api/challenge").status_code == 200
        waiting = waiting_of(center)
        assert waiting["203.0.113.7"] == flooded[1:] and waiting["203.0.113.8"] == mine
        assert len(waiting["203.0.113.9"]) == 1 and sum(map(len, waiting.values())) == 5


def test_ipv6_clients_are_limited_by_their_64(center, app, monkeypatch):
    monkeypatch.setattr(challenge_limits, "CLIENT_PENDING_CAP", 2)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::ffff", "2001:db8:1:2:abcd::9"):
        with client_at(app, host) as browser:
            assert browser.post("/console/api/challenge").status_code == 200
    assert {key: len(codes) for key, codes in waiting_of(center).items()} == {"2001:db8:1:2::/64": 2}


@pytest.mark.parametrize(
    "peer, forwarded, trusted, expected",
    [
        (
            "198.51.100.4",
            ["203.0.113.7"],
            (),
            "198.51.100.4",
        ),  # no trusted proxy: the header is the client's word
        ("10.0.0.5", ["203.0.113.7"], ("10.0.0.5",), "203.0.113.7"),
        (
            "10.0.0.5",
            ["1.2.3.4, 203.0.113.7"],
            ("10.0.0.5",),
            "203.0.113.7",
        ),  # the left part is the client's own
        ("10.0.0.5", ["203.0.113.7, 10.0.0.9"], ("10.0.0.0/24",), "203.0.113.7"),  # two trusted hops
        ("10.0.0.5", [], ("10.0.0.5",), "10.0.0.5"),
        ("10.0.0.5", ["not-an-address"], ("10.0.0.5",), "10.0.0.5"),
        ("10.0.0.5", ["10.0.0.6"], ("10.0.0.0/24",), "10.0.0.5"),  # only proxies: count the nearest
        ("198.51.100.4", ["203.0.113.7"], ("10.0.0.0/8",), "198.51.100.4"),
        ("::ffff:10.0.0.5", ["203.0.113.7"], ("10.0.0.5",), "203.0.113.7"),  # a dual-stack socket's IPv4 peer
    ],
)
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(peer, forwarded, trusted, expected):
    assert source_address(peer, forwarded, parse_trusted_proxies(list(trusted))) == expected


def test_the_trusted_proxy_setting_reaches_the_challenge(center, app):
    app.state.trusted_proxies = parse_trusted_proxies(["10.0.0.5"])
    with (
        client_at(app, "10.0.0.5", **{"X-Forwarded-For": "1.1.1.1, 203.0.113.7"}) as proxied,
        client_at(app, "10.0.0.6", **{"X-Forwarded-For": "203.0.113.8"}) as direct,
    ):
        via_proxy = proxied.post("/console/api/challenge").json()["challenge"]
        spoofed = direct.post("/console/api/challenge").json()["challenge"]
        assert proxied.get(f"/v1/console/challenges/{via_proxy}").json()["client_address"] == "203.0.113.7"
        assert direct.get(f"/v1/console/challenges/{spoofed}").json()["client_address"] == "10.0.0.6"
    with pytest.raises(ValueError, match="not an IP address"):
        parse_trusted_proxies(["10.0.0.0/33"])
