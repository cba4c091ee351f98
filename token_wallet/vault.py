"""The member's local vault: one encrypted file guarded by password A.

The vault holds a JSON document (key reference or wrapped key blob, public
key, member id, center URL and pinned certificate, history, receipts, outbox).
Password A alone opens it; password B (the token PIN) is enforced by the token
and never touches this file (DESIGN.md, "The two passwords on hardware").

File layout (all of it authenticated)::

    b"TPVAULT1" | header length (4 bytes, big-endian) | header | ciphertext+tag

The header is UTF-8 JSON with sorted keys and no spaces::

    {"check": b64, "generation": int,
     "kdf": {"alg": "argon2id", "m_kib": int, "p": int, "salt": b64, "t": int},
     "nonce": b64, "v": 1}

Argon2id turns password A and the salt into 64 bytes: the first 32 are the
AES-256-GCM key, the last 32 a subkey whose HMAC over a fixed label is stored
as ``check``. A check mismatch means "wrong password A"; a matching check with
a failing GCM tag means the file was damaged or tampered with. The AAD is the
magic, the length and the header bytes, so no header byte can change unnoticed.

Writes are atomic: the new file goes to ``<path>.tmp`` (fsynced), the current
file is hard-linked to ``<path>.prev`` (so a complete vault exists at every
instant), the tmp file replaces ``<path>`` and the directory is fsynced.
``open`` reads only ``<path>``; ``<path>.prev`` is the previous generation,
kept for manual recovery (rename it over ``<path>`` and open it with the
password A that was valid for that generation). ``change_password`` removes
it, because it would still open with the old password A.

Not covered: rolling the file back to an older, genuine generation (for
example copying ``.prev`` over it) cannot be detected from the file alone.
Python cannot wipe the derived key from memory; it lives as long as the Vault.

Concurrent processes: hold ``vault_lock(path)`` from ``open`` until ``save``.
``save`` also refuses to overwrite a file that changed since it was read
(``VaultConflict``), so a forgotten lock loses no update silently.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import pathlib
import secrets
import struct
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

# --- format constants -------------------------------------------------------

MAGIC = b"TPVAULT1"
FORMAT_VERSION = 1
KDF_ALG = "argon2id"
CHECK_LABEL = b"tokenpay-vault-check"

LENGTH_SIZE = 4
PREFIX_SIZE = len(MAGIC) + LENGTH_SIZE
SALT_SIZE = 16
NONCE_SIZE = 12
CHECK_SIZE = 16
TAG_SIZE = 16
AES_KEY_SIZE = 32
CHECK_KEY_SIZE = 32

# --- limits (every input from disk or caller is bounded) ---------------------

HEADER_MAX_BYTES = 4096
FILE_MAX_BYTES = 64 * 1024 * 1024
MEMORY_KIB_MIN = 19456
MEMORY_KIB_MAX = 1024 * 1024
ITERATIONS_MIN = 2
ITERATIONS_MAX = 16
LANES_MIN = 1
LANES_MAX = 16
# Random 96-bit nonces under one key are safe for 2**32 encryptions (NIST SP
# 800-38D); a generation count below that keeps every key far under the bound.
GENERATION_MAX = 2**32 - 1
# Long enough for any passphrase, short enough that hashing it costs nothing.
PASSWORD_MAX_BYTES = 1024
# Documents are records and lists of records; deeper nesting is a bug.
DOCUMENT_DEPTH_MAX = 64
LOCK_TIMEOUT_MAX_MS = 600_000
LOCK_POLL_MAX_MS = 50

FILE_MODE = 0o600
DIR_MODE = 0o700

HEADER_KEYS = frozenset({"check", "generation", "kdf", "nonce", "v"})
KDF_KEYS = frozenset({"alg", "m_kib", "p", "salt", "t"})

FAST_KDF_ENV = "TOKENPAY_FAST_KDF"


@dataclass(frozen=True)
class KdfParams:
    memory_kib: int
    iterations: int
    lanes: int


# ~250-350 ms on the 2-core machines here: slow enough to hurt guessing.
DEFAULT_KDF = KdfParams(memory_kib=131072, iterations=3, lanes=4)
# OWASP's Argon2id floor; files asking for less are refused as corrupt.
MINIMUM_KDF = KdfParams(memory_kib=MEMORY_KIB_MIN, iterations=ITERATIONS_MIN, lanes=LANES_MIN)


def kdf_params_from_env() -> KdfParams:
    """DEFAULT_KDF, or MINIMUM_KDF when TOKENPAY_FAST_KDF=1 (tests save time)."""
    return MINIMUM_KDF if os.environ.get(FAST_KDF_ENV) == "1" else DEFAULT_KDF


# --- errors -------------------------------------------------------------------


class VaultError(Exception):
    """Base class. str(e) is one line: what happened and what to do."""

    def __init__(self, message: str) -> None:
        assert isinstance(message, str)
        # One line keeps CLI output and logs readable (a path may hold a newline).
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class VaultNotFound(VaultError):
    pass


class WrongPasswordA(VaultError):
    pass


class VaultCorrupt(VaultError):
    pass


class VaultBusy(VaultError):
    pass


class VaultConflict(VaultError):
    """The file changed on disk after it was read; saving would lose that change."""


# --- small helpers -------------------------------------------------------------


def _sibling(path: pathlib.Path, suffix: str) -> pathlib.Path:
    return path.with_name(path.name + suffix)


def _is_int(value: object) -> bool:
    # bool is an int subclass; true/false in a header is never a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: object, size: int, name: str) -> bytes:
    if not isinstance(text, str):
        raise VaultCorrupt(f"vault header field {name} is not text: the file is damaged")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise VaultCorrupt(f"vault header field {name} is not base64: the file is damaged") from None
    # Exactly one encoding per value, so the header has no malleable bytes.
    if len(raw) != size or _b64encode(raw) != text:
        raise VaultCorrupt(
            f"vault header field {name} must be {size} bytes: the file is damaged or unsupported"
        )
    return raw


def _show(value: object) -> str:
    """A short repr of a value read from disk, for error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _reject_constant(name: str) -> object:
    raise ValueError("non-finite number")


def _encode_json(value: object, *, ascii_only: bool) -> bytes:
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only, allow_nan=False
    )
    return text.encode("utf-8")


def _password_bytes(password_a: str) -> bytes:
    if not isinstance(password_a, str):
        raise VaultError("password A must be text")
    # NFC so the same password typed on different systems gives the same bytes.
    raw = unicodedata.normalize("NFC", password_a).encode("utf-8", "strict")
    if len(raw) > PASSWORD_MAX_BYTES:
        raise VaultError(f"password A is longer than {PASSWORD_MAX_BYTES} bytes: choose a shorter one")
    return raw


def _kdf_problem(kdf: KdfParams) -> str | None:
    """Why these KDF parameters are out of limits, or None when they are fine."""
    bounds = (
        ("memory_kib", kdf.memory_kib, MEMORY_KIB_MIN, MEMORY_KIB_MAX),
        ("iterations", kdf.iterations, ITERATIONS_MIN, ITERATIONS_MAX),
        ("lanes", kdf.lanes, LANES_MIN, LANES_MAX),
    )
    for name, value, low, high in bounds:
        if not _is_int(value) or not low <= value <= high:
            return f"KDF {name}={_show(value)} is outside [{low}, {high}]"
    return None


# --- keys ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Keys:
    """Derived secrets, kept in memory so save() does not re-run Argon2id."""

    kdf: KdfParams
    salt: bytes = field(repr=False)
    aes_key: bytes = field(repr=False)
    check: bytes = field(repr=False)


def _derive_keys(password: bytes, kdf: KdfParams, salt: bytes) -> _Keys:
    assert _kdf_problem(kdf) is None, "KDF parameters are validated before deriving"
    assert len(salt) == SALT_SIZE
    okm = Argon2id(
        salt=salt,
        length=AES_KEY_SIZE + CHECK_KEY_SIZE,
        iterations=kdf.iterations,
        lanes=kdf.lanes,
        memory_cost=kdf.memory_kib,
    ).derive(password)
    aes_key, check_key = okm[:AES_KEY_SIZE], okm[AES_KEY_SIZE:]
    check = hmac.new(check_key, CHECK_LABEL, hashlib.sha256).digest()[:CHECK_SIZE]
    return _Keys(kdf=kdf, salt=salt, aes_key=aes_key, check=check)


# --- header --------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    generation: int
    check: bytes

    def to_json(self) -> dict:
        return {
            "check": _b64encode(self.check),
            "generation": self.generation,
            "kdf": {
                "alg": KDF_ALG,
                "m_kib": self.kdf.memory_kib,
                "p": self.kdf.lanes,
                "salt": _b64encode(self.salt),
                "t": self.kdf.iterations,
            },
            "nonce": _b64encode(self.nonce),
            "v": FORMAT_VERSION,
        }


def _parse_header_json(raw: bytes) -> dict:
    try:
        obj = json.loads(raw.decode("ascii"), parse_constant=_reject_constant, parse_float=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise VaultCorrupt("vault header is not valid JSON: the file is damaged") from None
    if not isinstance(obj, dict):
        raise VaultCorrupt("vault header is not a JSON object: the file is damaged")
    # Canonical form only: rules out duplicate keys, spaces and other variants.
    if _encode_json(obj, ascii_only=True) != raw:
        raise VaultCorrupt("vault header is not in canonical form: the file is damaged")
    return obj


def _check_version(obj: dict) -> None:
    version = obj.get("v")
    if version != FORMAT_VERSION or not _is_int(version):
        raise VaultCorrupt(
            f"vault format version {_show(version)} is not supported (expected {FORMAT_VERSION}): "
            "use a wallet release that wrote this file"
        )


def _parse_kdf(obj: object) -> tuple[KdfParams, bytes]:
    if not isinstance(obj, dict) or set(obj) != KDF_KEYS:
        raise VaultCorrupt("vault header kdf section has unexpected fields: the file is damaged")
    if obj["alg"] != KDF_ALG:
        raise VaultCorrupt(f"vault KDF {_show(obj['alg'])} is not supported (expected {KDF_ALG})")
    kdf = KdfParams(memory_kib=obj["m_kib"], iterations=obj["t"], lanes=obj["p"])
    problem = _kdf_problem(kdf)
    if problem is not None:
        raise VaultCorrupt(f"vault refused: {problem}; the file is damaged or was not written by this wallet")
    return kdf, _b64decode(obj["salt"], SALT_SIZE, "kdf.salt")


def _parse_header(raw: bytes) -> _Header:
    obj = _parse_header_json(raw)
    _check_version(obj)
    if set(obj) != HEADER_KEYS:
        raise VaultCorrupt("vault header has unexpected fields: the file is damaged")
    generation = obj["generation"]
    if not _is_int(generation) or not 1 <= generation <= GENERATION_MAX:
        raise VaultCorrupt(f"vault generation {_show(generation)} is out of range: the file is damaged")
    kdf, salt = _parse_kdf(obj["kdf"])
    return _Header(
        kdf=kdf,
        salt=salt,
        nonce=_b64decode(obj["nonce"], NONCE_SIZE, "nonce"),
        generation=generation,
        check=_b64decode(obj["check"], CHECK_SIZE, "check"),
    )


def _split_file(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(aad, header bytes, ciphertext) after checking magic and lengths."""
    if len(blob) < PREFIX_SIZE or blob[: len(MAGIC)] != MAGIC:
        raise VaultCorrupt("not a vault file (bad magic): check the path or restore a backup")
    (header_len,) = struct.unpack(">I", blob[len(MAGIC) : PREFIX_SIZE])
    if not 1 <= header_len <= HEADER_MAX_BYTES:
        raise VaultCorrupt(f"vault header length {header_len} is outside [1, {HEADER_MAX_BYTES}]: the file is damaged")
    body_start = PREFIX_SIZE + header_len
    if len(blob) < body_start + TAG_SIZE + 2:
        raise VaultCorrupt("vault file is truncated: restore it from <path>.prev or a backup")
    return blob[:body_start], blob[PREFIX_SIZE:body_start], blob[body_start:]


def _build_file(header: _Header, aes_key: bytes, document: bytes) -> tuple[bytes, bytes]:
    """(file bytes, header bytes) for one generation."""
    header_raw = _encode_json(header.to_json(), ascii_only=True)
    assert 1 <= len(header_raw) <= HEADER_MAX_BYTES
    aad = MAGIC + struct.pack(">I", len(header_raw)) + header_raw
    blob = aad + AESGCM(aes_key).encrypt(header.nonce, document, aad)
    if len(blob) > FILE_MAX_BYTES:
        raise VaultError(
            f"the vault document is too large ({len(blob)} bytes, limit {FILE_MAX_BYTES}): "
            "archive old history or receipts first (nothing was written)"
        )
    return blob, header_raw


# --- file system ---------------------------------------------------------------


def _read_vault_file(path: pathlib.Path) -> bytes:
    try:
        with open(path, "rb") as f:
            size_bytes = os.fstat(f.fileno()).st_size
            if size_bytes > FILE_MAX_BYTES:
                raise VaultCorrupt(
                    f"vault file is {size_bytes} bytes, over the {FILE_MAX_BYTES} limit: check the path"
                )
            # +1 catches a file that grew after fstat.
            blob = f.read(FILE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise VaultNotFound(f"no vault at {path}: create one first or check the path") from None
    except IsADirectoryError:
        raise VaultError(f"{path} is a directory, not a vault file: check the path") from None
    except PermissionError:
        raise VaultError(f"cannot read the vault at {path}: permission denied") from None
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
            (header_len,) = struct.unpack(">I", prefix[len(MAGIC) :])
            if header_len > HEADER_MAX_BYTES:
                return None
            return f.read(header_len)
    except OSError:
        return None


def _ensure_private_dir(directory: pathlib.Path) -> None:
    # mode applies to the leaf only; parents follow the umask like any mkdir -p.
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def _fsync_dir(directory: pathlib.Path) -> None:
    # Makes the rename itself durable, not only the file contents.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private_file(path: pathlib.Path, blob: bytes) -> None:
    """Write blob to a fresh 0600 file and fsync it."""
    path.unlink(missing_ok=True)  # a stale tmp from a crash; ours by naming convention
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask can only remove bits, but be explicit
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_previous(path: pathlib.Path) -> None:
    """Make <path>.prev the current file without ever leaving <path> missing."""
    prev = _sibling(path, ".prev")
    prev.unlink(missing_ok=True)
    try:
        os.link(path, prev)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # File systems without hard links: a copy serves recovery just as well.
        _write_private_file(prev, path.read_bytes())


def _install_new(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """Move tmp to path, failing if path exists (create never overwrites)."""
    try:
        os.link(tmp, path)  # atomic "create if absent"
    except FileExistsError:
        raise VaultError(f"a vault already exists at {path}: refusing to overwrite it") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if path.exists():
            raise VaultError(f"a vault already exists at {path}: refusing to overwrite it") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def _commit(path: pathlib.Path, blob: bytes, *, replace: bool) -> None:
    tmp = _sibling(path, ".tmp")
    try:
        _write_private_file(tmp, blob)
        if replace:
            _keep_previous(path)
            os.replace(tmp, path)
        else:
            _install_new(tmp, path)
        _fsync_dir(path.parent)
    except VaultError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = e.strerror or type(e).__name__
        raise VaultError(f"could not write the vault at {path}: {reason} (the previous file is unchanged)") from None


# --- the vault -----------------------------------------------------------------


def _check_plain_json(value: object, depth: int = 0) -> None:
    """Refuse what json.dumps would silently change (tuples, int keys) or choke on.

    Messages name types only: values may be secrets.
    """
    if depth > DOCUMENT_DEPTH_MAX:
        raise VaultError(f"the vault document nests deeper than {DOCUMENT_DEPTH_MAX} levels: nothing was written")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise VaultError(f"the vault document has a {type(key).__name__} key; keys must be str: nothing was written")
            _check_plain_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_plain_json(item, depth + 1)
    elif value is not None and not isinstance(value, (str, int, float)):
        raise VaultError(
            f"the vault document holds a {type(value).__name__}; only str, int, float, bool, None, "
            "list and dict fit: nothing was written"
        )


def _encode_document(data: object) -> bytes:
    if not isinstance(data, dict):
        raise VaultError("the vault document must be a JSON object (dict): nothing was written")
    _check_plain_json(data)
    try:
        return _encode_json(data, ascii_only=False)
    except (ValueError, UnicodeEncodeError):
        # NaN/infinity or lone surrogates; the exception text could quote secrets.
        raise VaultError(
            "the vault document holds NaN, infinity or invalid Unicode: nothing was written"
        ) from None


def _decode_document(plaintext: bytes) -> dict:
    try:
        data = json.loads(plaintext.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise VaultCorrupt("the vault decrypted but its document is not JSON: restore a backup") from None
    if not isinstance(data, dict):
        raise VaultCorrupt("the vault decrypted but its document is not a JSON object: restore a backup")
    return data


class Vault:
    """An opened vault: edit ``data`` in place, then ``save()``."""

    path: pathlib.Path
    data: dict
    generation: int

    def __init__(self, path: pathlib.Path, data: dict, generation: int, keys: _Keys, header_raw: bytes) -> None:
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

    @classmethod
    def create(cls, path, password_a: str, data: dict, *, kdf: KdfParams | None = None) -> "Vault":
        """Write a new vault (generation 1). Refuses to overwrite an existing file."""
        path = pathlib.Path(path)
        # Checked before the slow derivation; _install_new checks again atomically.
        if path.exists() or path.is_symlink():
            raise VaultError(f"a vault already exists at {path}: refusing to overwrite it")
        kdf = kdf_params_from_env() if kdf is None else kdf
        document = _encode_document(data)
        keys = _new_keys(password_a, kdf)
        _ensure_private_dir(path.parent)
        os.chmod(path.parent, DIR_MODE)  # a home that existed before (0755 from a plain mkdir) becomes private too
        vault = cls(path, data, 0, keys, b"")
        vault._write(document, replace=False)
        return vault

    @classmethod
    def open(cls, path, password_a: str) -> "Vault":
        """Decrypt ``path`` with password A. Reads only; never writes anything."""
        path = pathlib.Path(path)
        password = _password_bytes(password_a)
        aad, header_raw, ciphertext = _split_file(_read_vault_file(path))
        header = _parse_header(header_raw)
        keys = _derive_keys(password, header.kdf, header.salt)
        if not hmac.compare_digest(keys.check, header.check):
            raise WrongPasswordA("wrong password A: the vault was not opened (nothing changed)")
        try:
            plaintext = AESGCM(keys.aes_key).decrypt(header.nonce, ciphertext, aad)
        except InvalidTag:
            raise VaultCorrupt(
                "password A is right but the vault file was damaged or tampered with: "
                "restore it from <path>.prev or a backup"
            ) from None
        return cls(path, _decode_document(plaintext), header.generation, keys, header_raw)

    def save(self) -> None:
        """Re-encrypt ``data`` as the next generation with a fresh nonce."""
        self._check_unchanged_on_disk()
        self._write(_encode_document(self.data), replace=True)

    def change_password(self, new_password_a: str, *, kdf: KdfParams | None = None) -> None:
        """New salt and key from new_password_a; saves and removes <path>.prev.

        The .prev file is deleted because it still opens with the old password A,
        which may be the reason for the change. kdf=None uses kdf_params_from_env().
        """
        kdf = kdf_params_from_env() if kdf is None else kdf
        new_keys = _new_keys(new_password_a, kdf)
        self._check_unchanged_on_disk()
        document = _encode_document(self.data)
        old_keys = self._keys
        self._keys = new_keys
        try:
            self._write(document, replace=True)
        except BaseException:
            self._keys = old_keys  # the file still has the old password A
            raise
        _sibling(self.path, ".prev").unlink(missing_ok=True)
        _fsync_dir(self.path.parent)

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
        header = _Header(
            kdf=self._keys.kdf,
            salt=self._keys.salt,
            nonce=secrets.token_bytes(NONCE_SIZE),
            generation=generation,
            check=self._keys.check,
        )
        blob, header_raw = _build_file(header, self._keys.aes_key, document)
        _commit(self.path, blob, replace=replace)
        # Only after the file is in place does memory move to the new generation.
        self.generation = generation
        self._header_raw = header_raw


def _new_keys(password_a: str, kdf: KdfParams) -> _Keys:
    if not isinstance(kdf, KdfParams):
        raise VaultError("kdf must be a KdfParams")
    problem = _kdf_problem(kdf)
    if problem is not None:
        raise VaultError(f"{problem}: use DEFAULT_KDF or at least MINIMUM_KDF")
    password = _password_bytes(password_a)
    if not password:
        raise VaultError("password A must not be empty: choose a passphrase")
    return _derive_keys(password, kdf, secrets.token_bytes(SALT_SIZE))


# --- locking -------------------------------------------------------------------


@contextlib.contextmanager
def vault_lock(path, timeout_ms: int = 10_000) -> Iterator[None]:
    """Hold an exclusive flock on ``<path>.lock`` for open -> edit -> save.

    Waits up to timeout_ms, then raises VaultBusy. The lock file is never
    deleted (deleting it would let two processes lock different inodes).
    flock is per open file: nesting vault_lock on one path in one process
    waits for itself and ends in VaultBusy.
    """
    if not _is_int(timeout_ms) or not 0 <= timeout_ms <= LOCK_TIMEOUT_MAX_MS:
        raise VaultError(f"lock timeout_ms={_show(timeout_ms)} is outside [0, {LOCK_TIMEOUT_MAX_MS}]")
    lock_path = _sibling(pathlib.Path(path), ".lock")
    _ensure_private_dir(lock_path.parent)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        _acquire(fd, lock_path, timeout_ms)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, lock_path: pathlib.Path, timeout_ms: int) -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    poll_ms = 1
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise VaultBusy(
                f"the vault is in use by another process (lock {lock_path} held for over {timeout_ms} ms): "
                "wait for it to finish and retry"
            )
        time.sleep(min(poll_ms / 1000, remaining_s))
        poll_ms = min(poll_ms * 2, LOCK_POLL_MAX_MS)
