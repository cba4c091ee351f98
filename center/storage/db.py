"""Database schema (SQLAlchemy Core) and engine set-up for SQLite and PostgreSQL.

The schema is created and upgraded only by Alembic migrations
(center/migrations); these Table objects mirror them for queries, and a test
checks the two agree. Long because it is that one mirror: every table, next to the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy import false as sql_false
from sqlalchemy.engine import make_url

metadata = MetaData()

parties = Table(
    "parties",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("role", String(16), nullable=False),  # member | store | operator | auditor
    Column("name", String(200), nullable=False),
    Column("address", String(500), nullable=False),
    Column("birth_date", String(10)),
    Column("bank_account", String(64)),
    Column("status", String(16), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

keys = Table(
    "keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("party_id", String(32), ForeignKey("parties.id"), nullable=False, index=True),
    Column("algorithm", String(16), nullable=False),
    Column("spki", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # active | revoked | pending_bind | rotated | rejected
    Column("last_ctr", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

# One row per accepted signed message: the idempotency record. The same
# (kid, msg_id) with the same bytes answers `response` again.
messages = Table(
    "messages",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("msg_id", String(64), primary_key=True),
    Column("msg_type", String(32), nullable=False),
    Column("ctr", BigInteger),  # unique per kid: a counter is used once
    Column("payload_sha256", String(64), nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("kid", String(64), nullable=False),
    Column("alg", String(16), nullable=False),
    Column("msg_type", String(32), nullable=False),
    Column("msg_id", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("action", Text, nullable=False),
)

Index("ix_audit_log_kid_msg_id", audit_log.c.kid, audit_log.c.msg_id)

# Single row (id = 1): the chain head. Appending locks it, which orders the
# chain across processes; it also lets verification notice a cut-off tail.
# Migration 0012: the Merkle tree's frontier (hex hashes of the perfect subtrees of the first
# `seq` leaves, largest first, joined by ","; see paywire.merkle) and the newest signed tree head's
# size, hash and time (what the next head names and must not precede, read with the lock: no other
# query). Tree heads are signed while this row is locked, so they follow commit order.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Column("frontier", Text, nullable=False, server_default=""),
    Column("signed_size", BigInteger, nullable=False, server_default="0"),
    Column("head_sha256", String(64), nullable=False, server_default="0" * 64),
    Column("head_timestamp_ms", BigInteger, nullable=False, server_default="0"),
)

# The audit log as a Merkle tree (RFC 9162 hashing, migration 0012; center.ledger.log_tree):
# every perfect subtree's hash, (level, idx) covering leaves [idx << level, (idx + 1) << level);
# level 0 holds the leaf hashes (leaf idx = audit seq - 1). Proofs are built from these alone.
log_nodes = Table(
    "log_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

# One signed tree head per commit group, in commit order, each naming the one before it.
# `envelope` is the signed envelope as JSON text (what receipts carry as their tree_head).
tree_heads = Table(
    "tree_heads",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary, nullable=False),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("prev_head_sha256", String(64), nullable=False),
    Column("head_sha256", String(64), nullable=False),
    Column("envelope", Text, nullable=False),
)

SEQ = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(48), primary_key=True),  # party:<id>, funding:<method>, payouts:pending|settled
    Column("kind", String(16), nullable=False),
    Column("party_id", String(32), ForeignKey("parties.id")),
    Column("balance_minor", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("debit_account", String(48), ForeignKey("accounts.id"), nullable=False),
    Column("credit_account", String(48), ForeignKey("accounts.id"), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # topup | payment | refund | payout | settle
    Column("ref", String(24), nullable=False),  # the top-up, payment, refund or payout id
    Column("created_at_ms", BigInteger, nullable=False),
)

topups = Table(
    "topups",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("member_id", String(32), ForeignKey("parties.id"), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("method", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # pending | confirmed | declined
    Column("created_at_ms", BigInteger, nullable=False),
    Column("decided_at_ms", BigInteger),
    Column("decided_by", String(64)),
)

payments = Table(
    "payments",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),  # the stores' notice cursor
    Column("id", String(24), nullable=False, unique=True),
    Column("buyer_id", String(32), ForeignKey("parties.id"), nullable=False),
    Column("store_id", String(32), ForeignKey("parties.id"), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("refunded_minor", BigInteger, nullable=False),
    Column("order_ref", String(64), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    # The buyer's PAY entry in audit_log (leaf audit_seq - 1): a notice carries its inclusion proof.
    # NULL only for a payment written before it is set in the same transaction (migration 0013).
    Column("audit_seq", BigInteger, nullable=True),
    # A repeat of an earlier payment of the same order, which the buyer's request said it meant (its
    # body's "repeat"); false for the first payment of each (buyer, store, order_ref) (migration 0014).
    Column("repeat", Boolean, nullable=False, server_default=sql_false()),
)
# The first payment of each order: a second one by accident cannot be booked, even by two workers
# at once (center.pipeline.money.pay inserts against it; the batch path checks it first).
FIRST_OF_ORDER = text("NOT repeat")
FIRST_OF_ORDER_INDEX = Index(
    "ux_payments_first_of_order",
    payments.c.buyer_id,
    payments.c.store_id,
    payments.c.order_ref,
    unique=True,
    sqlite_where=FIRST_OF_ORDER,
    postgresql_where=FIRST_OF_ORDER,
)

refunds = Table(
    "refunds",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("payment_id", String(24), ForeignKey("payments.id"), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

payouts = Table(
    "payouts",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("store_id", String(32), ForeignKey("parties.id"), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("bank_account", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending | exported | settled
    Column("batch_id", String(32)),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("exported_at_ms", BigInteger),
    Column("settled_at_ms", BigInteger),
)

# Console login (center.console.auth): a challenge shown in a browser, approved
# by an operator's signed console_login message, turned into a session once.
console_challenges = Table(
    "console_challenges",
    metadata,
    Column("challenge", String(19), primary_key=True),  # XXXX-XXXX-XXXX-XXXX, base32
    Column("browser_secret_sha256", String(64), nullable=False, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("approved_kid", String(64), ForeignKey("keys.kid")),
    Column("approved_operator_id", String(32), ForeignKey("parties.id")),
    Column("approved_at_ms", BigInteger),
    Column("consumed", Boolean, nullable=False),
    # Who asked (migration 0010): shown by `wallet console-login`, bound by its signature;
    # client_key groups the per-client limits (IPv4 address or IPv6 /64; indexed with created_at_ms).
    Column("client_address", String(64), nullable=False, server_default=""),
    Column("client_key", String(64), nullable=False, server_default=""),
    Column("user_agent", String(200), nullable=False, server_default=""),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("session_sha256", String(64), primary_key=True),  # only a hash of the cookie's session id
    Column("operator_id", String(32), ForeignKey("parties.id"), nullable=False),
    Column("kid", String(64), ForeignKey("keys.kid"), nullable=False, index=True),
    Column("role", String(16), nullable=False),  # operator | auditor
    Column("csrf_token", String(64), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False),
)

# Console reads (center.console.access): who looked at which members' data, when,
# with which filters. Written before an answer leaves; never updated or deleted by the center.
console_reads = Table(
    "console_reads",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("operator_id", String(32), ForeignKey("parties.id"), nullable=False),
    Column("kid", String(64), nullable=False),
    Column("session_sha256", String(64), nullable=False),
    Column("view", String(32), nullable=False),
    Column("filters", Text, nullable=False),  # JSON: the filters and page as asked
    Column("rows", Integer, nullable=False),  # how many rows the answer held
)

# Key lifecycle (center.keys.lifecycle): what a new key claimed and how it was
# decided. One row per key that rebinds to an account (after a lost card) or
# replaces its holder's key (rotation).
key_claims = Table(
    "key_claims",
    metadata,
    Column("kid", String(64), ForeignKey("keys.kid"), primary_key=True),
    Column("party_id", String(32), ForeignKey("parties.id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # rebind | rotation
    Column("replaces_kid", String(64), ForeignKey("keys.kid")),  # rotation only
    # The identity a rebinding party gave, for the operator to compare.
    Column("name", String(200)),
    Column("address", String(500)),
    Column("birth_date", String(10)),
    Column("bank_account", String(64)),
    Column("status", String(16), nullable=False, index=True),  # pending | bound | rejected
    Column("created_at_ms", BigInteger, nullable=False),
    Column("decided_at_ms", BigInteger),
    Column("decided_by", String(64)),
    Column(
        "proof", String(8)
    ),  # rebind: 'code' | 'ticket' (recovery code verified) | NULL (operator decides)
    Column("recovery_key", String(64)),  # rebind: the new enrollment's recovery key, installed when bound
)

# Recovery (center.keys.lifecycle, paywire.recovery): public keys of a member's
# recovery code (kind 'code', one active per account) and of one-time operator
# tickets (kind 'ticket'); never a code itself.
recovery_keys = Table(
    "recovery_keys",
    metadata,
    # Keyed by account too: a recovery key is public (receipts, audit), and copying another
    # account's into one's own enrollment must neither collide with it nor prove anything.
    Column("party_id", String(32), ForeignKey("parties.id"), primary_key=True),
    Column("public_key", String(64), primary_key=True),  # Ed25519, hex
    Column("kind", String(8), nullable=False),  # code | ticket
    Column("status", String(16), nullable=False),  # active | used | replaced
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger),  # tickets
    Column("issued_by", String(64)),  # tickets: the operator
    Column("used_at_ms", BigInteger),
    Column("used_by_kid", String(64)),
)

# Store names (center.keys.store_names, migration 0009): each store's name skeleton (UTS #39, as a
# hash) and whether it was flagged at enrollment as equal to or confusable with an earlier
# store's name. The first store of a skeleton has resembles NULL, and only one may (a unique
# index): two look-alikes enrolling at once cannot both pass as the first.
store_names = Table(
    "store_names",
    metadata,
    Column("store_id", String(32), ForeignKey("parties.id"), primary_key=True),
    Column("skeleton_sha256", String(64), nullable=False, index=True),
    Column("resembles", String(32), ForeignKey("parties.id")),  # the earlier store whose name it matches
    Column("flag", String(16), nullable=False),  # none | flagged | cleared
    Column("created_at_ms", BigInteger, nullable=False),
    Column("decided_at_ms", BigInteger),
    Column("decided_by", String(64)),
)
Index(
    "ux_store_names_first_of_skeleton",
    store_names.c.skeleton_sha256,
    unique=True,
    sqlite_where=store_names.c.resembles.is_(None),
    postgresql_where=store_names.c.resembles.is_(None),
)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# A writer waits this long for SQLite's write lock before giving up ("database is locked").
SQLITE_BUSY_TIMEOUT_S = 30
# PostgreSQL connections, unless the URL says otherwise: a host that does not answer is given up after
# connect_timeout (then the next host of a multi-host URL is tried), and a connection whose host
# vanished without a word (power, network) is found dead by TCP keepalives within about
# idle + interval * count seconds instead of the kernel's two hours. Loopback kills are seen at once.
PG_CONNECT_DEFAULTS = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
# A request waits this long for a pooled connection before failing (then 503, center.api.unavailable).
PG_POOL_TIMEOUT_S = 10


def normalise_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )
        _configure_sqlite(engine)
        return engine
    given = make_url(url).query
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=PG_POOL_TIMEOUT_S,
        # Every checkout tests the connection first: after a failover the pool's connections to the old
        # primary are found dead and replaced by connections to the new one, without a restart.
        pool_pre_ping=True,
        connect_args={name: value for name, value in PG_CONNECT_DEFAULTS.items() if name not in given},
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own
        # implicit BEGIN is deferred, and two deferred writers deadlock).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged payment survives power loss
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # Take the write lock up front: transactions here read then write.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The schema revision this code is written for (the newest migration)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database no migration has touched."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@dataclass(frozen=True)
class SchemaStatus:
    """Where the database's schema stands against this code's migrations."""

    current: str | None
    head: str
    # 'current', 'behind' (a migration would upgrade it), 'ahead' (written by newer code) or 'empty'
    state: str


def schema_status(engine: Engine) -> SchemaStatus:
    current = current_revision(engine)
    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    assert head is not None
    if current == head:
        state = "current"
    elif current is None:
        state = "empty"
    else:
        state = "behind" if current in {script.revision for script in scripts.walk_revisions()} else "ahead"
    return SchemaStatus(current, head, state)


def migrate(engine: Engine) -> None:
    config = alembic_config()
    with engine.connect() as connection:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copy, drop and rename (Alembic batch mode); the drop
            # fails while rows reference the table and foreign keys are enforced. The pragma
            # is ignored inside a transaction: set it before BEGIN, check the keys before COMMIT.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise RuntimeError("a migration left rows whose foreign keys point nowhere; rolled back")
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
