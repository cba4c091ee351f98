"""A database that cannot answer gets 503 `database_unavailable`, and the same signed bytes sent again
pay once (center.api.unavailable): a commit that cannot finish in time, a database that goes away.

Real `center serve` processes over HTTPS; the database is blocked or closed from outside, as a failing
over cluster would (tests/test_ha_failover.py does it with a real Patroni cluster).
"""

from __future__ import annotations

import sqlite3
import time

import psycopg
import pytest
from stress_support import STORE_NAME, Api, LiveCenter, pay_body
from support import PG_ADMIN_URL, create_pg_database, drop_pg_database, set_center_config

from center.storage.db import payments

pytestmark = pytest.mark.slow

DEADLINE_S = 2.0
WAIT_FOR_COMMIT_S = 60.0


def _start(tmp_path, db_url: str) -> LiveCenter:
    center = LiveCenter.create(tmp_path, db_url)
    # Short, so that the test waits seconds, not the default 20.
    set_center_config(center.data_dir, request_deadline_s=DEADLINE_S)
    center.process.start()
    return center


@pytest.fixture
def funded(tmp_path, db_url):
    center = _start(tmp_path, db_url)
    with Api(center) as api:
        _, store_id = api.enroll("store", name=STORE_NAME)
        buyer, buyer_id = api.enroll("member")
        api.confirm_by_operator(api.topup(buyer, 10_000))
        yield center, api, buyer, buyer_id, store_id
    center.close()


def _assert_unavailable(answer) -> None:
    assert answer.status == 503, (answer.status, answer.body[:300])
    error = answer.json["error"]
    assert error["code"] == "database_unavailable" and error["retry_after"] >= 1, error
    assert "refusal" not in answer.json  # a try-again answer is never signed as a final refusal


def _resend_until_answered(api: Api, request) -> object:
    """What a wallet does with a 503: the same bytes again after retry_after, until an answer comes."""
    deadline = time.monotonic() + WAIT_FOR_COMMIT_S
    while True:
        answer = api.post("/v1/payments", request)
        if answer.status != 503 or time.monotonic() > deadline:
            return answer
        time.sleep(answer.json["error"]["retry_after"])


class _WriterLock:
    """Another connection holding the database's write lock, as a commit stuck waiting would."""

    def __init__(self, db_url: str):
        self.db_url = db_url

    def __enter__(self):
        if self.db_url.startswith("sqlite"):
            self.conn = sqlite3.connect(self.db_url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")  # SQLite's one writer
        else:
            self.conn = psycopg.connect(self.db_url)
            self.conn.execute("LOCK TABLE audit_head IN ACCESS EXCLUSIVE MODE")  # every payment appends
        return self

    def __exit__(self, *_exc) -> None:
        self.conn.rollback()
        self.conn.close()


def test_a_commit_that_cannot_finish_in_time_answers_503_and_the_resend_gets_its_receipt(funded, db_url):
    center, api, buyer, buyer_id, store_id = funded
    request = buyer.envelope("pay", pay_body(store_id, 700, "ORDER-STUCK"), aud=center.center_id)
    with _WriterLock(db_url):
        _assert_unavailable(api.post("/v1/payments", request))
        assert center.count(payments) == 0  # nothing half-applied while it waits
    # The waiting commit goes on once the lock is gone; the resend answers what it committed.
    answer = _resend_until_answered(api, request)
    first = center.result_of(request, answer)
    again = center.result_of(request, api.post("/v1/payments", request))
    assert again == first and first["amount_minor"] == 700
    assert center.count(payments) == 1 and center.balance(buyer_id) == 10_000 - 700
    center.ledger_check()
    center.audit_verify()


@pytest.mark.postgres
def test_a_database_that_goes_away_answers_503_and_a_resend_pays_once(tmp_path, postgres_available):
    if not postgres_available:
        pytest.skip("PostgreSQL is not running (the README's test command starts one)")
    db_url = create_pg_database()
    name = db_url.rsplit("/", 1)[1]
    center = _start(tmp_path, db_url)
    try:
        with Api(center) as api:
            _, store_id = api.enroll("store", name=STORE_NAME)
            buyer, buyer_id = api.enroll("member")
            api.confirm_by_operator(api.topup(buyer, 10_000))
            request = buyer.envelope("pay", pay_body(store_id, 300, "ORDER-GONE"), aud=center.center_id)
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                # The center's pooled connections die and no new one is accepted: a primary gone.
                admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                )
                try:
                    _assert_unavailable(api.post("/v1/payments", request))
                    health = api.client.get("/healthz")
                    assert health.status_code == 503 and health.headers["retry-after"].isdigit()
                    assert name not in health.text and "5432" not in health.text  # no driver text leaks
                finally:
                    admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            # Back: the same center process reconnects by itself, no restart.
            first = center.result_of(request, _resend_until_answered(api, request))
            assert center.result_of(request, api.post("/v1/payments", request)) == first
        assert center.count(payments) == 1 and center.balance(buyer_id) == 10_000 - 300
        center.ledger_check()
        center.audit_verify()
    finally:
        center.close()
        drop_pg_database(db_url)
