"""The vault's first format (v1): one encrypted file guarded by password A.

Vaults of this format are migrated once, on first open, to the record store of
token_wallet.vault (docs/vault-format.md); this module reads them for that and is kept whole
(writing too) so the migration is tested against files this code really wrote. Nothing else
writes v1 files any more.

The vault holds a JSON document (key reference or wrapped key blob, public
key, member id, center URL and pinned certificate, history, receipts, outbox).
Password A alone opens it; password B (the token PIN) is enforced by the token
and never touches this file (DESIGN.md, "The two passwords on hardware").

File layout (all of it authenticated), sealed with the one password recipe of
hostkit.sealing (Argon2id + AES-256-GCM; the header format and limits are there)::

    b"TPVAULT1" | header length (4 bytes, big-endian) | header | ciphertext+tag

The whole document is one AES-GCM message; each save is a new generation
(the header's counter) with a fresh nonce under the key derived once at open.

Writes are atomic: the new file goes to ``<path>.tmp`` (hostkit.private_files:
0600, O_NOFOLLOW, fsynced), the current file is hard-linked to ``<path>.prev``
(so a complete vault exists at every instant), the tmp file replaces
``<path>`` and the directory is fsynced. ``open`` reads only ``<path>``;
``<path>.prev`` is the previous generation, kept for manual recovery (rename it
over ``<path>`` and open it with the password A that was valid for that
generation). ``change_password`` removes it, because it would still open with
the old password A.

Not covered: rolling the file back to an older, genuine generation (for
example copying ``.prev`` over it) cannot be detected from the file alone.
Python cannot wipe the derived key from memory; it lives as long as the Vault.

Long because the file format's refusals (each a one-line VaultError naming the fix), the
crash-safe write (tmp, .prev, rename, fsync) and the Vault object are one file's life; the
sealing recipe is hostkit.sealing and the lock token_wallet.vault_lock.

Concurrent processes: hold ``vault_lock(path)`` (token_wallet.vault_lock) from
``open`` until ``save``. ``save`` also refuses to overwrite a file that changed
since it was read (``VaultConflict``), so a forgotten lock loses no update silently.
"""

from __future__ import annotations

import os
import pathlib

from cryptography.exceptions import InvalidTag

from hostkit.private_files import (
    NO_LINK_ERRNOS,
    PRIVATE_DIR_MODE,
    fsync_directory,
    link_new_name,
    write_new_file,
)
from hostkit.sealing import (
    GENERATION_MAX,
    HEADER_MAX_BYTES,
    PREFIX_SIZE,
    TAG_SIZE,
    HeaderCorrupt,
    KdfParams,
    SealHeader,
    SealingKeys,
    associated_data,
    derive_keys,
    header_length,
    kdf_params_from_env,
    parse_header,
)
from token_wallet.vault_base import (
    VaultConflict,
    VaultCorrupt,
    VaultError,
    WrongPasswordA,
    decode_document,
    encode_document,
    ensure_private_dir,
    new_password_keys,
    password_a_bytes,
    reading_vault,
    sibling,
)

MAGIC = b"TPVAULT1"
FILE_MAX_BYTES = 64 * 1024 * 1024


# --- reading ------------------------------------------------------------------


def _parse_header(raw: bytes) -> SealHeader:
    try:
        return parse_header(raw)
    except HeaderCorrupt as error:
        raise VaultCorrupt(f"vault {error}") from None


def _split_file(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(aad, header bytes, ciphertext) after checking magic and lengths."""
    if len(blob) < PREFIX_SIZE or blob[: len(MAGIC)] != MAGIC:
        raise VaultCorrupt("not a vault file (bad magic): check the path or restore a backup")
    header_len = header_length(blob[:PREFIX_SIZE])
    if not 1 <= header_len <= HEADER_MAX_BYTES:
        raise VaultCorrupt(
            f"vault header length {header_len} is outside [1, {HEADER_MAX_BYTES}]: the file is damaged"
        )
    body_start = PREFIX_SIZE + header_len
    if len(blob) < body_start + TAG_SIZE + 2:
        raise VaultCorrupt("vault file is truncated: restore it from <path>.prev or a backup")
    return blob[:body_start], blob[PREFIX_SIZE:body_start], blob[body_start:]


def _build_file(header: SealHeader, keys: SealingKeys, document: bytes) -> tuple[bytes, bytes]:
    """(file bytes, header bytes) for one generation."""
    header_raw = header.encode()
    aad = associated_data(MAGIC, header_raw)
    blob = aad + keys.aead().encrypt(header.nonce, document, aad)
    if len(blob) > FILE_MAX_BYTES:
        raise VaultError(
            f"the vault document is too large ({len(blob)} bytes, limit {FILE_MAX_BYTES}): "
            "archive old history or receipts first (nothing was written)"
        )
    return blob, header_raw


def _read_vault_file(path: pathlib.Path) -> bytes:
    with reading_vault(path), open(path, "rb") as f:
        size_bytes = os.fstat(f.fileno()).st_size
        if size_bytes > FILE_MAX_BYTES:
            raise VaultCorrupt(
                f"vault file is {size_bytes} bytes, over the {FILE_MAX_BYTES} limit: check the path"
            )
        # +1 catches a file that grew after fstat.
        blob = f.read(FILE_MAX_BYTES + 1)
    if len(blob) > FILE_MAX_BYTES:
        raise VaultCorrupt(f"vault file is over the {FILE_MAX_BYTES} byte limit: check the path")
    return blob


def _read_header_bytes(path: pathlib.Path) -> bytes | None:
    """The header bytes currently on disk, or None if unreadable (for conflict checks)."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(PREFIX_SIZE)
            if len(prefix) < PREFIX_SIZE or prefix[: len(MAGIC)] != MAGIC:
                return None
            header_len = header_length(prefix)
            if header_len > HEADER_MAX_BYTES:
                return None
            return f.read(header_len)
    except OSError:
        return None


# --- writing (on hostkit.private_files) -------------------------------------------


def _write_tmp(tmp: pathlib.Path, blob: bytes) -> None:
    tmp.unlink(missing_ok=True)  # a stale tmp from a crash; ours by naming convention
    write_new_file(tmp, blob)


def _keep_previous(path: pathlib.Path) -> None:
    """Make <path>.prev the current file without ever leaving <path> missing."""
    prev = sibling(path, ".prev")
    prev.unlink(missing_ok=True)
    try:
        os.link(path, prev)
    except OSError as e:
        if e.errno not in NO_LINK_ERRNOS:
            raise
        # File systems without hard links: a copy serves recovery just as well.
        write_new_file(prev, path.read_bytes())


def _install_new(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """Move tmp to path, failing if path exists (create never overwrites)."""
    try:
        link_new_name(tmp, path)
    except FileExistsError:
        raise VaultError(f"a vault already exists at {path}: refusing to overwrite it") from None
    tmp.unlink(missing_ok=True)


def _commit(path: pathlib.Path, blob: bytes, *, replace: bool) -> None:
    tmp = sibling(path, ".tmp")
    try:
        _write_tmp(tmp, blob)
        if replace:
            _keep_previous(path)
            os.replace(tmp, path)
        else:
            _install_new(tmp, path)
        fsync_directory(path.parent)
    except VaultError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = e.strerror or type(e).__name__
        raise VaultError(
            f"could not write the vault at {path}: {reason} (the previous file is unchanged)"
        ) from None


class VaultV1:
    """An opened vault: edit ``data`` in place, then ``save()``."""

    path: pathlib.Path
    data: dict
    generation: int

    def __init__(
        self, path: pathlib.Path, data: dict, generation: int, keys: SealingKeys, header_raw: bytes
    ) -> None:
        # Use Vault.create or Vault.open; this only assembles an opened vault.
        self.path = path
        self.data = data
        self.generation = generation
        self._keys = keys
        self._header_raw = header_raw  # what is on disk, for conflict detection

    def __repr__(self) -> str:
        # Never show data (wrapped key, history) or key material.
        return f"<Vault path={str(self.path)!r} generation={self.generation}>"

    @property
    def kdf(self) -> KdfParams:
        return self._keys.kdf

    @property
    def keys(self) -> SealingKeys:
        """The derived keys: a migration seals the new store's key table under the same password key."""
        return self._keys

    @classmethod
    def create(cls, path, password_a: str, data: dict, *, kdf: KdfParams | None = None) -> VaultV1:
        """Write a new vault (generation 1). Refuses to overwrite an existing file."""
        path = pathlib.Path(path)
        # Checked before the slow derivation; _install_new checks again atomically.
        if path.exists() or path.is_symlink():
            raise VaultError(f"a vault already exists at {path}: refusing to overwrite it")
        kdf = kdf_params_from_env() if kdf is None else kdf
        document = encode_document(data)
        keys = new_password_keys(password_a, kdf)
        ensure_private_dir(path.parent)
        # A home that existed before (0755 from a plain mkdir) becomes private too.
        os.chmod(path.parent, PRIVATE_DIR_MODE)
        vault = cls(path, data, 0, keys, b"")
        vault._write(document, replace=False)
        return vault

    @classmethod
    def open(cls, path, password_a: str) -> VaultV1:
        """Decrypt ``path`` with password A. Reads only; never writes anything."""
        path = pathlib.Path(path)
        password = password_a_bytes(password_a)
        aad, header_raw, ciphertext = _split_file(_read_vault_file(path))
        header = _parse_header(header_raw)
        keys = derive_keys(password, header.kdf, header.salt)
        if not keys.matches(header):
            raise WrongPasswordA("wrong password A: the vault was not opened (nothing changed)")
        try:
            plaintext = keys.aead().decrypt(header.nonce, ciphertext, aad)
        except InvalidTag:
            raise VaultCorrupt(
                "password A is right but the vault file was damaged or tampered with: "
                "restore it from <path>.prev or a backup"
            ) from None
        return cls(path, decode_document(plaintext), header.generation, keys, header_raw)

    def save(self) -> None:
        """Re-encrypt ``data`` as the next generation with a fresh nonce."""
        self._check_unchanged_on_disk()
        self._write(encode_document(self.data), replace=True)

    def change_password(self, new_password_a: str, *, kdf: KdfParams | None = None) -> None:
        """New salt and key from new_password_a; saves and removes <path>.prev.

        The .prev file is deleted because it still opens with the old password A,
        which may be the reason for the change. kdf=None uses kdf_params_from_env().
        """
        kdf = kdf_params_from_env() if kdf is None else kdf
        new_keys = new_password_keys(new_password_a, kdf)
        self._check_unchanged_on_disk()
        document = encode_document(self.data)
        old_keys = self._keys
        self._keys = new_keys
        try:
            self._write(document, replace=True)
        except BaseException:
            self._keys = old_keys  # the file still has the old password A
            raise
        sibling(self.path, ".prev").unlink(missing_ok=True)
        fsync_directory(self.path.parent)

    def _check_unchanged_on_disk(self) -> None:
        if _read_header_bytes(self.path) != self._header_raw:
            raise VaultConflict(
                f"the vault at {self.path} changed since it was opened (another wallet process?): "
                "open it again and redo the change"
            )

    def _write(self, document: bytes, *, replace: bool) -> None:
        generation = self.generation + 1
        if generation > GENERATION_MAX:
            raise VaultError("the vault has reached its write limit: create a new vault and move the data")
        header = self._keys.new_header(generation)
        blob, header_raw = _build_file(header, self._keys, document)
        _commit(self.path, blob, replace=replace)
        # Only after the file is in place does memory move to the new generation.
        self.generation = generation
        self._header_raw = header_raw
