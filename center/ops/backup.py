"""`center backup`: one archive holding everything a center needs to be restored.

The data directory's files (config.json, center-cert.pem, tls/, secrets/, the
center's own SoftHSM token directory, and whatever else lives there) plus a
consistent database snapshot, described by a manifest (center.ops.backup_format).
The archive therefore holds the token PIN and the TLS private key: it is
written with mode 0600 and can be encrypted with a password. Every archive is
signed by the administrator's backup key, which is not in it
(center.ops.backup_signing): the signer is loaded before any work is done.

Written to FILE.tmp, fsynced, then linked to FILE, which is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from center.ops import backup_db
from center.ops.backup_crypto import EncryptingWriter
from center.ops.backup_format import (
    COPY_BLOCK_BYTES,
    DATA_PREFIX,
    DATABASE_MEMBERS,
    GZIP_LEVEL,
    MANIFEST_NAME,
    MAX_DATA_FILE_BYTES,
    MAX_DATA_TOTAL_BYTES,
    MAX_MEMBERS,
    BackupError,
    Manifest,
    MemberSpec,
    check_member_name,
)
from center.ops.backup_signing import SIGNATURE_NAME, load_signer
from center.ops.metrics import METRICS_DIR_NAME
from center.storage.config import CenterConfig
from hostkit.private_files import fsync_directory, link_new_name, new_file_stream

FILE_MODE = 0o600
SECRETS_WARNING = (
    "this backup holds the center's token PIN, its token and its TLS private key: keep it as "
    "safe as the center itself"
)


@dataclass(frozen=True)
class DataFile:
    name: str  # the archive member name, data/...
    content: bytes


def create_backup(
    data_dir: Path, file: Path, *, password: str | None, signing_key: Path, signing_secret: str
) -> dict:
    """Write the backup archive FILE for the center in data_dir, signed with signing_key.

    Returns a summary."""
    config = CenterConfig.load(data_dir)
    file = Path(os.path.abspath(file))
    _check_destination(file, config.data_dir)
    signer = load_signer(signing_key, signing_secret, config)
    kind = backup_db.db_kind(config.db_url)
    files = collect_data_files(config)
    work = Path(tempfile.mkdtemp(prefix=".center-backup-", dir=file.parent))
    try:
        snapshot = work / "snapshot"
        if kind == "sqlite":
            backup_db.snapshot_sqlite(backup_db.sqlite_path(config.db_url), snapshot)
        else:
            backup_db.pg_dump(config.db_url, snapshot)
        created_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        database = MemberSpec(DATABASE_MEMBERS[kind], *_size_and_sha256(snapshot))
        manifest = Manifest(
            center_id=config.center_id,
            db_kind=kind,
            created_at=created_at,
            source_data_dir=str(config.data_dir),
            members=(
                *(MemberSpec(f.name, len(f.content), hashlib.sha256(f.content).hexdigest()) for f in files),
                database,
            ),
        )
        size, digest = _write_file(
            file, manifest, signer.signature_member(manifest.to_bytes()), files, snapshot, password
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "file": str(file),
        "bytes": size,
        "sha256": digest,
        "center_id": config.center_id,
        "db_kind": kind,
        "created_at": created_at,
        "members": len(manifest.members),
        "encrypted": password is not None,
        "token_included": _token_included(config),
        "mode": "0600",
        "warning": SECRETS_WARNING,
        "signed_by_key_id": signer.key_id,
        "signature_algorithm": signer.algorithm,
    }


def collect_data_files(config: CenterConfig) -> list[DataFile]:
    """Every regular file of the data directory but the live database and the metrics files."""
    root = config.data_dir
    skip = _skipped_paths(config)
    found, total = [], 0
    for directory, subdirs, names in os.walk(root, followlinks=False):
        here = Path(directory)
        subdirs[:] = sorted(d for d in subdirs if here / d not in skip)
        for name in sorted(names) + [d for d in subdirs if (here / d).is_symlink()]:
            path = here / name
            if path in skip or name.endswith(".tmp"):
                continue
            content = _read_regular_file(path)
            total += len(content)
            if total > MAX_DATA_TOTAL_BYTES or len(found) >= MAX_MEMBERS - 2:
                raise BackupError(
                    f"the data directory holds over {MAX_DATA_TOTAL_BYTES} bytes or "
                    f"{MAX_MEMBERS - 2} files: move what the center does not need elsewhere"
                )
            member = DATA_PREFIX + path.relative_to(root).as_posix()
            found.append(DataFile(check_member_name(member), content))
    assert any(f.name == f"{DATA_PREFIX}config.json" for f in found), "config.json was loaded, so it exists"
    return found


def _skipped_paths(config: CenterConfig) -> set[Path]:
    skip = {config.data_dir / METRICS_DIR_NAME}
    if backup_db.db_kind(config.db_url) == "sqlite":
        database = backup_db.sqlite_path(config.db_url)
        skip |= {database, *(database.with_name(database.name + s) for s in ("-wal", "-shm", "-journal"))}
    return skip


def _read_regular_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise BackupError(
            f"cannot read {path}: {error.strerror} (backups hold regular files only, no links)"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BackupError(f"{path} is not a regular file: move it out of the data directory")
        if info.st_size > MAX_DATA_FILE_BYTES:
            raise BackupError(
                f"{path} is over {MAX_DATA_FILE_BYTES} bytes: move it out of the data directory"
            )
        content = handle.read(MAX_DATA_FILE_BYTES + 1)
    if len(content) > MAX_DATA_FILE_BYTES:
        raise BackupError(f"{path} grew over {MAX_DATA_FILE_BYTES} bytes while being read")
    return content


def _check_destination(file: Path, data_dir: Path) -> None:
    if os.path.lexists(file):
        raise BackupError(f"{file} already exists: refusing to overwrite it; choose a new file name")
    if not file.parent.is_dir():
        raise BackupError(f"{file.parent} is not a directory: create it first")
    if Path(os.path.realpath(file.parent)).is_relative_to(data_dir):
        raise BackupError(
            "write the backup outside the data directory (it would be copied into the next backup)"
        )


def _write_file(
    file: Path,
    manifest: Manifest,
    signature: bytes,
    files: list[DataFile],
    snapshot: Path,
    password: str | None,
) -> tuple[int, str]:
    tmp = file.with_name(file.name + ".tmp")
    sink = _write_tmp(tmp, manifest, signature, files, snapshot, password)
    try:
        link_new_name(tmp, file)
        fsync_directory(file.parent)
    except FileExistsError:
        raise BackupError(
            f"{file} appeared meanwhile: refusing to overwrite it; choose a new file name"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return sink.size, sink.sha256.hexdigest()


def _write_tmp(
    tmp: Path,
    manifest: Manifest,
    signature: bytes,
    files: list[DataFile],
    snapshot: Path,
    password: str | None,
) -> _HashingWriter:
    """The whole archive into `tmp`, fsynced; a partial one is removed, one already at `tmp` left alone."""
    try:
        with new_file_stream(tmp, mode=FILE_MODE) as raw:
            sink = _HashingWriter(raw)
            sealed = EncryptingWriter(sink, password) if password is not None else None
            _write_archive(sealed or sink, manifest, signature, files, snapshot)
            if sealed is not None:
                sealed.close()
    except FileExistsError:  # only the creation of `tmp` can raise it: the archive goes into an open file
        raise BackupError(
            f"{tmp} exists (another backup running, or one interrupted): remove it and retry"
        ) from None
    return sink


def _write_archive(sink, manifest: Manifest, signature: bytes, files: list[DataFile], snapshot: Path) -> None:
    gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0, filename="")
    with gz, tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, MANIFEST_NAME, io.BytesIO(manifest.to_bytes()), len(manifest.to_bytes()))
        _add(tar, SIGNATURE_NAME, io.BytesIO(signature), len(signature))
        for data_file in files:
            _add(tar, data_file.name, io.BytesIO(data_file.content), len(data_file.content))
        database = manifest.members[-1]
        with open(snapshot, "rb") as source:
            _add(tar, database.name, _Verified(source, database), database.size)


def _add(tar: tarfile.TarFile, name: str, source, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, FILE_MODE, 0, tarfile.REGTYPE
    tar.addfile(info, source)


class _Verified:
    """Reads the snapshot into the archive and checks it is still what the manifest says."""

    def __init__(self, source, spec: MemberSpec):
        self._source, self._spec, self._hash, self._read = source, spec, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        self._read += len(data)
        if self._read >= self._spec.size and self._hash.hexdigest() != self._spec.sha256:
            raise BackupError("the database snapshot changed while being archived: no backup written")
        return data


class _HashingWriter:
    def __init__(self, raw):
        self._raw, self.size, self.sha256 = raw, 0, hashlib.sha256()

    def write(self, data) -> int:
        self._raw.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(COPY_BLOCK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _token_included(config: CenterConfig) -> bool:
    return bool(config.softhsm_conf) and Path(config.softhsm_conf).is_relative_to(config.data_dir)
