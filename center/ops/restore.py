"""`center restore`: a backup archive into a new data directory, then the checks.

Two passes over the archive. The first writes nothing: it checks the backup
key's signature over the manifest (before reading any other member; the
public key comes from the command line), then every member's name, type, size
and SHA-256 against the manifest, and config.json. The second
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
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from center.ledger.audit import verify_chain
from center.ledger.book import check_ledger
from center.ops import backup_db
from center.ops.backup_crypto import MAGIC as ENCRYPTED_MAGIC
from center.ops.backup_crypto import BackupCryptoError, DecryptingReader
from center.ops.backup_format import (
    DATA_PREFIX,
    GZIP_HEADER,
    MANIFEST_NAME,
    MAX_DATA_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    BackupError,
    Manifest,
    MemberSpec,
    check_member_name,
    parse_manifest,
)
from center.ops.backup_signing import MAX_SIGNATURE_MEMBER_BYTES, SIGNATURE_NAME, BackupVerifier
from center.storage.config import CONFIG_NAME, CenterConfig
from center.storage.db import current_revision, make_engine, migrate, schema_status
from hostkit.private_files import PRIVATE_DIR_MODE, new_file_stream, replace_file
from tokens.softhsm import SoftHsmError, find_softhsm_module

COPY_BLOCK_BYTES = 1024 * 1024
SQLITE_NAME = "center.db"
PG_DUMP_NAME = "restore.pgdump"
SOFTHSM_TOKENDIR_KEY = "directories.tokendir"
# Deeper than any config document the center writes; a deeper one is refused.
MAX_CONFIG_DEPTH = 16


def backup_is_encrypted(file: Path) -> bool:
    try:
        with open(file, "rb") as handle:
            return handle.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC
    except OSError as error:
        raise BackupError(f"cannot read the backup {file}: {error.strerror}") from None


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
    _check_target(new_dir)
    module = choose_pkcs11_module(pkcs11_module)
    verified = _verify(file, password, verifier)  # writes nothing
    manifest = verified.manifest
    target_url = _target_db_url(manifest, new_dir, db_url)
    new_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{new_dir.name}.restore-", dir=new_dir.parent))
    try:
        with _open_archive(file, password) as tar:
            _walk(
                tar,
                lambda spec: _StagedFile(staging, _staged_path(staging, spec.name, manifest)),
                verifier,
                expected=manifest,
            )
        _rewrite_config(staging, manifest.source_data_dir, new_dir, target_url, module)
        if manifest.db_kind == "postgresql":
            backup_db.pg_restore(staging / PG_DUMP_NAME, target_url)
            (staging / PG_DUMP_NAME).unlink()
        _move_into_place(staging, new_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    schema = _upgrade_schema(target_url)
    ledger, audit = _run_checks(target_url)
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


def _verify(file: Path, password: str | None, verifier: BackupVerifier) -> Verified:
    captured: dict[str, bytes] = {}
    with _open_archive(file, password) as tar:
        manifest = _walk(
            tar,
            lambda spec: (
                _Capture(captured, spec.name) if spec.name == DATA_PREFIX + CONFIG_NAME else _Discard()
            ),
            verifier,
        )
    config = _parse_config(captured[DATA_PREFIX + CONFIG_NAME], manifest)
    return Verified(manifest, config)


def _check_target(new_dir: Path) -> None:
    if new_dir.is_symlink():
        raise BackupError(f"{new_dir} is a symbolic link: restore into a new, real directory")
    if new_dir.exists() and not new_dir.is_dir():
        raise BackupError(f"{new_dir} is not a directory: choose a new or empty directory")
    if new_dir.exists() and any(new_dir.iterdir()):
        raise BackupError(
            f"{new_dir} is not empty: restore into a new or empty directory (nothing was written)"
        )


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
    if backup_db.db_kind(db_url) != "postgresql":
        raise BackupError("this backup holds a PostgreSQL database: --db must be a postgresql:// URL")
    if not backup_db.pg_is_empty(db_url):
        raise BackupError(
            f"the database {backup_db.redact_url(db_url)} is not empty: create a new one for the restore "
            "(nothing was written)"
        )
    return db_url


@contextlib.contextmanager
def _open_archive(file: Path, password: str | None) -> Iterator[tarfile.TarFile]:
    try:
        with open(file, "rb") as handle:
            encrypted = handle.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC
            handle.seek(0)
            if encrypted and password is None:
                raise BackupError("this backup is encrypted: give its password (--password-file)")
            source = DecryptingReader(handle, password) if encrypted else handle
            head = source.read(len(GZIP_HEADER))
            if head != GZIP_HEADER:
                raise BackupError(
                    f"{file} is not a tokenpay backup or its first bytes are damaged: nothing was written"
                )
            with gzip.GzipFile(fileobj=_Prefixed(head, source), mode="rb") as gz:
                with tarfile.open(fileobj=gz, mode="r|") as tar:
                    yield tar
                # Read to the very end: gzip checks its CRC and length there, decryption its last chunk.
                while gz.read(COPY_BLOCK_BYTES):
                    pass
            if encrypted and not source.complete:
                raise BackupError(f"{file} is truncated: nothing was written")
    except BackupCryptoError as error:
        raise BackupError(f"{file}: {error}") from None
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as error:
        raise BackupError(
            f"{file} is damaged ({type(error).__name__}: {str(error)[:120] or 'corrupt data'}): "
            "nothing was written"
        ) from None
    except OSError as error:
        raise BackupError(f"cannot read the backup {file}: {error.strerror or error}") from None


def _walk(
    tar: tarfile.TarFile,
    sink_for: Callable[[MemberSpec], object],
    verifier: BackupVerifier,
    expected: Manifest | None = None,
) -> Manifest:
    """Check the signature, then every member against the manifest, feeding its bytes to sink_for(spec).

    `expected`: the manifest the first pass checked; the file must not have changed since.
    """
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isreg() or first.size > MAX_MANIFEST_BYTES:
        raise BackupError("the archive does not start with a tokenpay manifest: not a backup, or damaged")
    raw_manifest = tar.extractfile(first).read(MAX_MANIFEST_BYTES + 1)
    second = tar.next()
    if (
        second is None
        or second.name != SIGNATURE_NAME
        or not second.isreg()
        or second.size > MAX_SIGNATURE_MEMBER_BYTES
    ):
        raise BackupError(
            "the backup carries no signature (made before backups were signed, or altered): refused, "
            "nothing was written; restore only backups made by `center backup --signing-key`"
        )
    # Nothing in the archive is looked at before its signature verified with the command line's key.
    verifier.check(raw_manifest, tar.extractfile(second).read(MAX_SIGNATURE_MEMBER_BYTES + 1))
    manifest = parse_manifest(raw_manifest)
    if expected is not None and manifest != expected:
        raise BackupError("the backup file changed during the restore: nothing was kept")
    specs = {spec.name: spec for spec in manifest.members}
    seen: set[str] = set()
    for member in tar:
        if (
            member is first or member is second
        ):  # TarFile iteration starts again with the members already read
            continue
        name = check_member_name(member.name)
        if not member.isreg():
            raise BackupError(f"archive member {name} is a link, directory or device, not a file: refused")
        spec = specs.get(name)
        if spec is None or name in seen:
            raise BackupError(
                f"archive member {name} is {'repeated' if spec else 'not in the manifest'}: refused"
            )
        if member.size != spec.size:
            raise BackupError(
                f"archive member {name} is {member.size} bytes, the manifest says {spec.size}: damaged"
            )
        _copy_checked(tar.extractfile(member), spec, sink_for(spec))
        seen.add(name)
    missing = sorted(set(specs) - seen)
    if missing:
        raise BackupError(
            f"the archive lacks {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}"
            ": truncated or damaged"
        )
    return manifest


def _copy_checked(stream, spec: MemberSpec, sink) -> None:
    digest, remaining = hashlib.sha256(), spec.size
    while remaining > 0:
        block = stream.read(min(COPY_BLOCK_BYTES, remaining))
        if not block:
            raise BackupError(f"archive member {spec.name} ends early: damaged")
        digest.update(block)
        sink.write(block)
        remaining -= len(block)
    if digest.hexdigest() != spec.sha256:
        raise BackupError(
            f"archive member {spec.name} does not match its SHA-256 in the manifest: the archive is "
            "damaged or was changed (nothing was written)"
        )
    sink.close()


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
    document["pkcs11_module"] = (
        pkcs11_module  # a library `center serve` loads: this machine's, never the archive's
    )
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


def _run_checks(db_url: str) -> tuple[dict, dict]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            report = check_ledger(conn)
            checked, problem = verify_chain(conn)
    finally:
        engine.dispose()
    audit = {
        "ok": problem is None,
        "entries": checked,
        "first_bad_seq": problem.seq if problem else None,
        "problem": problem.reason if problem else None,
    }
    return report.to_json(), audit


class _StagedFile:
    def __init__(self, staging: Path, path: Path):
        # Every directory 0700 (mkdir(parents=True) would leave the intermediate ones to the umask).
        for directory in [
            *reversed(path.parent.relative_to(staging).parents),
            path.parent.relative_to(staging),
        ]:
            (staging / directory).mkdir(exist_ok=True, mode=PRIVATE_DIR_MODE)
        # The stream is held open across write() calls; close() ends it (fsync of file and directory).
        self._stream = new_file_stream(path)
        self._handle = self._stream.__enter__()

    def write(self, block: bytes) -> None:
        self._handle.write(block)

    def close(self) -> None:
        self._stream.__exit__(None, None, None)


class _Capture:
    def __init__(self, into: dict[str, bytes], name: str):
        self._into, self._name, self._parts, self._size = into, name, [], 0

    def write(self, block: bytes) -> None:
        self._size += len(block)
        if self._size > MAX_DATA_FILE_BYTES:
            raise BackupError(f"{self._name} in the backup is too large: refused")
        self._parts.append(block)

    def close(self) -> None:
        self._into[self._name] = b"".join(self._parts)


class _Discard:
    def write(self, block: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _Prefixed:
    """Gives back the bytes already read (the checked gzip header), then the rest of the source."""

    def __init__(self, head: bytes, source):
        self._head, self._source = head, source

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._source.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._source.read(size)
