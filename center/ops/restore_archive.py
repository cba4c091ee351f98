"""Reading a backup archive for a restore: the signature first, then every member checked.

open_archive streams the archive (decrypting, gunzipping, reading to the very end so gzip's
CRC and length and the last encrypted chunk are checked); walk_archive verifies the backup
key's signature over the manifest before it looks at anything else, then checks each member's
name, type, size and SHA-256 against the manifest while handing its bytes to a sink: a file
in the staging directory (StagedFile), memory (Capture) or nowhere (Discard).
center.ops.restore runs the two passes over the archive with these.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from center.ops.backup_crypto import MAGIC as ENCRYPTED_MAGIC
from center.ops.backup_crypto import BackupCryptoError, DecryptingReader
from center.ops.backup_format import (
    COPY_BLOCK_BYTES,
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
from hostkit.private_files import PRIVATE_DIR_MODE, new_file_stream


def backup_is_encrypted(file: Path) -> bool:
    try:
        with open(file, "rb") as handle:
            return handle.read(len(ENCRYPTED_MAGIC)) == ENCRYPTED_MAGIC
    except OSError as error:
        raise BackupError(f"cannot read the backup {file}: {error.strerror}") from None


@contextlib.contextmanager
def open_archive(file: Path, password: str | None) -> Iterator[tarfile.TarFile]:
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


def walk_archive(
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
        if member is first or member is second:  # iteration starts again with the members already read
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


class StagedFile:
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


class Capture:
    def __init__(self, into: dict[str, bytes], name: str):
        self._into, self._name, self._parts, self._size = into, name, [], 0

    def write(self, block: bytes) -> None:
        self._size += len(block)
        if self._size > MAX_DATA_FILE_BYTES:
            raise BackupError(f"{self._name} in the backup is too large: refused")
        self._parts.append(block)

    def close(self) -> None:
        self._into[self._name] = b"".join(self._parts)


class Discard:
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
