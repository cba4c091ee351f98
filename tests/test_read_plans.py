"""No read the center serves scans a table that grows with the books.

Timing at a million rows is bench/bench_queries.py's job (tests never assert on time); what a test
can assert is the plan: each statement of each read (tests/scale_rows.py) is explained, on SQLite
and PostgreSQL, and must reach the large tables through an index. PostgreSQL prefers a sequential
scan on small tables whatever the indexes, so it is asked with enable_seqscan off: a 'Seq Scan'
that remains means no index could serve the read.
"""

from __future__ import annotations

import re

import pytest
from scale_rows import fill, reads
from sqlalchemy import event

from center.storage.db import make_engine, migrate

PAYMENTS = 3_000
# Tables that grow with members and payments; small ones (audit head, config) may be scanned.
GROWING = ("payments", "transfers", "topups", "refunds", "payouts", "accounts", "parties", "keys", "messages")
SQLITE_FULL_SCAN = re.compile(r"^SCAN (\w+)(?! USING (?:COVERING )?INDEX)")
PG_FULL_SCAN = re.compile(r"Seq Scan on (\w+)")


@pytest.fixture
def large_books(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        fill(conn, PAYMENTS)
    yield engine
    engine.dispose()


def statements_of(engine, call) -> list[tuple[str, object]]:
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many):
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert seen, "the read ran no statement"
    return seen


def full_scans(conn, statement: str, parameters) -> list[str]:
    if conn.dialect.name == "sqlite":
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        details = [row[-1] for row in plan]
        scans = [m.group(1) for m in (SQLITE_FULL_SCAN.match(d) for d in details) if m]
    else:
        conn.exec_driver_sql("SET enable_seqscan = off")
        plan = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
        scans = [m.group(1) for row in plan for m in PG_FULL_SCAN.finditer(row[0])]
    return [table for table in scans if table in GROWING]


def read_names() -> list[str]:
    return [name for name in reads(None)]


@pytest.mark.parametrize("read", read_names())
def test_read_uses_indexes(large_books, read):
    with large_books.connect() as conn:
        call = reads(conn)[read]
        result = call()
        for statement, parameters in statements_of(large_books, call):
            assert full_scans(conn, statement, parameters) == [], f"{read}: {statement}"
    assert result is not None


def test_the_check_sees_a_full_scan(large_books):
    """The check itself: a read by an unindexed column is caught (or the tests above prove nothing)."""
    with large_books.connect() as conn:
        statement = "SELECT id FROM payments WHERE order_ref = 'order-7'"
        assert full_scans(conn, statement, {} if conn.dialect.name == "postgresql" else ()) == ["payments"]
