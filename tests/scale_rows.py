"""Large books for read-path checks: bulk rows shaped as the center writes them, and the reads it serves.

bench/bench_queries.py times the reads at a million payments; tests/test_read_plans.py checks at a
small size that no read scans a table that grows with the books. Rows are generated in the database
with one SQL statement per table (a million payments in seconds); ids derive from a row number so
that they join; balances are not meant to add up (nothing here checks the ledger).
"""

from __future__ import annotations

from sqlalchemy import select, text

from center.console import inquiry, statistics
from center.pipeline import handlers
from center.pipeline.types import Signer
from center.storage.db import payments

DAY_MS = 86_400_000
NOW_MS = 1_790_000_000_000
SPAN_DAYS = 365
PAYMENTS_PER_MEMBER = 10
PAYMENTS_PER_STORE = 1_000
BASELINE = "payment by id (baseline)"


class _Currency:
    """What handlers.balance reads of the center: its currency."""

    currency = "EUR"


def fill(conn, payments_count: int) -> dict:
    """Bulk rows, one statement per table; ids derive from a row number so that they join."""
    sizes = {
        "members": max(1, payments_count // PAYMENTS_PER_MEMBER),
        "stores": max(1, payments_count // PAYMENTS_PER_STORE),
        "payments": payments_count,
        "topups": max(1, payments_count // 10),
        "refunds": max(1, payments_count // 100),
    }
    sizes["payouts"] = sizes["stores"] * 10
    for statement in fill_statements(conn.dialect.name):
        conn.execute(text(statement), sizes | {"now_ms": NOW_MS, "span_ms": SPAN_DAYS * DAY_MS})
    return sizes


def fill_statements(dialect: str) -> list[str]:
    if dialect == "postgresql":
        series = "SELECT generate_series(1::bigint, {limit}) AS n"
        hex16 = "lpad(to_hex({n}), 16, '0')"
    else:
        series = (
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {limit}) "
            "SELECT n FROM s"
        )
        hex16 = "printf('%016x', {n})"

    def rows(limit: str) -> str:
        return f"({series.format(limit=limit)}) AS g"

    def party(prefix: str, n: str) -> str:
        return f"'{prefix}-' || " + hex16.format(n=n)

    when = "(:now_ms - (g.n * 7919) % :span_ms)"  # spread over the year, deterministic
    buyer, store = party("M", "(g.n % :members + 1)"), party("S", "(g.n % :stores + 1)")
    return [
        "INSERT INTO parties (id, role, name, address, birth_date, bank_account, status, created_at_ms) "
        f"SELECT {party('M', 'g.n')}, 'member', 'Member ' || g.n, '-', '1990-01-01', NULL, 'active', 0 "
        f"FROM {rows(':members')}",
        "INSERT INTO parties (id, role, name, address, birth_date, bank_account, status, created_at_ms) "
        f"SELECT {party('S', 'g.n')}, 'store', 'Store ' || g.n, '-', NULL, 'DE00BANK', 'active', 0 "
        f"FROM {rows(':stores')}",
        "INSERT INTO accounts (id, kind, party_id, balance_minor, created_at_ms) "
        "SELECT 'party:' || id, role, id, 0, 0 FROM parties",
        "INSERT INTO payments "
        "(id, buyer_id, store_id, amount_minor, refunded_minor, order_ref, created_at_ms) "
        f"SELECT {party('P', 'g.n')}, {buyer}, {store}, 100 + g.n % 5000, 0, 'order-' || g.n, {when} "
        f"FROM {rows(':payments')}",
        "INSERT INTO transfers "
        "(id, debit_account, credit_account, amount_minor, kind, ref, created_at_ms) "
        "SELECT 'T-' || substr(id, 3), 'party:' || buyer_id, 'party:' || store_id, amount_minor, "
        "'payment', id, created_at_ms FROM payments",
        "INSERT INTO topups "
        "(id, member_id, amount_minor, method, status, created_at_ms, decided_at_ms, decided_by) "
        f"SELECT {party('U', 'g.n')}, {buyer}, 10000, 'bank', "
        "CASE WHEN g.n % 20 = 0 THEN 'pending' WHEN g.n % 20 = 1 THEN 'declined' ELSE 'confirmed' END, "
        f"{when}, CASE WHEN g.n % 20 = 0 THEN NULL ELSE {when} + 60000 END, "
        f"CASE WHEN g.n % 20 = 0 THEN NULL ELSE 'webhook:funding' END FROM {rows(':topups')}",
        "INSERT INTO refunds (id, payment_id, amount_minor, created_at_ms) "
        f"SELECT {party('R', 'g.n')}, {party('P', '(g.n * 97 % :payments + 1)')}, 1, {when} "
        f"FROM {rows(':refunds')}",
        "INSERT INTO payouts (id, store_id, amount_minor, bank_account, status, batch_id, created_at_ms) "
        f"SELECT {party('Y', 'g.n')}, {store}, 100, 'DE00BANK', 'pending', NULL, {when} "
        f"FROM {rows(':payouts')}",
        "ANALYZE",
    ]


def reads(conn) -> dict:
    """name -> a call reading as the center does for one member, store or operator click."""
    member, store, now_ms = "M-" + "0" * 15 + "7", "S-" + "0" * 15 + "3", NOW_MS
    signer = Signer(kid="0" * 64, party_id=member, role="member")
    return {
        BASELINE: lambda: conn.execute(select(payments).where(payments.c.id == "P-" + "0" * 15 + "9")).all(),
        "member statement, first page": lambda: inquiry.statement(conn, member),
        "member statement, last 30 days": lambda: inquiry.statement(
            conn, member, window=inquiry.Window(now_ms - 30 * DAY_MS, now_ms)
        ),
        "member balance (recent top-ups, refunds)": lambda: handlers.balance(
            _Currency(), conn, signer, None, {}, now_ms
        ),
        "store notices after the newest": lambda: conn.execute(
            select(payments)
            .where(payments.c.store_id == store, payments.c.seq > 0)
            .order_by(payments.c.seq)
            .limit(100)
        ).all(),
        "console: one buyer's payments": lambda: inquiry.list_payments(conn, buyer_id=member),
        "console: pending top-ups": lambda: inquiry.list_topups(conn, status="pending"),
        "console: statistics, 30 days": lambda: statistics.statistics(conn, days=30, now_ms=now_ms),
    }
