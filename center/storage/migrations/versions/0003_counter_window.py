"""Per-key counters: each used once, accepted within a window below the highest.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("ctr", sa.BigInteger, nullable=True))
    # NULLs never collide, so rows from before this revision stay valid.
    op.create_index("ux_messages_kid_ctr", "messages", ["kid", "ctr"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_messages_kid_ctr", "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("ctr")
