"""payments.audit_seq: the buyer's PAY entry in the audit log, so a notice can prove its payment.

Revision ID: 0013
Revises: 0012

A store's notice carries the inclusion proof of its payment's audit entry (paywire.notice_proof);
the notices fetch finds the entry by this column. It is backfilled here from audit_log: an accepted
pay's entry records {"action": "paid", "payment_id": ...} (center.pipeline.money.paid). The entries
are read in chunks by seq (memory stays bounded at any log size), in Python so the same code runs on
SQLite and PostgreSQL (no JSON operators of either).
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Pay entries read (and payments updated) per step of the backfill.
BACKFILL_CHUNK_ENTRIES = 2000

_audit_log = sa.table("audit_log", sa.column("seq"), sa.column("msg_type"), sa.column("action"))
_payments = sa.table("payments", sa.column("id"), sa.column("audit_seq"))


def upgrade() -> None:
    op.add_column("payments", sa.Column("audit_seq", sa.BigInteger, nullable=True))
    backfill(op.get_bind())


def backfill(conn: sa.Connection) -> int:
    """Set audit_seq of every payment whose accepted pay entry is in the log; returns how many."""
    update = (
        sa.update(_payments)
        .where(_payments.c.id == sa.bindparam("b_id"))
        .values(audit_seq=sa.bindparam("b_seq"))
    )
    after, done = 0, 0
    while True:
        rows = conn.execute(
            sa.select(_audit_log.c.seq, _audit_log.c.action)
            .where(_audit_log.c.msg_type == "pay", _audit_log.c.seq > after)
            .order_by(_audit_log.c.seq)
            .limit(BACKFILL_CHUNK_ENTRIES)
        ).all()
        if not rows:
            return done
        after = rows[-1].seq
        links = []
        for row in rows:
            action = json.loads(row.action)
            if isinstance(action, dict) and action.get("action") == "paid":
                links.append({"b_id": action["payment_id"], "b_seq": row.seq})
        if links:
            conn.execute(update, links)
            done += len(links)


def downgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("audit_seq")
