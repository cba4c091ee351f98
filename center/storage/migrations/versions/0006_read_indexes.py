"""Indexes for the reads that grow with the books (measured with bench/bench_queries.py).

Revision ID: 0006
Revises: 0005

At 1,000,000 payments the console's statistics scanned every payment and every
top-up (30 days: PostgreSQL 232 ms, SQLite 1.05 s) and its pending top-ups every
top-up (12.5 ms, 11.3 ms). `payments.created_at_ms` serves the daily series and
the top stores; `topups (status, created_at_ms)` the top-up lists by status;
`topups (status, decided_at_ms)` the confirmed funding per day. After: statistics
148 ms and 363 ms (they still read each payment of the 30 days), pending top-ups
0.55 ms and 0.31 ms. The price on the hot path is the payments index: 1.1 us more
per payment row inserted on PostgreSQL (26.1 -> 27.4 us, 100 rows a transaction).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_payments_created", "payments", ["created_at_ms"]),
    ("ix_topups_status_created", "topups", ["status", "created_at_ms"]),
    ("ix_topups_status_decided", "topups", ["status", "decided_at_ms"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table)
