"""Database snapshots for backups and their restore: SQLite and PostgreSQL.

SQLite: the online backup API copies every page in one step inside one read
transaction, so the copy is consistent while `center serve` keeps writing
(WAL mode lets the writer go on). PostgreSQL: pg_dump takes a consistent
snapshot; pg_restore loads it in a single transaction, so a failed restore
leaves the target database as empty as it was. A database password never
goes on a command line (`ps` shows those): it goes to pg_dump/pg_restore in
PGPASSWORD.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from center.ops.backup_format import BackupError
from center.storage.db import normalise_url

PG_TOOL_TIMEOUT_S = 6 * 3600
SQLITE_BUSY_TIMEOUT_S = 30
MAX_TOOL_MESSAGE_CHARS = 300
# What the psycopg dialect passes to psycopg.connect besides libpq's options (never a command's argument).
LIBPQ_NOT_OPTIONS = frozenset({"context", "password"})


def db_kind(db_url: str) -> str:
    url = make_url(normalise_url(db_url))
    if url.get_backend_name() == "sqlite":
        return "sqlite"
    if url.get_backend_name() == "postgresql":
        return "postgresql"
    raise BackupError(f"backups support SQLite and PostgreSQL, not {url.get_backend_name()}")


def sqlite_path(db_url: str) -> Path:
    database = make_url(normalise_url(db_url)).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError("the center's SQLite URL names no database file: nothing to back up")
    return Path(database).absolute()


def snapshot_sqlite(source: Path, target: Path) -> None:
    """Copy the live database `source` to the new file `target`, consistent and self-contained."""
    if not source.is_file():
        raise BackupError(f"the center's database {source} does not exist")
    assert not target.exists()
    src = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_S)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: all pages in one step, one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
            verdict = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            dst.close()
    finally:
        src.close()
    if verdict != "ok":
        raise BackupError(
            f"the database snapshot fails SQLite's integrity check ({verdict}): no backup written"
        )


def pg_dump(db_url: str, target: Path) -> None:
    uri, env = libpq_target(db_url)
    _run_pg_tool(
        [
            "pg_dump",
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            f"--file={target}",
            f"--dbname={uri}",
        ],
        env,
        "pg_dump",
    )


def pg_restore(dump: Path, db_url: str) -> None:
    uri, env = libpq_target(db_url)
    _run_pg_tool(
        [
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={uri}",
            str(dump),
        ],
        env,
        "pg_restore",
    )


def pg_is_empty(db_url: str) -> bool:
    """True when the database holds no tables, sequences, views or functions of its own."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(normalise_url(db_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            objects = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    "        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
                    "        AND n.nspname NOT LIKE 'pg_toast%')"
                    " + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                    "        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return objects == 0


def redact_url(db_url: str) -> str:
    """The URL for people to read: never the password."""
    return make_url(db_url).render_as_string(hide_password=True)


def libpq_target(db_url: str) -> tuple[str, dict[str, str]]:
    """(libpq connection string without password, environment with PGPASSWORD if the URL had one).

    Built by SQLAlchemy's psycopg dialect, as the center's own connections are: a URL naming several
    hosts (`?host=h1:p1&host=h2:p2&target_session_attrs=read-write`, the backup center's cluster) gives
    libpq's `host=h1,h2 port=p1,p2`, so pg_dump reaches the primary as `center serve` does.
    """
    from psycopg.conninfo import make_conninfo
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    url = make_url(normalise_url(db_url))
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    _, options = PGDialect_psycopg().create_connect_args(url)
    options = {key: value for key, value in options.items() if key not in LIBPQ_NOT_OPTIONS}
    assert "password" not in options
    return make_conninfo(**{key: str(value) for key, value in options.items()}), env


def _run_pg_tool(argv: list[str], env: dict[str, str], tool: str) -> None:
    if shutil.which(argv[0]) is None:
        raise BackupError(f"{tool} not found: install postgresql-client (scripts/setup.sh does)")
    try:
        result = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PG_TOOL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{tool} did not finish within {PG_TOOL_TIMEOUT_S} s: nothing was kept") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        reason = (lines[0] if lines else f"exit code {result.returncode}")[:MAX_TOOL_MESSAGE_CHARS]
        raise BackupError(f"{tool} failed: {reason}")
