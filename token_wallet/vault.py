"""The member's local vault: a record store guarded by password A (format: docs/vault-format.md).

The vault holds the wallet's document: a small *core* (key reference or wrapped key blob, public
key, member id, center URL and pinned certificate, counter, outbox, top-ups, cursors) and three
kinds of *records* that only grow (history, receipts, notices). Password A alone opens it;
password B (the token PIN) is enforced by the token and never touches this file (DESIGN.md, "The
two passwords on hardware").

On disk it is one SQLite file (token_wallet.vault_store): each record is sealed on its own, the
core is sealed as one value, and a save writes the records appended since the last save plus the
new core in one SQLite transaction (WAL journal, fsync on commit). So a payment's vault work is
the same at a thousand records or a million, a crash at any instant leaves the last committed
save, and the records and the core that counts them never disagree.

``Vault.open`` of a file in the first format (one sealed JSON file, token_wallet.vault_v1)
migrates it once: the new store is written beside it, read back and compared with the old
document record by record, and only then put in its place; the old file stays as ``<path>.v1``
until a later run of the wallet has opened the new store and saved to it.

Not covered (docs/threat-model.md): rolling the whole file back to an older genuine copy cannot be
detected from the file alone; the center's counter and tree heads notice it at the next exchange.
Python cannot wipe the keys from memory; they live as long as the Vault.

Concurrent processes: hold ``vault_lock(path)`` (token_wallet.vault_lock) from ``open`` until
``save``. ``save`` also refuses to write over a save it has not seen (``VaultConflict``).

Long because opening (each refusal a one-line VaultError naming the fix), the transactional save,
the re-keying of a password change and the one-time migration are one file's life; the sealing is
token_wallet.vault_store, the record sequences token_wallet.vault_records.
"""

from __future__ import annotations

import hmac
import os
import pathlib
import secrets
import sqlite3
from dataclasses import dataclass

from hostkit.private_files import PRIVATE_DIR_MODE, fsync_directory, link_new_name
from hostkit.sealing import KdfParams, SealingKeys, derive_keys, kdf_params_from_env
from token_wallet import vault_store as store
from token_wallet.vault_base import (
    DOCUMENT_DEPTH_MAX,
    VaultBusy,
    VaultConflict,
    VaultCorrupt,
    VaultError,
    VaultNotFound,
    WrongPasswordA,
    ensure_private_dir,
    new_password_keys,
    password_a_bytes,
    reading_vault,
    sibling,
)
from token_wallet.vault_records import RecordList
from token_wallet.vault_store import KINDS, SealedRow, StoreHeader
from token_wallet.vault_v1 import MAGIC as V1_MAGIC
from token_wallet.vault_v1 import VaultV1

__all__ = [
    "DOCUMENT_DEPTH_MAX",
    "Vault",
    "VaultBusy",
    "VaultConflict",
    "VaultCorrupt",
    "VaultError",
    "VaultNotFound",
    "WrongPasswordA",
    "ensure_private_dir",
    "sibling",
]

# Beside the vault: the SQLite journal, the store being written by create or a migration, and the
# first-format file a migration keeps until the new store has proved itself.
NEW_SUFFIX = ".new"
V1_BACKUP_SUFFIX = ".v1"
SIDE_FILE_SUFFIXES = ("-wal", "-shm", NEW_SUFFIX, V1_BACKUP_SUFFIX)


class Vault:
    """An opened vault: edit ``data`` in place (records by ``append``), then ``save()``."""

    path: pathlib.Path
    data: dict
    generation: int

    def __init__(self, path: pathlib.Path, conn: sqlite3.Connection, opened: _Opened) -> None:
        # Use Vault.create or Vault.open; this only assembles an opened vault.
        self.path = path
        self._conn = conn
        self._keys, self._header, self._header_raw = opened.keys, opened.header, opened.header_raw
        self._data_keys = opened.data_keys
        self._index_key = store.index_key(opened.data_keys)
        self.generation = opened.generation
        self._seals = opened.seals
        self._migrated = False
        self._backup_settled = False
        self.data = dict(opened.core)
        for kind in KINDS:
            self.data[kind] = RecordList(kind, opened.counts[kind], self._read_records, self._find_ref)
        self._lists = {kind: self.data[kind] for kind in KINDS}

    def __repr__(self) -> str:
        # Never show data (wrapped key, history) or key material.
        return f"<Vault path={str(self.path)!r} generation={self.generation}>"

    @property
    def kdf(self) -> KdfParams:
        return self._keys.kdf

    @property
    def migrated(self) -> bool:
        """Whether this open converted a first-format vault (its backup is ``<path>.v1``)."""
        return self._migrated

    def close(self) -> None:
        self._conn.close()

    def document(self) -> dict:
        """The whole document as plain JSON values, every record read (slow on a big vault: for
        inspection and tests, never on a payment's path)."""
        return {key: list(value) if key in KINDS else value for key, value in self.data.items()}

    # --- create and open ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path, password_a: str, data: dict, *, kdf: KdfParams | None = None) -> Vault:
        """Write a new vault (generation 1). Refuses to overwrite an existing file."""
        path = pathlib.Path(path)
        # Checked before the slow derivation; link_new_name checks again atomically.
        if path.exists() or path.is_symlink():
            raise VaultError(f"a vault already exists at {path}: refusing to overwrite it")
        kdf = kdf_params_from_env() if kdf is None else kdf
        _check_new_document(data)
        keys = new_password_keys(password_a, kdf)
        ensure_private_dir(path.parent)
        # A home that existed before (0755 from a plain mkdir) becomes private too.
        os.chmod(path.parent, PRIVATE_DIR_MODE)
        _write_new_store(path, keys, data)
        return cls._open_with_keys(path, keys)

    @classmethod
    def open(cls, path, password_a: str) -> Vault:
        """Decrypt ``path`` with password A. A first-format vault is migrated (see the module doc)."""
        path = pathlib.Path(path)
        password = password_a_bytes(password_a)
        if _read_magic(path).startswith(V1_MAGIC):
            return _migrate_v1(path, password_a)
        wrong = WrongPasswordA("wrong password A: the vault was not opened (nothing changed)")
        return cls._open_connected(path, lambda header: derive_keys(password, header.kdf, header.salt), wrong)

    @classmethod
    def _open_with_keys(cls, path: pathlib.Path, keys: SealingKeys) -> Vault:
        """Open a store this process has just written, with the keys it wrote it under (no KDF)."""
        swapped = VaultCorrupt(f"the vault just written at {path} does not open: check the disk")
        return cls._open_connected(path, lambda _header: keys, swapped)

    @classmethod
    def _open_connected(cls, path: pathlib.Path, keys_for, mismatch: VaultError) -> Vault:
        """Connect, read the header, get the keys for it (`keys_for`: the KDF, or keys at hand), check
        them against the header (`mismatch` raised if they do not fit), read the rest; the connection
        is closed on any refusal."""
        conn = _connect_existing(path)
        try:
            header_raw, header = _read_header(conn)
            keys = keys_for(header)
            if not hmac.compare_digest(keys.check, header.check):
                raise mismatch
            return cls(path, conn, _read_opened(conn, keys, header_raw, header))
        except BaseException:
            conn.close()
            raise

    # --- save ---------------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the queued records and the core as the next generation, in one transaction."""
        core = self._core()
        header_raw = None
        if self._seals + self._pending_count() + 1 > store.SEALS_PER_EPOCH_MAX:
            self._start_epoch(self._keys)
            header_raw = self._header_raw  # the new epoch's key is written with this save
        self._commit(core, header_raw=header_raw)
        if not self._migrated and not self._backup_settled:
            # A later run opened the migrated store and saved to it: the first-format copy goes
            # (looked for once per open, not at every save).
            _remove_if_present(sibling(self.path, V1_BACKUP_SUFFIX))
            self._backup_settled = True

    def change_password(self, new_password_a: str, *, kdf: KdfParams | None = None) -> None:
        """New password A: the data keys are wrapped under its key and a new epoch starts, so
        nothing already written is rewritten (docs/vault-format.md, "Changing password A").

        The first-format backup, if any, is deleted: it still opens with the old password A.
        """
        kdf = kdf_params_from_env() if kdf is None else kdf
        new_keys = new_password_keys(new_password_a, kdf)
        if len(self._header.wrapped) >= store.EPOCHS_MAX:
            raise VaultError(
                f"password A was changed {store.EPOCHS_MAX} times in this vault: create a new wallet home"
            )
        old = (self._keys, self._header, self._header_raw, dict(self._data_keys), self._seals)
        self._start_epoch(new_keys)
        try:
            self._commit(self._core(), header_raw=self._header_raw)
        except BaseException:
            self._keys, self._header, self._header_raw, self._data_keys, self._seals = old
            raise
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old key table leaves the journal
        for suffix in (V1_BACKUP_SUFFIX, ".prev"):
            _remove_if_present(sibling(self.path, suffix))
        fsync_directory(self.path.parent)

    def _start_epoch(self, keys: SealingKeys) -> None:
        """A fresh data key for everything sealed from now on; all keys wrapped under ``keys``."""
        epoch = self._header.epoch + 1
        self._data_keys[epoch] = secrets.token_bytes(store.DATA_KEY_SIZE)
        wrapped = {
            e: store.wrap_data_key(keys.aes_key, self._header.store_id, e, key)
            for e, key in self._data_keys.items()
        }
        self._keys = keys
        self._header = StoreHeader(self._header.store_id, keys.kdf, keys.salt, keys.check, wrapped)
        self._header_raw = self._header.encode()
        self._seals = 0

    def _core(self) -> dict:
        for kind, records in self._lists.items():
            if self.data.get(kind) is not records:
                raise VaultError(
                    f"the vault's {kind} can only be appended to, not replaced: nothing was written"
                )
        return {key: value for key, value in self.data.items() if key not in KINDS}

    def _pending_count(self) -> int:
        return sum(len(records.pending()) for records in self._lists.values())

    def _commit(self, core: dict, *, header_raw: bytes | None) -> None:
        epoch = self._header.epoch
        data_key = self._data_keys[epoch]
        generation = self.generation + 1
        store_id = self._header.store_id
        rows = _sealed_rows(self._lists, data_key, store_id, epoch, self._index_key)
        counts = {kind: len(records) for kind, records in self._lists.items()}
        seals = self._seals + len(rows) + 1
        state = {"core": core, "counts": counts, "seals": seals}
        sealed_state = store.seal_state(data_key, store_id, generation, epoch, self._header_raw, state)
        self._write(rows, generation, sealed_state, header_raw)
        for records in self._lists.values():
            records.committed(len(records.pending()))
        self.generation, self._seals = generation, seals

    def _write(self, rows: list, generation: int, state: SealedRow, header_raw: bytes | None) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                on_disk = conn.execute("SELECT generation FROM vault_state WHERE id = 1").fetchone()
                if on_disk is None or on_disk[0] != self.generation:
                    raise VaultConflict(
                        f"the vault at {self.path} changed since it was opened (another wallet process?): "
                        "open it again and redo the change"
                    )
                if header_raw is not None:
                    conn.execute("UPDATE vault_header SET header = ? WHERE id = 1", (header_raw,))
                conn.executemany(
                    "INSERT INTO records (kind, seq, epoch, nonce, sealed, ref) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute(
                    "UPDATE vault_state SET generation = ?, epoch = ?, nonce = ?, sealed = ? WHERE id = 1",
                    (generation, state.epoch, state.nonce, state.sealed),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise VaultError(
                f"could not write the vault at {self.path}: {_reason(error)} (the previous save is unchanged)"
            ) from None

    # --- reading records (for RecordList) -----------------------------------------------------------

    def _read_records(self, kind: str, first_seq: int, last_seq: int) -> list[dict]:
        code = KINDS[kind]
        try:
            rows = self._conn.execute(
                "SELECT seq, epoch, nonce, sealed, ref FROM records WHERE kind = ? AND seq BETWEEN ? AND ? "
                "ORDER BY seq",
                (code, first_seq, last_seq),
            ).fetchall()
        except sqlite3.DatabaseError as error:
            raise VaultCorrupt(
                f"the vault's {kind} cannot be read ({_reason(error)}): restore a backup"
            ) from None
        records = []
        for expected_seq, (seq, epoch, nonce, sealed, ref) in enumerate(rows, start=first_seq):
            if seq != expected_seq:
                break
            row = SealedRow(epoch, nonce, sealed)
            records.append(store.open_record(self._data_keys, self._header.store_id, code, seq, row, ref))
        if len(records) != last_seq - first_seq + 1:
            missing = first_seq + len(records)
            raise VaultCorrupt(
                f"the vault's {kind} record {missing} is missing: records were dropped from the file; "
                "restore a backup"
            )
        return records

    def _find_ref(self, kind: str, ref: str) -> int | None:
        ref_bytes = store.record_ref(self._index_key, KINDS[kind], ref)
        try:
            row = self._conn.execute(
                "SELECT seq FROM records WHERE kind = ? AND ref = ? ORDER BY seq DESC LIMIT 1",
                (KINDS[kind], ref_bytes),
            ).fetchone()
        except sqlite3.DatabaseError as error:
            raise VaultCorrupt(
                f"the vault's {kind} cannot be read ({_reason(error)}): restore a backup"
            ) from None
        return None if row is None else row[0]


# --- opening, step by step ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Opened:
    """What reading a store yields before the Vault object exists."""

    keys: SealingKeys
    header: StoreHeader
    header_raw: bytes
    data_keys: dict[int, bytes]
    generation: int
    seals: int
    core: dict
    counts: dict[str, int]


def _read_magic(path: pathlib.Path) -> bytes:
    with reading_vault(path), open(path, "rb") as f:
        magic = f.read(len(store.SQLITE_MAGIC))
    if not (magic.startswith(V1_MAGIC) or magic == store.SQLITE_MAGIC):
        raise VaultCorrupt("not a vault file (bad magic): check the path or restore a backup")
    return magic


def _connect_existing(path: pathlib.Path) -> sqlite3.Connection:
    if pathlib.Path(path).is_symlink():
        raise VaultError(f"{path} is a symbolic link: a vault must be a plain file in the wallet home")
    try:
        return store.connect(path, create=False)
    except sqlite3.DatabaseError as error:
        raise VaultCorrupt(f"the vault database is damaged ({_reason(error)}): restore a backup") from None


def _read_header(conn: sqlite3.Connection) -> tuple[bytes, StoreHeader]:
    store.check_schema(conn)
    try:
        rows = conn.execute("SELECT header FROM vault_header").fetchall()
    except sqlite3.DatabaseError as error:
        raise VaultCorrupt(f"the vault header cannot be read ({_reason(error)}): restore a backup") from None
    if len(rows) != 1:
        raise VaultCorrupt("the vault has no header: the file is damaged; restore a backup")
    header_raw = rows[0][0]
    return header_raw, store.parse_store_header(header_raw)


def _read_opened(conn, keys: SealingKeys, header_raw: bytes, header: StoreHeader) -> _Opened:
    data_keys = store.unwrap_data_keys(header, keys)
    try:
        row = conn.execute("SELECT generation, epoch, nonce, sealed FROM vault_state WHERE id = 1").fetchone()
        if row is None:
            raise VaultCorrupt("the vault has no state: the file is damaged; restore a backup")
        generation, epoch, nonce, sealed = row
        if not isinstance(generation, int) or not 1 <= generation <= store.GENERATION_MAX:
            raise VaultCorrupt("the vault's generation is out of range: the file is damaged")
        state = store.open_state(
            data_keys, header.store_id, generation, SealedRow(epoch, nonce, sealed), header_raw
        )
        _check_counts(conn, state["counts"])
    except sqlite3.DatabaseError as error:
        raise VaultCorrupt(f"the vault database is damaged ({_reason(error)}): restore a backup") from None
    return _Opened(
        keys=keys,
        header=header,
        header_raw=header_raw,
        data_keys=data_keys,
        generation=generation,
        seals=state["seals"],
        core=state["core"],
        counts=state["counts"],
    )


def _check_counts(conn: sqlite3.Connection, counts: dict) -> None:
    """The newest record of each kind is the one the state counts: a truncated store, a record
    beyond it, or a state older than the records is refused at open (a gap inside is refused when
    that range is read). Two index lookups per kind, whatever the size."""
    stray = conn.execute("SELECT 1 FROM records WHERE kind < 1 OR kind > ? LIMIT 1", (len(KINDS),)).fetchone()
    if stray is not None:
        raise VaultCorrupt("the vault holds records of an unknown kind: it was not written by this program")
    for kind, code in KINDS.items():
        newest = conn.execute(
            "SELECT seq FROM records WHERE kind = ? ORDER BY seq DESC LIMIT 1", (code,)
        ).fetchone()
        oldest = conn.execute(
            "SELECT seq FROM records WHERE kind = ? ORDER BY seq LIMIT 1", (code,)
        ).fetchone()
        found = (oldest[0], newest[0]) if newest else (1, 0)
        if found != (1, counts[kind]):
            raise VaultCorrupt(
                f"the vault's {kind} holds records {found[0]}..{found[1]} but its state counts "
                f"1..{counts[kind]}: the file was truncated or partly rolled back; restore a backup"
            )


# --- creating and migrating -----------------------------------------------------------------------------


def _check_new_document(data: object) -> None:
    if not isinstance(data, dict):
        raise VaultError("the vault document must be a JSON object (dict): nothing was written")
    for kind in KINDS:
        records = data.get(kind, [])
        if not isinstance(records, list) or not all(isinstance(item, dict) for item in records):
            raise VaultError(f"the vault document's {kind} must be a list of objects: nothing was written")


def _write_new_store(path: pathlib.Path, keys: SealingKeys, data: dict) -> None:
    """The whole store at <path>.new, committed and closed, then linked to <path> (never over a file)."""
    new = sibling(path, NEW_SUFFIX)
    for stale in (new, sibling(new, "-wal"), sibling(new, "-shm")):
        stale.unlink(missing_ok=True)  # a create or migration that crashed; ours by naming convention
    store_id = secrets.token_bytes(store.STORE_ID_SIZE)
    data_key = secrets.token_bytes(store.DATA_KEY_SIZE)
    header = StoreHeader(
        store_id,
        keys.kdf,
        keys.salt,
        keys.check,
        {1: store.wrap_data_key(keys.aes_key, store_id, 1, data_key)},
    )
    header_raw = header.encode()
    lists = {kind: RecordList(kind, 0, _nothing_written, lambda _k, _r: None) for kind in KINDS}
    for kind, records in lists.items():
        for item in data.get(kind, []):
            records.append(item)
    core = {key: value for key, value in data.items() if key not in KINDS}
    rows = _sealed_rows(lists, data_key, store_id, 1, store.index_key({1: data_key}))
    state = {
        "core": core,
        "counts": {kind: len(records) for kind, records in lists.items()},
        "seals": len(rows) + 1,
    }
    sealed_state = store.seal_state(data_key, store_id, 1, 1, header_raw, state)
    try:
        conn = store.connect(new, create=True)
        try:
            os.chmod(new, 0o600)
            store.create_schema(conn)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO vault_header (id, header) VALUES (1, ?)", (header_raw,))
            conn.executemany(
                "INSERT INTO records (kind, seq, epoch, nonce, sealed, ref) VALUES (?, ?, ?, ?, ?, ?)", rows
            )
            conn.execute(
                "INSERT INTO vault_state (id, generation, epoch, nonce, sealed) VALUES (1, 1, 1, ?, ?)",
                (sealed_state.nonce, sealed_state.sealed),
            )
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        link_new_name(new, path)
    except FileExistsError:
        raise VaultError(f"a vault already exists at {path}: refusing to overwrite it") from None
    except (sqlite3.Error, OSError) as error:
        raise VaultError(
            f"could not write the vault at {path}: {_reason(error)} (nothing was written)"
        ) from None
    finally:
        for leftover in (new, sibling(new, "-wal"), sibling(new, "-shm")):
            leftover.unlink(missing_ok=True)
    fsync_directory(path.parent)


def _sealed_rows(lists: dict, data_key: bytes, store_id: bytes, epoch: int, index_key: bytes) -> list[tuple]:
    """The records queued in `lists`, sealed under `epoch`'s key: rows for the records table."""
    rows = []
    for kind, records in lists.items():
        code = KINDS[kind]
        for seq, plaintext, ref in records.pending():
            ref_bytes = None if ref is None else store.record_ref(index_key, code, ref)
            sealed = store.seal_record(data_key, store_id, code, seq, epoch, ref_bytes, plaintext)
            rows.append((code, seq, epoch, sealed.nonce, sealed.sealed, ref_bytes))
    return rows


def _nothing_written(kind: str, first_seq: int, last_seq: int) -> list[dict]:
    raise AssertionError("a store being created has no records on disk yet")


def _migrate_v1(path: pathlib.Path, password_a: str) -> Vault:
    """First-format vault -> record store, proved equal before it replaces the old file."""
    old = VaultV1.open(path, password_a)  # WrongPasswordA / VaultCorrupt as before; nothing written
    keys = old.keys  # same salt and KDF: the new header checks the same password, no second Argon2id
    backup = sibling(path, V1_BACKUP_SUFFIX)
    backup.unlink(missing_ok=True)  # a migration that crashed before installing; the file at path is v1
    os.link(path, backup)
    staged = sibling(path, ".migrating")
    for stale in (staged, sibling(staged, "-wal"), sibling(staged, "-shm")):
        stale.unlink(missing_ok=True)  # a migration that crashed before installing
    _write_new_store(staged, keys, old.data)
    vault = Vault._open_with_keys(staged, keys)
    try:
        _prove_same(vault, old.data)
        vault.close()
        os.replace(staged, path)
        fsync_directory(path.parent)
    except BaseException:
        vault.close()
        staged.unlink(missing_ok=True)
        raise
    vault = Vault._open_with_keys(path, keys)
    vault._migrated = True
    return vault


def _prove_same(vault: Vault, old_document: dict) -> None:
    """Every record and the core read back from the new store equal the old document."""
    for key, value in old_document.items():
        if key in KINDS:
            if list(vault.data[key]) != value:
                raise VaultCorrupt(
                    f"migrating the vault changed its {key}: nothing was replaced; report this"
                )
        elif vault.data.get(key) != value:
            raise VaultCorrupt(f"migrating the vault changed its {key}: nothing was replaced; report this")


def _remove_if_present(path: pathlib.Path) -> None:
    path.unlink(missing_ok=True)


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
