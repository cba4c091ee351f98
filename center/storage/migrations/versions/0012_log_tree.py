"""The audit log as a Merkle tree (issue 13): stored nodes, signed tree heads, the tree's frontier.

Revision ID: 0012
Revises: 0011

log_nodes holds every perfect subtree's hash (level 0: the leaf hashes, leaf index = audit seq - 1),
tree_heads one center-signed head per commit group, audit_head the frontier of the tree over its
`seq` entries and the size, hash and time of the newest signed head. The tree is built here over the entries
already written, in chunks (memory stays bounded at any log size), with the same leaf bytes the
hash chain hashes (paywire.log_entry): the old chain becomes the tree's first entries. No head is
signed here (the center's token is not at hand): the first commit group after the upgrade signs
one covering everything. audit_log (kid, msg_id) is indexed for the inclusion lookups by request.
Nodes and heads are append-only, like the entries.
"""

import json

import sqlalchemy as sa
from alembic import op

from paywire import merkle
from paywire.log_entry import entry_fields, entry_leaf_hash

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

APPEND_ONLY_TABLES = ("log_nodes", "tree_heads")
# Entries read (and nodes written) per step while building the tree over the existing log.
BUILD_CHUNK_ENTRIES = 2000

_audit_log = sa.table(
    "audit_log",
    sa.column("seq"),
    sa.column("created_at_ms"),
    sa.column("kid"),
    sa.column("alg"),
    sa.column("msg_type"),
    sa.column("msg_id"),
    sa.column("payload"),
    sa.column("signature"),
    sa.column("action"),
)
_audit_head = sa.table("audit_head", sa.column("id"), sa.column("seq"), sa.column("frontier"))
_log_nodes = sa.table("log_nodes", sa.column("level"), sa.column("idx"), sa.column("hash"))


def upgrade() -> None:
    op.create_table(
        "log_nodes",
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "tree_heads",
        sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary, nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
        sa.Column("prev_head_sha256", sa.String(64), nullable=False),
        sa.Column("head_sha256", sa.String(64), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
    )
    op.add_column("audit_head", sa.Column("frontier", sa.Text, nullable=False, server_default=""))
    op.add_column("audit_head", sa.Column("signed_size", sa.BigInteger, nullable=False, server_default="0"))
    # The newest signed head's hash and time (none yet: the genesis value, 0).
    op.add_column(
        "audit_head", sa.Column("head_sha256", sa.String(64), nullable=False, server_default="0" * 64)
    )
    op.add_column(
        "audit_head", sa.Column("head_timestamp_ms", sa.BigInteger, nullable=False, server_default="0")
    )
    op.create_index("ix_audit_log_kid_msg_id", "audit_log", ["kid", "msg_id"])
    _append_only_triggers()
    build_tree(op.get_bind())


def build_tree(conn: sa.Connection) -> int:
    """Add the leaves and nodes of every entry up to the head's seq; store the frontier. Returns the size."""
    head_seq = conn.execute(sa.select(_audit_head.c.seq).where(_audit_head.c.id == 1)).scalar_one()
    size, frontier = 0, ()
    while size < head_seq:
        rows = (
            conn.execute(
                sa.select(_audit_log)
                .where(_audit_log.c.seq > size, _audit_log.c.seq <= head_seq)
                .order_by(_audit_log.c.seq)
                .limit(BUILD_CHUNK_ENTRIES)
            )
            .mappings()
            .all()
        )
        leaves = []
        for row in rows:
            # A gap would give later entries the wrong leaf index: a damaged log is not upgraded.
            if row["seq"] != size + len(leaves) + 1:
                raise RuntimeError(
                    f"audit entry {size + len(leaves) + 1} is missing: run `center audit verify` "
                    "on the old version and restore the log before upgrading"
                )
            leaves.append(entry_leaf_hash(entry_fields(row, json.loads(row["action"]))))
        if not leaves:
            raise RuntimeError(f"audit entry {size + 1} is missing: the log ends before its head")
        appended = merkle.append(size, frontier, leaves)
        conn.execute(
            sa.insert(_log_nodes),
            [{"level": level, "idx": idx, "hash": digest} for (level, idx), digest in appended.nodes.items()],
        )
        size, frontier = appended.size, appended.frontier
    conn.execute(
        sa.update(_audit_head)
        .where(_audit_head.c.id == 1)
        .values(frontier=",".join(digest.hex() for digest in frontier))
    )
    return size


def _append_only_triggers() -> None:
    """Nodes and heads are never updated or deleted (as in 0002 for audit_log and transfers)."""
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
    op.drop_index("ix_audit_log_kid_msg_id", "audit_log")
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("head_timestamp_ms")
        batch.drop_column("head_sha256")
        batch.drop_column("signed_size")
        batch.drop_column("frontier")
    op.drop_table("tree_heads")
    op.drop_table("log_nodes")
