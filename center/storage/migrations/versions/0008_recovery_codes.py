"""Recovery codes and operator tickets for lost-card rebinds (issue 11.4).

Revision ID: 0008
Revises: 0007

`recovery_keys`: per account, the public key of the member's recovery code
(kind 'code', one active) and of one-time operator tickets (kind 'ticket');
never the code itself (paywire.recovery). `key_claims` gains how a rebind claim
was proven ('code', 'ticket' or NULL: an operator decides as before) and the
recovery key the new key's enrollment brought, installed when it is bound.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recovery_keys",
        sa.Column("party_id", sa.String(32), sa.ForeignKey("parties.id"), primary_key=True),
        sa.Column("public_key", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger),
        sa.Column("issued_by", sa.String(64)),
        sa.Column("used_at_ms", sa.BigInteger),
        sa.Column("used_by_kid", sa.String(64)),
    )
    with op.batch_alter_table("key_claims") as batch:
        batch.add_column(sa.Column("proof", sa.String(8)))
        batch.add_column(sa.Column("recovery_key", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("key_claims") as batch:
        batch.drop_column("recovery_key")
        batch.drop_column("proof")
    op.drop_table("recovery_keys")
