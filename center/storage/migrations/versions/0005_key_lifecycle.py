"""Key lifecycle: keys waiting to be bound, rotated and rejected keys; key claims.

Revision ID: 0005
Revises: 0004

A key may now be 'pending_bind' (a new token's key asking to be bound to an
existing account after a lost card), 'rotated' (replaced by its holder) or
'rejected' (an operator refused the claim), besides 'active' and 'revoked'.
`key_claims` records, per new key, what it claimed and how it was decided:
the identity a rebinding member gave (for the operator's check) or the key a
rotation replaced.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD_STATUSES = "status IN ('active', 'revoked')"
NEW_STATUSES = "status IN ('active', 'revoked', 'pending_bind', 'rotated', 'rejected')"


def upgrade() -> None:
    _replace_status_check(NEW_STATUSES)
    op.create_table(
        "key_claims",
        sa.Column("kid", sa.String(64), sa.ForeignKey("keys.kid"), primary_key=True),
        sa.Column("party_id", sa.String(32), sa.ForeignKey("parties.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("replaces_kid", sa.String(64), sa.ForeignKey("keys.kid")),
        sa.Column("name", sa.String(200)),
        sa.Column("address", sa.String(500)),
        sa.Column("birth_date", sa.String(10)),
        sa.Column("bank_account", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("decided_at_ms", sa.BigInteger),
        sa.Column("decided_by", sa.String(64)),
        sa.CheckConstraint("kind IN ('rebind', 'rotation')", name="ck_key_claims_kind"),
        sa.CheckConstraint("status IN ('pending', 'bound', 'rejected')", name="ck_key_claims_status"),
        # A rotation names the key it replaces; a rebind never does.
        sa.CheckConstraint("(kind = 'rotation') = (replaces_kid IS NOT NULL)", name="ck_key_claims_replaces"),
    )
    op.create_index("ix_key_claims_party_id", "key_claims", ["party_id"])
    op.create_index("ix_key_claims_status", "key_claims", ["status"])


def downgrade() -> None:
    newer = (
        op.get_bind().execute(sa.text(f"SELECT COUNT(*) FROM keys WHERE NOT ({OLD_STATUSES})")).scalar_one()
    )
    if newer:
        # Never rewrite a key's status (its history depends on it): refuse instead.
        raise RuntimeError(
            f"{newer} key(s) are pending, rotated or rejected; revision 0004 cannot represent them"
        )
    op.drop_index("ix_key_claims_status", "key_claims")
    op.drop_index("ix_key_claims_party_id", "key_claims")
    op.drop_table("key_claims")
    _replace_status_check(OLD_STATUSES)


def _replace_status_check(condition: str) -> None:
    # SQLite cannot alter a CHECK constraint: batch mode rebuilds the table;
    # PostgreSQL alters it in place (see 0004).
    with op.batch_alter_table("keys") as batch:
        batch.drop_constraint("ck_keys_status", type_="check")
        batch.create_check_constraint("ck_keys_status", condition)
