"""Look-alike store names flagged at enrollment (issue 17.2).

Revision ID: 0009
Revises: 0008

One row per store: the hash of its name's confusable skeleton (UTS #39,
center.keys.store_names), the earlier store it resembles if any, and the flag an
operator decides (`center operator list-stores --flagged`, `clear-store`).
Existing stores are filled in in enrollment order, so a look-alike already
enrolled is flagged now, against the store that was there first.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "store_names",
        sa.Column("store_id", sa.String(32), sa.ForeignKey("parties.id"), primary_key=True),
        sa.Column("skeleton_sha256", sa.String(64), nullable=False),
        sa.Column("resembles", sa.String(32), sa.ForeignKey("parties.id")),
        sa.Column("flag", sa.String(16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("decided_at_ms", sa.BigInteger),
        sa.Column("decided_by", sa.String(64)),
    )
    op.create_index("ix_store_names_skeleton_sha256", "store_names", ["skeleton_sha256"])
    op.create_index(
        "ux_store_names_first_of_skeleton",
        "store_names",
        ["skeleton_sha256"],
        unique=True,
        sqlite_where=sa.text("resembles IS NULL"),
        postgresql_where=sa.text("resembles IS NULL"),
    )
    _fill_in_existing_stores(table)


def _fill_in_existing_stores(table: sa.Table) -> None:
    from center.keys.store_names import skeleton_sha256  # the same skeleton as enrollment uses

    conn = op.get_bind()
    stores = conn.execute(
        sa.text("SELECT id, name, created_at_ms FROM parties WHERE role = 'store' ORDER BY created_at_ms, id")
    ).all()
    first_of: dict[str, str] = {}
    rows = []
    for store in stores:
        key = skeleton_sha256(store.name)
        earlier = first_of.setdefault(key, store.id)
        resembles = None if earlier == store.id else earlier
        rows.append(
            {
                "store_id": store.id,
                "skeleton_sha256": key,
                "resembles": resembles,
                "flag": "none" if resembles is None else "flagged",
                "created_at_ms": store.created_at_ms,
            }
        )
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_index("ux_store_names_first_of_skeleton", "store_names")
    op.drop_index("ix_store_names_skeleton_sha256", "store_names")
    op.drop_table("store_names")
