"""`center restore`: a backup archive into a new data directory, then the checks.

Two passes over the archive (each read by center.ops.restore_archive). The first
writes nothing: it checks the backup key's signature over the manifest (before
reading any other member; the public key comes from the command line), then every
member's name, type, size and SHA-256 against the manifest, and config.json. The second
extracts into a private staging directory beside the target (checking every
hash again, in case the file changed in between), rewrites the absolute paths
in config.json and softhsm2.conf to the new directory, restores the database
(SQLite file, or pg_restore into an empty PostgreSQL database in one
transaction), then renames the staging directory to the target. Any failure
removes the staging directory. Finally the ledger check and the audit chain
verification run on the restored database.

The archive's `pkcs11_module` is never used: `center serve` would load that
library, so the restored config names the module given on restore's command
line (default: this machine's SoftHSM).

`center join` (center.ops.join) shares the first pass (verify_archive), the target check
(check_target) and the second pass without the database (place_data_dir): one place for each rule.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from center.ledger.audit_tree_check import CenterKey
from center.ledger.audit_verify import verify_log
from center.ledger.book import check_ledger
from center.ops import backup_db
from center.ops.backup_format import DATA_PREFIX, BackupError, Manifest
from center.ops.backup_signing import BackupVerifier
from center.ops.restore_archive import Capture, Discard, StagedFile, open_archive, walk_archive
from center.storage.config import CERT_NAME, CONFIG_NAME, CenterConfig
from center.storage.db import current_revision, make_engine, migrate, normalise_url, schema_status
from hostkit.private_files import replace_file
from tokens.softhsm import SoftHsmError, find_softhsm_module

SQLITE_NAME = "center.db"
PG_DUMP_NAME = "restore.pgdump"
SOFTHSM_TOKENDIR_KEY = "directories.tokendir"
# Deeper than any config document the center writes; a deeper one is refused.
MAX_CONFIG_DEPTH = 16


def restore_backup(
    file: Path,
    new_dir: Path,
    *,
    db_url: str | None,
    password: str | None,
    verifier: BackupVerifier,
    pkcs11_module: str | None,
) -> dict:
    file, new_dir = Path(os.path.abspath(file)), Path(os.path.abspath(new_dir))
    check_target(new_dir)
    module = choose_pkcs11_module(pkcs11_module)
    verified = verify_archive(file, password, verifier)  # writes nothing
    manifest = verified.manifest
    target_url = _target_db_url(manifest, new_dir, db_url)
    place_data_dir(
        file,
        new_dir,
        manifest,
        password=password,
        verifier=verifier,
        db_url=target_url,
        pkcs11_module=module,
        with_database=True,
    )
    schema = _upgrade_schema(target_url)
    ledger, audit = _run_checks(target_url, CenterConfig.load(new_dir))
    return {
        "schema": schema,
        "ok": ledger["ok"] and audit["ok"],
        "data_dir": str(new_dir),
        "center_id": manifest.center_id,
        "db_kind": manifest.db_kind,
        "db": backup_db.redact_url(target_url),
        "files": len(manifest.members),
        "backup_created_at": manifest.created_at,
        "encrypted": password is not None,
        "ledger": ledger,
        "audit": audit,
        "signed_by_key_id": verifier.key_id,
        "pkcs11_module": module,
        "archive_pkcs11_module_ignored": str(verified.config.get("pkcs11_module")),
    }


def choose_pkcs11_module(given: str | None) -> str:
    """The token module the restored center will load: the command line's, else this machine's SoftHSM."""
    if given is None:
        try:
            return find_softhsm_module()
        except SoftHsmError:
            raise BackupError(
                "SoftHSM is not installed here: give --pkcs11-module PATH, this machine's token "
                "module (a restore never takes the archive's)"
            ) from None
    path = Path(given)
    if not path.is_absolute() or not path.is_file():
        raise BackupError(
            f"--pkcs11-module {given} is not an absolute path to an existing file: give the path of "
            "this machine's token module (.so)"
        )
    return str(path)


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    config: dict
    cert_pem: bytes | None  # the center certificate in the archive (None when it holds none)


def verify_archive(file: Path, password: str | None, verifier: BackupVerifier) -> Verified:
    """The first pass: signature, every member against the manifest, config.json; writes nothing."""
    captured: dict[str, bytes] = {}
    kept = (DATA_PREFIX + CONFIG_NAME, DATA_PREFIX + CERT_NAME)
    with open_archive(file, password) as tar:
        manifest = walk_archive(
            tar,
            lambda spec: Capture(captured, spec.name) if spec.name in kept else Discard(),
            verifier,
        )
    config = _parse_config(captured[DATA_PREFIX + CONFIG_NAME], manifest)
    return Verified(manifest, config, captured.get(DATA_PREFIX + CERT_NAME))


def check_target(new_dir: Path) -> None:
    if new_dir.is_symlink():
        raise BackupError(f"{new_dir} is a symbolic link: give a new, real directory (nothing was written)")
    if new_dir.exists() and not new_dir.is_dir():
        raise BackupError(f"{new_dir} is not a directory: choose a new or empty directory")
    if new_dir.exists() and any(new_dir.iterdir()):
        raise BackupError(f"{new_dir} is not empty: give a new or empty directory (nothing was written)")


def place_data_dir(
    file: Path,
    new_dir: Path,
    manifest: Manifest,
    *,
    password: str | None,
    verifier: BackupVerifier,
    db_url: str,
    pkcs11_module: str,
    with_database: bool,
) -> None:
    """The second pass: the archive's files into a staging directory beside new_dir (every hash checked
    again), paths rebased, db_url and the module written into config.json, then renamed to new_dir.

    with_database: restore the archive's database too (SQLite file, or pg_restore into db_url); a join
    passes False and the database member is only checked, never written anywhere.
    Any failure removes the staging directory: new_dir stays absent or empty.
    """
    new_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{new_dir.name}.restore-", dir=new_dir.parent))
    try:
        with open_archive(file, password) as tar:
            walk_archive(
                tar,
                lambda spec: (
                    Discard()
                    if spec.name == manifest.database_member and not with_database
                    else StagedFile(staging, _staged_path(staging, spec.name, manifest))
                ),
                verifier,
                expected=manifest,
            )
        _rewrite_config(staging, manifest.source_data_dir, new_dir, db_url, pkcs11_module)
        if with_database and manifest.db_kind == "postgresql":
            backup_db.pg_restore(staging / PG_DUMP_NAME, db_url)
            (staging / PG_DUMP_NAME).unlink()
        _move_into_place(staging, new_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _target_db_url(manifest: Manifest, new_dir: Path, db_url: str | None) -> str:
    if manifest.db_kind == "sqlite":
        if db_url is not None:
            raise BackupError(
                f"this backup holds a SQLite database; it is restored to {new_dir / SQLITE_NAME}: "
                "leave out --db"
            )
        return f"sqlite:///{new_dir / SQLITE_NAME}"
    if db_url is None:
        raise BackupError(
            "this backup holds a PostgreSQL database: give --db URL of a new, empty database "
            "(a restore never writes into the live one)"
        )
    if backup_db.db_kind(checked_db_url(db_url)) != "postgresql":
        raise BackupError("this backup holds a PostgreSQL database: --db must be a postgresql:// URL")
    if not backup_db.pg_is_empty(db_url):
        raise BackupError(
            f"the database {backup_db.redact_url(db_url)} is not empty: create a new one for the restore "
            "(nothing was written)"
        )
    return db_url


def checked_db_url(db_url: str) -> str:
    """--db as given, once SQLAlchemy can read it; else one line on how to write it (never the URL
    itself: it may hold a password)."""
    try:
        make_url(normalise_url(db_url))
    except (ArgumentError, ValueError):
        raise BackupError(
            "--db is not a database URL: give sqlite:////ABSOLUTE/PATH/center.db or "
            "postgresql://USER@HOST:PORT/DB (several hosts: "
            "postgresql://USER@/DB?host=H1:P1&host=H2:P2&target_session_attrs=read-write, not H1:P1,H2:P2)"
        ) from None
    return db_url


def _parse_config(raw: bytes, manifest: Manifest) -> dict:
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BackupError("config.json in the backup is not JSON: damaged") from None
    if not isinstance(document, dict) or document.get("center_id") != manifest.center_id:
        raise BackupError("config.json in the backup does not belong to the manifest's center: damaged")
    try:
        CenterConfig(data_dir=Path(manifest.source_data_dir), **document)
    except TypeError:
        raise BackupError(
            "config.json in the backup has fields this center does not know: restore it with the "
            "tokenpay version that made it"
        ) from None
    return document


def _staged_path(staging: Path, name: str, manifest: Manifest) -> Path:
    if name == manifest.database_member:
        return staging / (SQLITE_NAME if manifest.db_kind == "sqlite" else PG_DUMP_NAME)
    relative = name[len(DATA_PREFIX) :]
    path = staging / relative
    assert name.startswith(DATA_PREFIX) and path.resolve().is_relative_to(staging.resolve()), name
    return path


def _rewrite_config(staging: Path, old_dir: str, new_dir: Path, db_url: str, pkcs11_module: str) -> None:
    path = staging / CONFIG_NAME
    document = _rebase(json.loads(path.read_text()), old_dir, str(new_dir), 0)
    document["db_url"] = db_url
    # A library `center serve` loads: this machine's, never the archive's.
    document["pkcs11_module"] = pkcs11_module
    replace_file(path, json.dumps(document, indent=2, sort_keys=True).encode())
    conf = document.get("softhsm_conf")
    if isinstance(conf, str) and Path(conf).is_relative_to(new_dir):
        _rewrite_softhsm_conf(staging / Path(conf).relative_to(new_dir), old_dir, str(new_dir))


def _rebase(value, old_dir: str, new_dir: str, depth: int):
    """Every string that is a path inside old_dir, moved to new_dir."""
    if depth > MAX_CONFIG_DEPTH:
        raise BackupError("config.json in the backup nests too deep: damaged")
    if isinstance(value, dict):
        return {key: _rebase(item, old_dir, new_dir, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebase(item, old_dir, new_dir, depth + 1) for item in value]
    if isinstance(value, str) and (value == old_dir or value.startswith(old_dir + "/")):
        return new_dir + value[len(old_dir) :]
    return value


def _rewrite_softhsm_conf(path: Path, old_dir: str, new_dir: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    for index, line in enumerate(lines):
        key, _, value = line.partition("=")
        if key.strip() == SOFTHSM_TOKENDIR_KEY:
            lines[index] = f"{SOFTHSM_TOKENDIR_KEY} = {_rebase(value.strip(), old_dir, new_dir, 0)}\n"
    replace_file(path, "".join(lines).encode())


def _move_into_place(staging: Path, new_dir: Path) -> None:
    try:
        os.rename(staging, new_dir)  # replaces an empty directory; fails on a non-empty one
    except OSError as error:
        raise BackupError(
            f"cannot move the restored files to {new_dir}: {error.strerror} (nothing was kept)"
        ) from None


def _upgrade_schema(db_url: str) -> dict:
    """A backup from an older version comes back upgraded (as `center migrate` would); one from a newer
    version is left as it is, and `center serve` says which version to run."""
    engine = make_engine(db_url)
    try:
        status = schema_status(engine)
        if status.state == "behind":
            migrate(engine)
        return {"from_revision": status.current, "to_revision": current_revision(engine)}
    finally:
        engine.dispose()


def _run_checks(db_url: str, config: CenterConfig) -> tuple[dict, dict]:
    """The ledger check, and `center audit verify`'s whole check (chain, tree, every signed tree head
    against the restored center's key): a restored history rewritten with recomputed hashes fails here."""
    key = CenterKey.from_certificate(config.center_id, config.cert_file.read_bytes())
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            report = check_ledger(conn)
        audit = verify_log(engine, key)
    finally:
        engine.dispose()
    return report.to_json(), audit.to_json()
