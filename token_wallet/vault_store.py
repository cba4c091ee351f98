"""The vault's record store on disk (format v2): one SQLite file, every value sealed (docs/vault-format.md).

Three tables; only the header is plaintext::

    vault_header(id = 1, header)       canonical ASCII JSON: format, store id, KDF, check, wrapped keys
    vault_state(id = 1, generation, epoch, nonce, sealed)   the core document and the record counts
    records(kind, seq, epoch, nonce, sealed, ref)           one sealed record each, seq 1, 2, 3 ...

Keys: Argon2id(password A, salt) gives the key-encryption key (KEK) and the check value
(hostkit.sealing). Each *epoch* has a random 256-bit data key, stored wrapped (AES-256-GCM) under
the KEK in the header. A new password A wraps the same data keys under a new KEK and starts a new
epoch for everything written afterwards, so nothing is rewritten (see Vault.change_password).
The index key (for `ref`, a keyed hash that lets the wallet find "have I recorded payment X?"
without decrypting) is derived from epoch 1's data key.

Every sealing binds its place (associated data), so no value can be moved, reordered or reused:
a record binds store id, kind, seq, epoch and ref; the state binds store id, generation, epoch and
the SHA-256 of the header bytes (so no header byte can change unnoticed either). Nonces are random
96-bit; an epoch seals at most SEALS_PER_EPOCH_MAX values, then a new epoch starts by itself.

Leaf functions only: no policy (the Vault in token_wallet.vault decides when to write); every
value read from disk is bounded before it is used.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import struct
from dataclasses import dataclass
from urllib.parse import quote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hostkit.sealing import (
    CHECK_SIZE,
    NONCE_SIZE,
    HeaderCorrupt,
    KdfParams,
    SealingKeys,
    b64_field,
    b64_text,
    canonical_json,
    is_int,
    kdf_section,
    parse_canonical_json,
    parse_kdf_section,
    show,
)
from token_wallet.vault_base import VaultCorrupt, VaultError, decode_document, encode_document

SQLITE_MAGIC = b"SQLite format 3\x00"
FORMAT_NAME = "tokenpay-vault"
FORMAT_VERSION = 2
STORE_ID_SIZE = 16
DATA_KEY_SIZE = 32
REF_SIZE = 16
# Record kinds and their number on disk (never renumbered: the number is sealed into each record).
KINDS = {"history": 1, "receipts": 2, "notices": 3}

# --- limits ---------------------------------------------------------------------------------------
# A password change adds an epoch; a thousand changes is a lifetime, and the header stays < 128 KiB.
EPOCHS_MAX = 1024
HEADER_MAX_BYTES = 128 * 1024
# Random 96-bit nonces are safe for 2**32 sealings under one key (NIST SP 800-38D); half of that,
# then a fresh data key, keeps every key far below the bound.
SEALS_PER_EPOCH_MAX = 2**31
# A record is a history entry (~0.3 KB), a receipt (~2.2 KB) or a notice (~3.5 KB); 1 MiB is a bug.
RECORD_MAX_BYTES = 1024 * 1024
# The core: key reference, center, outbox (at most 1000 signed messages), top-ups, cursors.
CORE_MAX_BYTES = 16 * 1024 * 1024
SEQ_MAX = 2**62
PAGE_SIZE_BYTES = 16384
GENERATION_MAX = 2**62

HEADER_KEYS = frozenset({"check", "format", "kdf", "keys", "store_id", "v"})
KEY_ENTRY_KEYS = frozenset({"epoch", "nonce", "wrapped"})
STATE_KEYS = frozenset({"core", "counts", "seals"})

SCHEMA = (
    "CREATE TABLE vault_header (id INTEGER PRIMARY KEY CHECK (id = 1), header BLOB NOT NULL)",
    "CREATE TABLE vault_state (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL, "
    "epoch INTEGER NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL)",
    "CREATE TABLE records (kind INTEGER NOT NULL, seq INTEGER NOT NULL, epoch INTEGER NOT NULL, "
    "nonce BLOB NOT NULL, sealed BLOB NOT NULL, ref BLOB, PRIMARY KEY (kind, seq)) WITHOUT ROWID",
    "CREATE INDEX records_by_ref ON records (kind, ref) WHERE ref IS NOT NULL",
)
SCHEMA_NAMES = {"vault_header", "vault_state", "records", "records_by_ref"}


# --- the header -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreHeader:
    store_id: bytes
    kdf: KdfParams
    salt: bytes
    check: bytes
    wrapped: dict[int, tuple[bytes, bytes]]  # epoch -> (nonce, wrapped data key)

    def encode(self) -> bytes:
        keys = [
            {"epoch": epoch, "nonce": b64_text(nonce), "wrapped": b64_text(wrapped)}
            for epoch, (nonce, wrapped) in sorted(self.wrapped.items())
        ]
        raw = canonical_json(
            {
                "check": b64_text(self.check),
                "format": FORMAT_NAME,
                "kdf": kdf_section(self.kdf, self.salt),
                "keys": keys,
                "store_id": b64_text(self.store_id),
                "v": FORMAT_VERSION,
            },
            ascii_only=True,
        )
        assert len(raw) <= HEADER_MAX_BYTES
        return raw

    @property
    def epoch(self) -> int:
        """The current epoch: new values are sealed under its data key."""
        return max(self.wrapped)


def parse_store_header(raw: bytes) -> StoreHeader:
    """The header row, checked field by field before any KDF runs; VaultCorrupt otherwise."""
    if not isinstance(raw, bytes) or not 1 <= len(raw) <= HEADER_MAX_BYTES:
        raise VaultCorrupt(f"vault header is missing or over {HEADER_MAX_BYTES} bytes: the file is damaged")
    try:
        obj = parse_canonical_json(raw)
        if set(obj) != HEADER_KEYS or obj["format"] != FORMAT_NAME:
            raise HeaderCorrupt("header has unexpected fields: the file is damaged")
        if obj["v"] != FORMAT_VERSION or not is_int(obj["v"]):
            raise HeaderCorrupt(
                f"format version {show(obj['v'])} is not supported (expected {FORMAT_VERSION}): "
                "use a release that wrote this file"
            )
        kdf, salt = parse_kdf_section(obj["kdf"])
        return StoreHeader(
            store_id=b64_field(obj["store_id"], STORE_ID_SIZE, "store_id"),
            kdf=kdf,
            salt=salt,
            check=b64_field(obj["check"], CHECK_SIZE, "check"),
            wrapped=_parse_key_entries(obj["keys"]),
        )
    except HeaderCorrupt as error:
        raise VaultCorrupt(f"vault {error}") from None


def _parse_key_entries(entries: object) -> dict[int, tuple[bytes, bytes]]:
    if not isinstance(entries, list) or not 1 <= len(entries) <= EPOCHS_MAX:
        raise HeaderCorrupt(f"header keys must be a list of 1 to {EPOCHS_MAX} entries: the file is damaged")
    wrapped = {}
    for expected_epoch, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or set(entry) != KEY_ENTRY_KEYS or entry["epoch"] != expected_epoch:
            raise HeaderCorrupt("header key entries are not epochs 1, 2, 3 ... in order: the file is damaged")
        wrapped[expected_epoch] = (
            b64_field(entry["nonce"], NONCE_SIZE, "keys.nonce"),
            b64_field(entry["wrapped"], DATA_KEY_SIZE + 16, "keys.wrapped"),
        )
    return wrapped


# --- keys -----------------------------------------------------------------------------------------


def _key_aad(store_id: bytes, epoch: int) -> bytes:
    return b"TPVAULT2/key" + store_id + struct.pack(">I", epoch)


def wrap_data_key(kek: bytes, store_id: bytes, epoch: int, data_key: bytes) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce, AESGCM(kek).encrypt(nonce, data_key, _key_aad(store_id, epoch))


def unwrap_data_keys(header: StoreHeader, keys: SealingKeys) -> dict[int, bytes]:
    """Every epoch's data key; VaultCorrupt if one does not unwrap (the password was checked before)."""
    aead = AESGCM(keys.aes_key)
    data_keys = {}
    for epoch, (nonce, wrapped) in header.wrapped.items():
        try:
            data_keys[epoch] = aead.decrypt(nonce, wrapped, _key_aad(header.store_id, epoch))
        except InvalidTag:
            raise VaultCorrupt(
                "password A is right but the vault's key table was damaged or tampered with: restore a backup"
            ) from None
    return data_keys


def index_key(data_keys: dict[int, bytes]) -> bytes:
    """The key of the record refs: from epoch 1's data key, so refs stay comparable across epochs."""
    return hmac.new(data_keys[1], b"tokenpay-vault-index", hashlib.sha256).digest()


def record_ref(index_key_bytes: bytes, kind: int, ref: str) -> bytes:
    """A keyed hash of what identifies a record (a message id, a payment id): findable, not readable."""
    return hmac.new(index_key_bytes, bytes([kind]) + ref.encode("utf-8"), hashlib.sha256).digest()[:REF_SIZE]


# --- sealing values -------------------------------------------------------------------------------


def _state_aad(store_id: bytes, generation: int, epoch: int, header_raw: bytes) -> bytes:
    return (
        b"TPVAULT2/state"
        + store_id
        + struct.pack(">QI", generation, epoch)
        + hashlib.sha256(header_raw).digest()
    )


def _record_aad(store_id: bytes, kind: int, seq: int, epoch: int, ref: bytes | None) -> bytes:
    return b"TPVAULT2/record" + store_id + struct.pack(">BQI", kind, seq, epoch) + (ref or b"")


@dataclass(frozen=True)
class SealedRow:
    epoch: int
    nonce: bytes
    sealed: bytes


def seal_state(
    data_key: bytes, store_id: bytes, generation: int, epoch: int, header_raw: bytes, state: dict
) -> SealedRow:
    plaintext = encode_document(state, wrapper_levels=1)
    if len(plaintext) > CORE_MAX_BYTES:
        raise VaultError(
            f"the vault's core document is {len(plaintext)} bytes, over {CORE_MAX_BYTES}: "
            "run `wallet sync` to empty the outbox (nothing was written)"
        )
    nonce = secrets.token_bytes(NONCE_SIZE)
    aad = _state_aad(store_id, generation, epoch, header_raw)
    return SealedRow(epoch, nonce, AESGCM(data_key).encrypt(nonce, plaintext, aad))


def open_state(
    data_keys: dict[int, bytes], store_id: bytes, generation: int, row: SealedRow, header_raw: bytes
) -> dict:
    state = decode_document(
        _open(data_keys, row, _state_aad(store_id, generation, row.epoch, header_raw), "state")
    )
    if set(state) != STATE_KEYS or not isinstance(state["core"], dict):
        raise VaultCorrupt("the vault's state has unexpected fields: restore a backup")
    counts = state["counts"]
    if not isinstance(counts, dict) or set(counts) != set(KINDS):
        raise VaultCorrupt("the vault's record counts are malformed: restore a backup")
    for count in (*counts.values(), state["seals"]):
        if not is_int(count) or not 0 <= count <= SEQ_MAX:
            raise VaultCorrupt("the vault's record counts are out of range: restore a backup")
    return state


def seal_record(
    data_key: bytes, store_id: bytes, kind: int, seq: int, epoch: int, ref: bytes | None, plaintext: bytes
) -> SealedRow:
    assert 1 <= seq <= SEQ_MAX and kind in KINDS.values()
    nonce = secrets.token_bytes(NONCE_SIZE)
    aad = _record_aad(store_id, kind, seq, epoch, ref)
    return SealedRow(epoch, nonce, AESGCM(data_key).encrypt(nonce, plaintext, aad))


def open_record(
    data_keys: dict[int, bytes], store_id: bytes, kind: int, seq: int, row: SealedRow, ref: bytes | None
) -> dict:
    if ref is not None and (not isinstance(ref, bytes) or len(ref) != REF_SIZE):
        raise VaultCorrupt(
            f"the vault's record {seq} has a malformed ref: the file is damaged; restore a backup"
        )
    aad = _record_aad(store_id, kind, seq, row.epoch, ref)
    return decode_document(_open(data_keys, row, aad, f"record {seq}"))


def _open(data_keys: dict[int, bytes], row: SealedRow, aad: bytes, what: str) -> bytes:
    data_key = data_keys.get(row.epoch) if is_int(row.epoch) else None
    if data_key is None or not isinstance(row.nonce, bytes) or len(row.nonce) != NONCE_SIZE:
        raise VaultCorrupt(f"the vault's {what} names no known key: the file is damaged; restore a backup")
    if not isinstance(row.sealed, bytes) or len(row.sealed) > max(RECORD_MAX_BYTES, CORE_MAX_BYTES) + 16:
        raise VaultCorrupt(f"the vault's {what} is malformed: the file is damaged; restore a backup")
    try:
        return AESGCM(data_key).decrypt(row.nonce, row.sealed, aad)
    except InvalidTag:
        raise VaultCorrupt(
            f"the vault's {what} was damaged, moved or tampered with: restore a backup"
        ) from None


# --- the SQLite file ------------------------------------------------------------------------------


def connect(path, *, create: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, fsync on commit."""
    try:
        if create:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        else:
            # quote() is what urllib.request.pathname2url does on POSIX, without importing the HTTP
            # stack that module loads (tens of milliseconds of every command's start-up).
            conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error as error:
        raise VaultError(f"cannot open the vault database at {path}: {error}") from None
    try:
        if create:
            # Set before the first table: a ~2.4 KB receipt shares a 16 KiB page with others instead
            # of spilling into a half-empty overflow page of its own (measured: 5.2 -> ~3.3 KB a payment).
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE_BYTES}")
        _set_pragmas(conn)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as error:
        # A damaged schema can make SQLite quote bytes that are not UTF-8 in its error message.
        conn.close()
        reason = type(error).__name__ if isinstance(error, UnicodeDecodeError) else str(error)
        raise VaultCorrupt(f"the vault database is damaged ({reason}): restore a backup") from None
    return conn


def _set_pragmas(conn: sqlite3.Connection) -> None:
    for pragma in (
        "PRAGMA trusted_schema = OFF",  # a planted schema runs no function (check_schema refuses it)
        "PRAGMA journal_mode = WAL",  # a commit is one append + fsync, not a rewrite
        "PRAGMA synchronous = FULL",  # an acknowledged save survives power loss
        "PRAGMA secure_delete = ON",  # a replaced state (old wrapped keys) does not linger in free pages
        "PRAGMA cell_size_check = ON",
    ):
        conn.execute(pragma)


def create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        conn.execute(statement)


def check_schema(conn: sqlite3.Connection) -> None:
    """Exactly our tables and index, nothing else (no trigger, no view): else VaultCorrupt."""
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        raise VaultCorrupt("the vault database is damaged (unreadable schema): restore a backup") from None
    ours = [(name, sql) for _kind, name, sql in rows if not name.startswith("sqlite_autoindex")]
    if {name for name, _ in ours} != SCHEMA_NAMES or {sql for _, sql in ours} != set(SCHEMA):
        raise VaultCorrupt(
            "the vault database has unexpected tables, indexes or triggers: "
            "it was not written by this program"
        )
