"""Set-based writes (center.ledger.bulk_sql) and the group booking built on them: what goes in comes
back exactly, a group's statements do not grow with its size, and a write that misses a row fails
the group instead of passing silently. SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select
from test_payments_api import enroll, funded_member, ledger_ok, pay_body

from center.ledger import bulk_sql
from center.storage.db import make_engine, migrate, parties

STORE = "Corner Shop"


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def party(index: int, **fields) -> dict:
    return {
        "id": f"M-{index:016x}",
        "role": "member",
        "name": "Test Person",
        "address": "1-2-3 Chiyoda, Tokyo",
        "birth_date": None,
        "bank_account": None,
        "status": "active",
        "created_at_ms": 1_796_000_000_000,
    } | fields


def read_parties(engine, columns: list[str]) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(*(parties.c[c] for c in columns)).order_by(parties.c.id))
        return [dict(row._mapping) for row in rows]


def test_rows_come_back_exactly(engine):
    # Text that array literals would have to escape, a column that is NULL in every row, 2**53.
    awkward = ['quote " comma , brace {x} backslash \\ end', "NULL", "", "\u00e9\u6f22\U0001f600", "a\tb"]
    rows = [party(i, name=text, created_at_ms=2**53 - i) for i, text in enumerate(awkward)]
    with engine.begin() as conn:
        bulk_sql.insert_rows(conn, parties, rows)
    assert read_parties(engine, list(rows[0])) == rows
    with engine.begin() as conn:
        bulk_sql.update_values(conn, parties, "id", "name", {rows[0]["id"]: "Z", rows[3]["id"]: "{}"})
    assert [r["name"] for r in read_parties(engine, ["id", "name"])] == ["Z", *awkward[1:3], "{}", awkward[4]]


def test_group_writes_are_all_or_nothing(engine):
    with engine.begin() as conn:
        bulk_sql.insert_rows(conn, parties, [party(1)])
    writes = bulk_sql.GroupWrites()
    writes.insert(parties, [party(2)])
    writes.update_rows(parties, "id", {party(1)["id"]: {"name": "Renamed", "status": "revoked"}})
    with engine.begin() as conn:
        writes.flush(conn)
    assert read_parties(engine, ["id", "name", "status"]) == [
        {"id": party(1)["id"], "name": "Renamed", "status": "revoked"},
        {"id": party(2)["id"], "name": "Test Person", "status": "active"},
    ]
    # An update that names a row that does not exist fails the flush, and with it the transaction.
    writes.insert(parties, [party(3)])
    writes.update(parties, "id", "name", {party(9)["id"]: "Nobody"})
    with pytest.raises(AssertionError, match=r"rows"), engine.begin() as conn:
        writes.flush(conn)
    assert [r["id"] for r in read_parties(engine, ["id"])] == [party(1)["id"], party(2)["id"]]


# PostgreSQL only, by its parameters (a skip would show in CI, where nothing may skip): SQLite keeps
# an executemany per table (one process, cheap statements).
@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_group_costs_the_same_statements_whatever_its_size(center):
    shop = enroll(center, "store", name=STORE)[1]
    statements = {}
    for size in (1, 2, 40):
        seen = []

        def note(conn, cursor, statement, parameters, context, executemany, seen=seen):
            # psycopg runs an executemany as one statement per parameter set: count those.
            seen.extend([" ".join(statement.split()[:3])] * (len(parameters) if executemany else 1))

        payers = [funded_member(center, 1_000)[0] for _ in range(size)]
        requests = [
            payer.envelope("pay", pay_body(shop, 10, f"g-{size}-{i}", name=STORE), aud=center.center_id)
            for i, payer in enumerate(payers)
        ]
        event.listen(center.engine, "before_cursor_execute", note)
        try:
            answers = center.submit_batch(requests, "pay")
        finally:
            event.remove(center.engine, "before_cursor_execute", note)
        assert all("receipt" in answer for answer in answers), answers
        statements[size] = seen
    # One statement per step, not per payment: 40 payments cost what 1 costs.
    assert len(statements[40]) == len(statements[1]) == len(statements[2]), statements
    # Two locking reads (keys with earlier answers, accounts with payees); the first payments of the
    # orders paid (duplicate_order); one statement for the counters, balances and transfers; the audit
    # head's lock; one for the entries, tree nodes, tree head and head row (the seal); one for the
    # payments (they name their entry's seq) and answer rows.
    assert statements[40] == [
        "SELECT keys.kid, keys.status,",
        "SELECT accounts.id, accounts.kind,",
        "SELECT payments.buyer_id, payments.store_id,",
        "WITH w0 AS",
        "SELECT audit_head.seq, audit_head.entry_hash,",
        "WITH w0 AS",
        "WITH w0 AS",
    ], statements[40]
    assert ledger_ok(center)


# --- the lean payment routes read bodies as the pydantic models did ---------------------------

MALFORMED_BODIES = [
    b"",
    b"not json",
    b"[]",
    b'{"payload": "AA", "alg": "ES256", "kid": "' + b"a" * 64 + b'"}',  # no sig
    b'{"payload": "AA", "alg": "ES256", "kid": "' + b"a" * 64 + b'", "sig": "AA", "more": 1}',
    b'{"payload": "AA", "alg": "ES256", "kid": "' + b"a" * 64 + b'", "sig": 7}',
    b'{"payload": "AA", "alg": "ES256", "kid": "not hex", "sig": "AA"}',
    b'{"payload": "AA", "alg": "RS1", "kid": "' + b"a" * 64 + b'", "sig": "AA"}',
    b'{"payload": "A=", "alg": "ES256", "kid": "' + b"a" * 64 + b'", "sig": "AA"}',
    b'{"payload": "AA", "alg": "ES256", "kid": "\\ud800", "sig": "AA"}',  # lone surrogate: orjson refuses
    b'{"payload": "AA", "alg": "ES256", "kid": "' + b"a" * 64 + b'", "sig": 123456789012345678901234567890}',
    b'{"payload": NaN, "alg": "ES256", "kid": "x", "sig": "AA"}',
    b'{"payload": "\xe9", "alg": "ES256", "kid": "x", "sig": "AA"}',  # not UTF-8
    b'{"payload": "AA", "payload": "AA", "alg": "ES256", "kid": "' + b"a" * 64 + b'", "sig": "AA"}',
]


# Parsing comes before any database: SQLite alone.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
@pytest.mark.parametrize("body", MALFORMED_BODIES)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_payment_route_refuses_bodies_as_the_model_route_does(api, body, content_type):
    """POST /v1/payments parses its body itself; /v1/topups still through EnvelopeIn: same answers."""
    headers = {"content-type": content_type} if content_type else {}
    lean = api.post("/v1/payments", content=body, headers=headers)
    model = api.post("/v1/topups", content=body, headers=headers)
    assert (lean.status_code, lean.json()["error"]["code"]) == (
        model.status_code,
        model.json()["error"]["code"],
    ), (lean.text, model.text)
    assert lean.status_code in (400, 401, 422)


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("document", "status", "code"),
    [
        ({"payments": []}, 422, "invalid_request"),
        ({"payments": "x"}, 422, "invalid_request"),
        ({"payments": [], "more": 1}, 422, "invalid_request"),
        ({"payments": [{"payload": "AA"}]}, 422, "invalid_request"),
        ([], 422, "invalid_request"),
        (
            {"payments": [{"payload": "AA", "alg": "ES256", "kid": "a" * 64, "sig": "AA"}] * 101},
            413,
            "batch_too_large",
        ),
    ],
)
def test_batch_route_refuses_malformed_batches(api, document, status, code):
    response = api.post("/v1/payments/batch", json=document)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
