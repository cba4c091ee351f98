"""Console reads: who looked at which members' data in the operator console.

Revision ID: 0007
Revises: 0006

One row per answered console read (search, lists, statements, statistics, CSV
exports): the operator, the key and session (as its hash) it came through, the
view, the filters and page as asked, and how many rows it returned. Written
before the answer leaves (center.console.access); listed by `center operator
access-log`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_reads",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("operator_id", sa.String(32), sa.ForeignKey("parties.id"), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("session_sha256", sa.String(64), nullable=False),
        sa.Column("view", sa.String(32), nullable=False),
        sa.Column("filters", sa.Text, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
    )
    op.create_index("ix_console_reads_operator_at", "console_reads", ["operator_id", "at_ms"])
    op.create_index("ix_console_reads_at", "console_reads", ["at_ms"])


def downgrade() -> None:
    op.drop_index("ix_console_reads_at", "console_reads")
    op.drop_index("ix_console_reads_operator_at", "console_reads")
    op.drop_table("console_reads")
