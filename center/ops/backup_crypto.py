"""Password encryption of a backup archive: Argon2id + AES-256-GCM in 1 MiB chunks.

The key derivation, header and password handling are the one password sealing
recipe the wallet's vault uses too (hostkit.sealing): same Argon2id parameters
and limits, same check value that tells a wrong password from a damaged file. A backup can be far larger
than one AES-GCM call should take, so the archive is sealed chunk by chunk
(the STREAM construction, Hoang et al. 2015):

    MAGIC | header length (4 bytes, big-endian) | vault header | chunk 0 | chunk 1 | ...

Chunk i is AES-GCM over up to CHUNK_BYTES of the archive with the nonce
`header nonce[:7] | i (4 bytes) | 1 if last else 0`, and the magic, length and
header bytes as associated data. Reordering, dropping or changing a chunk,
cutting the file at any point or appending to it fails authentication.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag

from hostkit.sealing import (
    HEADER_MAX_BYTES,
    NONCE_SIZE,
    PASSWORD_MAX_BYTES,
    PREFIX_SIZE,
    TAG_SIZE,
    HeaderCorrupt,
    PasswordTooLong,
    associated_data,
    derive_keys,
    derive_new_keys,
    header_length,
    kdf_params_from_env,
    parse_header,
    password_bytes,
)

MAGIC = b"TPBKENC1"
CHUNK_BYTES = 1 << 20
SEALED_CHUNK_BYTES = CHUNK_BYTES + TAG_SIZE
NONCE_PREFIX_BYTES = 7
MAX_CHUNKS = 2**32 - 1
# The vault header has a generation counter; a backup is written once.
BACKUP_GENERATION = 1
PASSWORD_MIN_CHARS = 12


class BackupCryptoError(Exception):
    """The password is wrong or the encrypted file is damaged (str is one line)."""


def check_new_password(password: str) -> None:
    if len(password) < PASSWORD_MIN_CHARS:
        raise BackupCryptoError(f"the backup password must have at least {PASSWORD_MIN_CHARS} characters")


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    assert len(prefix) == NONCE_PREFIX_BYTES and 0 <= index <= MAX_CHUNKS
    nonce = prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")
    assert len(nonce) == NONCE_SIZE
    return nonce


def _key_bytes(password: str) -> bytes:
    try:
        return password_bytes(password)
    except PasswordTooLong:
        raise BackupCryptoError(
            f"the backup password is too long (at most {PASSWORD_MAX_BYTES} bytes)"
        ) from None


class EncryptingWriter:
    """A write-only file object; close() seals the last chunk (it does not close `raw`)."""

    def __init__(self, raw, password: str):
        check_new_password(password)
        keys = derive_new_keys(_key_bytes(password), kdf_params_from_env())
        header = keys.new_header(BACKUP_GENERATION)
        self._aad = associated_data(MAGIC, header.encode())
        self._aead = keys.aead()
        self._prefix = header.nonce[:NONCE_PREFIX_BYTES]
        self._raw = raw
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        raw.write(self._aad)

    def write(self, data) -> int:
        assert not self._closed, "write after close"
        self._buffer += data
        # Keep at least one byte back: the last chunk must be sealed as last by close().
        while len(self._buffer) > CHUNK_BYTES:
            self._seal(bytes(self._buffer[:CHUNK_BYTES]), last=False)
            del self._buffer[:CHUNK_BYTES]
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
            self._closed = True

    def _seal(self, chunk: bytes, last: bool) -> None:
        if self._index > MAX_CHUNKS:
            raise BackupCryptoError("the archive is too large to encrypt (over 4 PiB)")
        self._raw.write(self._aead.encrypt(_nonce(self._prefix, self._index, last), chunk, self._aad))
        self._index += 1


class DecryptingReader:
    """A read-only file object over an encrypted backup; raises BackupCryptoError on any damage."""

    def __init__(self, raw, password: str):
        prefix = _read_exact(raw, PREFIX_SIZE)
        if len(prefix) < PREFIX_SIZE or prefix[: len(MAGIC)] != MAGIC:
            raise BackupCryptoError("not an encrypted tokenpay backup")
        header_len = header_length(prefix)
        if not 1 <= header_len <= HEADER_MAX_BYTES:
            raise BackupCryptoError("the encryption header is damaged (length out of range)")
        header_raw = _read_exact(raw, header_len)
        try:
            header = parse_header(header_raw)
        except HeaderCorrupt as error:
            raise BackupCryptoError(f"the encryption header is damaged: {error}") from None
        keys = derive_keys(_key_bytes(password), header.kdf, header.salt)
        if not keys.matches(header):
            raise BackupCryptoError("wrong backup password (nothing was written)")
        self._aad = prefix + header_raw
        self._aead = keys.aead()
        self._prefix = header.nonce[:NONCE_PREFIX_BYTES]
        self._raw = raw
        self._index = 0
        self._pending = _read_exact(raw, SEALED_CHUNK_BYTES)
        self._plain = b""
        self._offset = 0
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            parts = [self.read(CHUNK_BYTES)]
            while parts[-1]:
                parts.append(self.read(CHUNK_BYTES))
            return b"".join(parts)
        # At most one chunk per call, sliced by offset: no copying of what is left.
        while self._offset == len(self._plain) and not self._ended:
            self._open_next()
        data = self._plain[self._offset : self._offset + size]
        self._offset += len(data)
        return data

    @property
    def complete(self) -> bool:
        """True once the chunk sealed as last has been authenticated."""
        return self._ended

    def _open_next(self) -> None:
        sealed = self._pending
        following = _read_exact(self._raw, SEALED_CHUNK_BYTES)
        last = not following
        if (
            len(sealed) < TAG_SIZE
            or (not last and len(sealed) != SEALED_CHUNK_BYTES)
            or self._index > MAX_CHUNKS
        ):
            raise BackupCryptoError("the encrypted backup is truncated or damaged")
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, self._index, last), sealed, self._aad)
        except InvalidTag:
            raise BackupCryptoError(
                "the encrypted backup is damaged or was changed (authentication failed)"
            ) from None
        self._plain, self._offset = plain, 0
        self._pending, self._index, self._ended = following, self._index + 1, last


def _read_exact(raw, size: int) -> bytes:
    """Up to `size` bytes; fewer only at the end of the file."""
    parts, remaining = [], size
    while remaining > 0:
        part = raw.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
