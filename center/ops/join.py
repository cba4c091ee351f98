"""`center join`: a second node of a running center, from a signed backup, on the center's live database.

A node is a data directory `center serve` runs on. The new one gets what makes it the same center
(config, the TLS certificate and key, the center's token with its receipt key, the secrets) from a
backup whose signature verifies with the administrator's backup key, its paths rebased as a restore
does (center.ops.restore: the same archive passes, target check and config rewrite), `db_url` set to
the live database given with --db, and the token module from the command line. The archive's
database snapshot is checked against the manifest like every member and then dropped: a join never
restores, migrates or writes a database. Both nodes then sign receipts and tree heads with the same
key, so both verify against the one center certificate the wallets pin (docs/backup-center.md).

Before anything is written the live database is read, in read-only transactions, to check that
- its schema is this code's head (behind: the running node is migrated first; a join runs no
  migration, so two versions never write one database);
- it is this center's: nothing in a center's database names the center except what the center
  signed, so its newest signed tree head must verify with the receipt key of the backup's center
  certificate and name the backup's center id. A database with no tree head yet (a new center that
  has accepted no signed request, or an empty one) shows no owner and is refused, as is another
  center's.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from center.ledger.audit_tree_check import CenterKey
from center.ops import backup_db
from center.ops.backup_format import BackupError
from center.ops.backup_signing import BackupVerifier
from center.ops.restore import (
    check_target,
    checked_db_url,
    choose_pkcs11_module,
    place_data_dir,
    verify_archive,
)
from center.storage.db import audit_head, normalise_url, schema_status, tree_heads
from paywire.errors import WireError
from paywire.tree_head import check_tree_head

# A join waits this long for an unreachable database host (each host of a multi-host URL).
CONNECT_TIMEOUT_S = 10
# A reader waits this long for SQLite's lock (a running node holds it for milliseconds per write).
SQLITE_READ_TIMEOUT_S = 30
# A database error is quoted in the refusal up to this length (its first line only).
MAX_ERROR_CHARS = 200


def join_center(
    file: Path,
    new_dir: Path,
    *,
    db_url: str | None,
    password: str | None,
    verifier: BackupVerifier,
    pkcs11_module: str | None,
) -> dict:
    file, new_dir = Path(os.path.abspath(file)), Path(os.path.abspath(new_dir))
    db_url = require_db_url(db_url)
    check_target(new_dir)
    module = choose_pkcs11_module(pkcs11_module)
    verified = verify_archive(file, password, verifier)  # writes nothing
    manifest = verified.manifest
    if verified.cert_pem is None:
        raise BackupError("the backup holds no center-cert.pem: damaged, or not a center's backup")
    try:
        key = CenterKey.from_certificate(manifest.center_id, verified.cert_pem)
    except ValueError:
        raise BackupError("center-cert.pem in the backup names no receipt key: damaged") from None
    database = check_live_database(db_url, key)  # read-only
    place_data_dir(
        file,
        new_dir,
        manifest,
        password=password,
        verifier=verifier,
        db_url=db_url,
        pkcs11_module=module,
        with_database=False,
    )
    return {
        "ok": True,
        "data_dir": str(new_dir),
        "center_id": manifest.center_id,
        "db": backup_db.redact_url(db_url),
        "db_kind": backup_db.db_kind(db_url),
        "database": database,
        "database_written": False,
        "files": len(manifest.members) - 1,  # the database snapshot is not among them
        "backup_created_at": manifest.created_at,
        "encrypted": password is not None,
        "signed_by_key_id": verifier.key_id,
        "pkcs11_module": module,
        "archive_pkcs11_module_ignored": str(verified.config.get("pkcs11_module")),
    }


def require_db_url(db_url: str | None) -> str:
    if not db_url:
        raise BackupError(
            "give --db URL, the live database of the center being joined (a join never copies or "
            "writes a database; nothing was written)"
        )
    return checked_db_url(db_url)


def check_live_database(db_url: str, key: CenterKey) -> dict:
    """Read-only: the schema is at this code's head and the newest tree head is signed by `key`'s center.

    BackupError (one line, nothing written) otherwise. Returns what was found.
    """
    shown = backup_db.redact_url(db_url)
    engine = read_only_engine(db_url)
    try:
        status = schema_status(engine)
        if status.state == "empty":
            raise BackupError(
                f"the database {shown} is empty (no center schema): give the URL of the running "
                f"center {key.center_id}'s database (nothing was written)"
            )
        if status.state == "behind":
            raise BackupError(
                f"the database {shown} is at schema {status.current}, this tokenpay needs {status.head}: "
                "run `center migrate` on the running node first, then join (nothing was written)"
            )
        if status.state == "ahead":
            raise BackupError(
                f"the database {shown} is at schema {status.current}, newer than this tokenpay "
                f"({status.head}): join with the version the running node runs (nothing was written)"
            )
        with engine.connect() as conn:
            newest = conn.execute(
                select(tree_heads.c.envelope).order_by(tree_heads.c.tree_size.desc()).limit(1)
            ).scalar_one_or_none()
            entries = conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1)).scalar_one_or_none()
    except SQLAlchemyError as error:
        first_line = str(getattr(error, "orig", None) or error).strip().splitlines()[0][:MAX_ERROR_CHARS]
        raise BackupError(f"cannot read the database {shown}: {first_line} (nothing was written)") from None
    finally:
        engine.dispose()
    if newest is None:
        raise BackupError(
            f"the database {shown} holds no tree head signed by center {key.center_id}, so nothing in it "
            "shows whose it is (a new center, or another one's): let the running node accept one signed "
            "request (an enrollment), then join again (nothing was written)"
        )
    try:
        head = check_tree_head(
            json.loads(newest), center_spki=key.spki, center_alg=key.alg, center_id=key.center_id
        )
    except (WireError, ValueError, KeyError, TypeError):
        raise BackupError(
            f"the database {shown} is not center {key.center_id}'s: its newest tree head is not signed "
            "by the key in the backup's center certificate; give that center's database "
            "(nothing was written)"
        ) from None
    return {
        "schema_revision": status.current,
        "entries": entries or 0,
        "newest_tree_head_size": head.tree_size,
        "owner_proved_by": "newest signed tree head",
    }


def read_only_engine(db_url: str) -> Engine:
    """An engine whose connections cannot write: SQLite opened with mode=ro (never creates the file),
    PostgreSQL transactions READ ONLY. A multi-host URL passes through to libpq as `center serve` uses it
    (the session is read-only per transaction, not by default_transaction_read_only, which would make
    every host fail target_session_attrs=read-write)."""
    kind = backup_db.db_kind(db_url)
    if kind == "sqlite":
        path = _sqlite_file(db_url)
        return create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(
                f"{path.as_uri()}?mode=ro", uri=True, timeout=SQLITE_READ_TIMEOUT_S, check_same_thread=False
            ),
            poolclass=NullPool,
        )
    return create_engine(
        normalise_url(db_url),
        poolclass=NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        execution_options={"postgresql_readonly": True},
    )


def _sqlite_file(db_url: str) -> Path:
    database = make_url(normalise_url(db_url)).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError(
            "the --db SQLite URL names no database file: give sqlite:////ABSOLUTE/PATH/center.db"
        )
    path = Path(database)
    if not path.is_absolute():
        raise BackupError(
            f"the --db SQLite path {database} is relative: give the running center's file as "
            "sqlite:////ABSOLUTE/PATH/center.db"
        )
    if not path.is_file():
        raise BackupError(
            f"{path} is not a file: give the running center's SQLite database (a join creates none)"
        )
    return path
