"""payments.repeat and one first payment per order: a second payment of an order by accident is refused.

Revision ID: 0014
Revises: 0013

A buyer who pays the same order reference to the same store again is refused (duplicate_order,
center.pipeline.money) unless the request says it is meant ("repeat": true in the pay body); such
a payment is stored with repeat true. The unique partial index on (buyer_id, store_id, order_ref)
WHERE NOT repeat holds the first payment of each order, so two workers cannot both book it.

Payments booked before this revision may already repeat an order. They stay as they were booked:
all but the first of each such order (by seq, the order they were committed in) are marked repeat
here, before the index is built, so the migration does not fail on them. Only the duplicates are
read (a GROUP BY over the payments), and updated by primary key in chunks.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

INDEX_NAME = "ux_payments_first_of_order"
ORDER_COLUMNS = ["buyer_id", "store_id", "order_ref"]
# Payments marked per statement of the backfill.
MARK_CHUNK_ROWS = 2000

_payments = sa.table(
    "payments",
    sa.column("seq"),
    sa.column("buyer_id"),
    sa.column("store_id"),
    sa.column("order_ref"),
    sa.column("repeat", sa.Boolean),
)


def upgrade() -> None:
    op.add_column("payments", sa.Column("repeat", sa.Boolean, nullable=False, server_default=sa.false()))
    mark_repeats(op.get_bind())
    op.create_index(
        INDEX_NAME,
        "payments",
        ORDER_COLUMNS,
        unique=True,
        sqlite_where=sa.text("NOT repeat"),
        postgresql_where=sa.text("NOT repeat"),
    )


def mark_repeats(conn: sa.Connection) -> int:
    """Mark repeat every payment but the first (lowest seq) of its order; returns how many it marked."""
    firsts = (
        sa.select(*(_payments.c[name] for name in ORDER_COLUMNS), sa.func.min(_payments.c.seq).label("first"))
        .group_by(*(_payments.c[name] for name in ORDER_COLUMNS))
        .having(sa.func.count() > 1)
        .subquery("firsts")
    )
    later = (
        sa.select(_payments.c.seq)
        .join(firsts, sa.and_(*(_payments.c[name] == firsts.c[name] for name in ORDER_COLUMNS)))
        .where(_payments.c.seq > firsts.c.first, sa.not_(_payments.c.repeat))
        .order_by(_payments.c.seq)
    )
    seqs = conn.execute(later).scalars().all()
    mark = sa.update(_payments).where(_payments.c.seq == sa.bindparam("b_seq")).values(repeat=True)
    for start in range(0, len(seqs), MARK_CHUNK_ROWS):
        conn.execute(mark, [{"b_seq": seq} for seq in seqs[start : start + MARK_CHUNK_ROWS]])
    return len(seqs)


def downgrade() -> None:
    op.drop_index(INDEX_NAME, "payments")
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("repeat")
