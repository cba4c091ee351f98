"""Operators and auditors; console login challenges and sessions.

Revision ID: 0004
Revises: 0003

Parties may now have the role 'auditor' besides member, store and operator
(operators and auditors sign their requests with token keys like members).
The console's login challenges and sessions live in the database, not in a
worker's memory: `center serve --workers N` runs several processes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD_ROLES = "role IN ('member', 'store', 'operator')"
NEW_ROLES = "role IN ('member', 'store', 'operator', 'auditor')"


def upgrade() -> None:
    _replace_role_check(NEW_ROLES)
    op.create_table(
        "console_challenges",
        sa.Column("challenge", sa.String(19), primary_key=True),
        sa.Column("browser_secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
        sa.Column("approved_kid", sa.String(64), sa.ForeignKey("keys.kid")),
        sa.Column("approved_operator_id", sa.String(32), sa.ForeignKey("parties.id")),
        sa.Column("approved_at_ms", sa.BigInteger),
        sa.Column("consumed", sa.Boolean, nullable=False),
        sa.CheckConstraint("expires_at_ms > created_at_ms", name="ck_console_challenges_lifetime"),
    )
    op.create_index("ix_console_challenges_expires", "console_challenges", ["expires_at_ms"])
    op.create_table(
        "console_sessions",
        sa.Column("session_sha256", sa.String(64), primary_key=True),
        sa.Column("operator_id", sa.String(32), sa.ForeignKey("parties.id"), nullable=False),
        sa.Column("kid", sa.String(64), sa.ForeignKey("keys.kid"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.CheckConstraint("role IN ('operator', 'auditor')", name="ck_console_sessions_role"),
        sa.CheckConstraint("expires_at_ms > created_at_ms", name="ck_console_sessions_lifetime"),
    )
    op.create_index("ix_console_sessions_kid", "console_sessions", ["kid"])
    op.create_index("ix_console_sessions_expires", "console_sessions", ["expires_at_ms"])


def downgrade() -> None:
    auditors = (
        op.get_bind().execute(sa.text("SELECT COUNT(*) FROM parties WHERE role = 'auditor'")).scalar_one()
    )
    if auditors:
        # Never delete a party (its keys sign audit entries): refuse instead.
        raise RuntimeError(f"{auditors} auditor(s) exist; revision 0003 cannot represent them")
    op.drop_table("console_sessions")
    op.drop_table("console_challenges")
    _replace_role_check(OLD_ROLES)


def _replace_role_check(condition: str) -> None:
    # SQLite cannot alter a CHECK constraint: batch mode rebuilds the table
    # (copy, drop, rename), which center.storage.db.migrate runs with foreign keys off
    # and checks afterwards. PostgreSQL alters it in place.
    with op.batch_alter_table("parties") as batch:
        batch.drop_constraint("ck_parties_role", type_="check")
        batch.create_check_constraint("ck_parties_role", condition)
