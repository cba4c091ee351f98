"""The backup archive's format: member names, the manifest, limits.

An archive is a gzip-compressed tar (optionally encrypted, center.ops.backup_crypto):

    manifest.json          always the first member
    manifest.sig           always the second: the backup key's signature over the
                           manifest's exact bytes (center.ops.backup_signing)
    data/<path>            the data directory's files (config, certificate, TLS key,
                           secrets, the center's own SoftHSM token directory...)
    database/center.db     SQLite: a consistent snapshot (online backup API), or
    database/center.pgdump PostgreSQL: `pg_dump --format=custom`

Only regular files, each listed in the manifest with its size and SHA-256.
The gzip header is fixed (no name, no time), so every byte of a plain archive
is covered by a check: the header by comparison, the rest by the deflate
stream, gzip's CRC and length, and the manifest's hashes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from hostkit.cli import CliError

FORMAT = "tokenpay-center-backup"
# 2: signed (manifest.sig). Version 1 archives carry no signature and are refused.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
DATA_PREFIX = "data/"
DATABASE_MEMBERS = {"sqlite": "database/center.db", "postgresql": "database/center.pgdump"}
GZIP_LEVEL = 6
# What gzip.GzipFile writes with mtime=0, no file name and level 6.
GZIP_HEADER = bytes.fromhex("1f8b08000000000000ff")
# Files are copied into and out of the archive in blocks of this size.
COPY_BLOCK_BYTES = 1024 * 1024

MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_DATA_FILE_BYTES = 64 * 1024 * 1024
MAX_DATA_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_DATABASE_BYTES = 1024**4
MAX_NAME_CHARS = 255
MAX_NAME_DEPTH = 16
NAME_COMPONENT = re.compile(r"[A-Za-z0-9_@+=,.-]{1,128}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Names a restore writes itself in the new data directory; a data member may not take them.
RESERVED_DATA_NAMES = ("center.db", "center.db-wal", "center.db-shm", "center.db-journal", "restore.pgdump")


class BackupError(CliError):
    """A backup or restore refused: one line saying what and what to do."""


@dataclass(frozen=True)
class MemberSpec:
    name: str
    size: int
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    center_id: str
    db_kind: str
    created_at: str
    source_data_dir: str
    members: tuple[MemberSpec, ...]

    @property
    def database_member(self) -> str:
        return DATABASE_MEMBERS[self.db_kind]

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "center_id": self.center_id,
            "db_kind": self.db_kind,
            "created_at": self.created_at,
            "source_data_dir": self.source_data_dir,
            "members": [member.to_json() for member in self.members],
        }
        return json.dumps(document, indent=1, sort_keys=True).encode()


def check_member_name(name: object) -> str:
    """The name if it is a safe, relative archive path (no '..', no absolute path); else BackupError."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        raise BackupError(f"archive member name {_show(name)} is empty or too long: refused")
    parts = name.split("/")
    if len(parts) > MAX_NAME_DEPTH or any(
        part in (".", "..") or not NAME_COMPONENT.fullmatch(part) for part in parts
    ):
        raise BackupError(f"archive member {_show(name)} is not a safe relative path: refused")
    if name in DATABASE_MEMBERS.values():
        return name
    if not name.startswith(DATA_PREFIX) or len(parts) < 2:
        raise BackupError(f"archive member {_show(name)} is outside data/ and database/: refused")
    if len(parts) == 2 and parts[1] in RESERVED_DATA_NAMES:
        raise BackupError(f"archive member {_show(name)} would overwrite the restored database: refused")
    return name


def parse_manifest(raw: bytes) -> Manifest:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BackupError("the backup's manifest is not JSON: the archive is damaged") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BackupError("this archive is not a tokenpay center backup (no tokenpay manifest)")
    if document.get("version") != FORMAT_VERSION:
        raise BackupError(
            f"backup format version {_show(document.get('version'))} is not supported "
            f"(this center reads version {FORMAT_VERSION})"
        )
    db_kind = document.get("db_kind")
    members = document.get("members")
    fields = (document.get("center_id"), document.get("created_at"), document.get("source_data_dir"))
    if db_kind not in DATABASE_MEMBERS or not all(isinstance(f, str) and f for f in fields):
        raise BackupError(
            "the backup's manifest lacks center_id, db_kind, created_at or source_data_dir: damaged"
        )
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise BackupError(f"the backup's manifest must list 1 to {MAX_MEMBERS} members: damaged")
    specs = tuple(_member_spec(item) for item in members)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise BackupError("the backup's manifest lists a member twice: damaged")
    if DATABASE_MEMBERS[db_kind] not in names or f"{DATA_PREFIX}config.json" not in names:
        raise BackupError("the backup's manifest lists no database or no config.json: damaged")
    if any(name in DATABASE_MEMBERS.values() and name != DATABASE_MEMBERS[db_kind] for name in names):
        raise BackupError("the backup's manifest lists a database of another kind: damaged")
    if sum(spec.size for spec in specs if spec.name.startswith(DATA_PREFIX)) > MAX_DATA_TOTAL_BYTES:
        raise BackupError(f"the backup's data files exceed {MAX_DATA_TOTAL_BYTES} bytes: refused")
    source = document["source_data_dir"]
    if not source.startswith("/") or "\x00" in source:
        raise BackupError("the backup's manifest names no absolute source directory: damaged")
    return Manifest(
        center_id=document["center_id"],
        db_kind=db_kind,
        created_at=document["created_at"],
        source_data_dir=source.rstrip("/") or "/",
        members=specs,
    )


def _member_spec(item: object) -> MemberSpec:
    if not isinstance(item, dict) or set(item) != {"name", "size", "sha256"}:
        raise BackupError("a manifest entry is not {name, size, sha256}: the archive is damaged")
    name, size, digest = check_member_name(item["name"]), item["size"], item["sha256"]
    limit = MAX_DATABASE_BYTES if name in DATABASE_MEMBERS.values() else MAX_DATA_FILE_BYTES
    if type(size) is not int or not 0 <= size <= limit:
        raise BackupError(f"manifest size of {name} is not a number within 0..{limit}: refused")
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        raise BackupError(f"manifest SHA-256 of {name} is not 64 hex digits: the archive is damaged")
    return MemberSpec(name=name, size=size, sha256=digest)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
