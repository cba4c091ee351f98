"""Ledger: accounts, immutable transfers, top-ups, payments, refunds, payouts.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets 64 bits.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SYSTEM_ACCOUNTS = [
    ("funding:credit", "funding"),
    ("funding:bank", "funding"),
    ("funding:postal", "funding"),
    ("funding:cash", "funding"),
    ("payouts:pending", "payouts"),
    ("payouts:settled", "payouts"),
]
APPEND_ONLY_TABLES = ("transfers", "audit_log")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(48), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("party_id", sa.String(32), sa.ForeignKey("parties.id")),
        sa.Column("balance_minor", sa.BigInteger, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("kind IN ('funding', 'member', 'store', 'payouts')", name="ck_accounts_kind"),
        # The rule the whole product rests on: a member or store never below zero.
        sa.CheckConstraint(
            "kind NOT IN ('member', 'store') OR balance_minor >= 0", name="ck_accounts_not_negative"
        ),
    )
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("debit_account", sa.String(48), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("credit_account", sa.String(48), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(24), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("amount_minor > 0", name="ck_transfers_positive"),
        sa.CheckConstraint("debit_account <> credit_account", name="ck_transfers_two_accounts"),
    )
    op.create_index("ix_transfers_debit", "transfers", ["debit_account"])
    op.create_index("ix_transfers_credit", "transfers", ["credit_account"])
    op.create_index("ix_transfers_ref", "transfers", ["ref"])
    op.create_table(
        "topups",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("member_id", sa.String(32), sa.ForeignKey("parties.id"), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("decided_at_ms", sa.BigInteger),
        sa.Column("decided_by", sa.String(64)),
        sa.CheckConstraint("amount_minor > 0", name="ck_topups_positive"),
        sa.CheckConstraint("status IN ('pending', 'confirmed', 'declined')", name="ck_topups_status"),
        sa.CheckConstraint("method IN ('credit', 'bank', 'postal', 'cash')", name="ck_topups_method"),
    )
    op.create_index("ix_topups_member", "topups", ["member_id"])
    op.create_table(
        "payments",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(24), nullable=False, unique=True),
        sa.Column("buyer_id", sa.String(32), sa.ForeignKey("parties.id"), nullable=False),
        sa.Column("store_id", sa.String(32), sa.ForeignKey("parties.id"), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("refunded_minor", sa.BigInteger, nullable=False),
        sa.Column("order_ref", sa.String(64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("amount_minor > 0", name="ck_payments_positive"),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= amount_minor", name="ck_payments_refunded"
        ),
    )
    op.create_index("ix_payments_buyer", "payments", ["buyer_id"])
    op.create_index("ix_payments_store_seq", "payments", ["store_id", "seq"])
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("payment_id", sa.String(24), sa.ForeignKey("payments.id"), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.CheckConstraint("amount_minor > 0", name="ck_refunds_positive"),
    )
    op.create_index("ix_refunds_payment", "refunds", ["payment_id"])
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("store_id", sa.String(32), sa.ForeignKey("parties.id"), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("bank_account", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("batch_id", sa.String(32)),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("exported_at_ms", sa.BigInteger),
        sa.Column("settled_at_ms", sa.BigInteger),
        sa.CheckConstraint("amount_minor > 0", name="ck_payouts_positive"),
        sa.CheckConstraint("status IN ('pending', 'exported', 'settled')", name="ck_payouts_status"),
    )
    op.create_index("ix_payouts_status", "payouts", ["status"])
    accounts = sa.table(
        "accounts",
        sa.column("id"),
        sa.column("kind"),
        sa.column("party_id"),
        sa.column("balance_minor"),
        sa.column("created_at_ms"),
    )
    op.bulk_insert(
        accounts,
        [
            {"id": i, "kind": k, "party_id": None, "balance_minor": 0, "created_at_ms": 0}
            for i, k in SYSTEM_ACCOUNTS
        ],
    )
    # Parties enrolled before this migration get their account too.
    op.execute(
        "INSERT INTO accounts (id, kind, party_id, balance_minor, created_at_ms) "
        "SELECT 'party:' || id, role, id, 0, created_at_ms FROM parties WHERE role IN ('member', 'store')"
    )
    _append_only_triggers()


def _append_only_triggers() -> None:
    """Transfers and audit entries are never updated or deleted: corrections are new rows."""
    dialect = op.get_bind().dialect.name
    for table in APPEND_ONLY_TABLES:
        if dialect == "sqlite":
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        elif dialect == "postgresql":
            op.execute(
                f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN RAISE EXCEPTION '{table} is append-only'; END $$"
            )
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in APPEND_ONLY_TABLES:
        if dialect == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        elif dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
    for name in ("payouts", "refunds", "payments", "topups", "transfers", "accounts"):
        op.drop_table(name)
