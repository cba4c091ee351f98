"""Reading the audit log from one consistent snapshot that never blocks payments.

SQLAlchemy transactions on SQLite begin with BEGIN IMMEDIATE (center.storage.db: they read then
write), which takes the write lock: a verification or export walking a million entries inside one
would stall every payment for its whole length. A snapshot reader instead uses the driver's own
connection: on SQLite a deferred BEGIN, whose first SELECT pins a read snapshot (WAL mode: writers go
on appending meanwhile); on PostgreSQL a REPEATABLE READ READ ONLY transaction, whose snapshot helper
processes can share (pg_export_snapshot / SET TRANSACTION SNAPSHOT), so all of them see the same
log. SQLite has no shared snapshots: a helper process opens its own, which holds the same rows for
every seq up to the size the first snapshot read, as the log is append-only (a rewrite racing the
verification shows as a mismatch, never as a pass).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine

FETCH_ROWS = 2000
SNAPSHOT_ID = re.compile(r"[0-9A-F]{1,16}(-[0-9A-F]{1,16}){1,2}")


@dataclass
class Snapshot:
    """A read-only view of the database; `sql` takes "?" placeholders on either database."""

    connection: object  # the driver's connection (sqlite3 or psycopg)
    dialect: str
    snapshot_id: str | None = None  # PostgreSQL: for helper processes to share this snapshot

    def rows(self, sql: str, params: tuple = (), *, fetch_rows: int = FETCH_ROWS) -> Iterator[tuple]:
        """The query's rows as tuples, fetched `fetch_rows` at a time."""
        assert 1 <= fetch_rows <= 100_000
        cursor = self.connection.cursor()
        try:
            cursor.execute(self._placeholders(sql), params)
            while batch := cursor.fetchmany(fetch_rows):
                yield from batch
        finally:
            cursor.close()

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        return next(self.rows(sql, params), None)

    def _placeholders(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")


@contextmanager
def read_snapshot(engine: Engine, *, share: bool = False, join: str | None = None) -> Iterator[Snapshot]:
    """A snapshot for the block. `share`: PostgreSQL exports it for helpers; `join`: import such an id."""
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        dialect = engine.dialect.name
        snapshot = Snapshot(driver, dialect)
        if dialect == "sqlite":
            # Deferred: no lock until the first SELECT, and then only a read snapshot (WAL).
            assert not driver.in_transaction
            driver.execute("BEGIN")
        else:
            with driver.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                if join is not None:
                    # The command takes no parameters: the id is checked to be only what PostgreSQL
                    # writes (hex digits and dashes) before it goes into the text.
                    assert SNAPSHOT_ID.fullmatch(join), "not a PostgreSQL snapshot id"
                    cursor.execute(f"SET TRANSACTION SNAPSHOT '{join}'")
                elif share:
                    cursor.execute("SELECT pg_export_snapshot()")
                    snapshot.snapshot_id = cursor.fetchone()[0]
        yield snapshot
    finally:
        try:
            raw.rollback()
        finally:
            raw.close()
