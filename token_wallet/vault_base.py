"""What both vault formats share: the errors, the file names beside a vault, password A's rules,
and the one encoding of a vault document (plain JSON, canonical bytes).

token_wallet.vault_v1 (the single-file format, read once to migrate) and token_wallet.vault (the
record store) both seal documents made of records and lists of records; the refusals are the
same, so they live here once.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Iterator

from hostkit.private_files import PRIVATE_DIR_MODE
from hostkit.sealing import (
    PASSWORD_MAX_BYTES,
    KdfParams,
    PasswordTooLong,
    SealingKeys,
    canonical_json,
    derive_new_keys,
    kdf_problem,
    password_bytes,
    reject_constant,
)

# Documents are records and lists of records; deeper nesting is a bug.
DOCUMENT_DEPTH_MAX = 64


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


def sibling(path: pathlib.Path, suffix: str) -> pathlib.Path:
    """<path><suffix>: the vault's journal, lock and backup files live beside it."""
    return path.with_name(path.name + suffix)


def ensure_private_dir(directory: pathlib.Path) -> None:
    # mode applies to the leaf only; parents follow the umask like any mkdir -p.
    directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


@contextlib.contextmanager
def reading_vault(path: pathlib.Path) -> Iterator[None]:
    """Reading a vault file: the OS's refusals as one-line VaultErrors naming the fix."""
    try:
        yield
    except FileNotFoundError:
        raise VaultNotFound(f"no vault at {path}: create one first or check the path") from None
    except IsADirectoryError:
        raise VaultError(f"{path} is a directory, not a vault file: check the path") from None
    except PermissionError:
        raise VaultError(f"cannot read the vault at {path}: permission denied") from None


def password_a_bytes(password_a: str) -> bytes:
    try:
        return password_bytes(password_a)
    except TypeError:
        raise VaultError("password A must be text") from None
    except PasswordTooLong:
        raise VaultError(
            f"password A is longer than {PASSWORD_MAX_BYTES} bytes: choose a shorter one"
        ) from None


def new_password_keys(password_a: str, kdf: KdfParams) -> SealingKeys:
    """Argon2id keys under a fresh salt for a new vault or a new password A (slow: the KDF runs)."""
    if not isinstance(kdf, KdfParams):
        raise VaultError("kdf must be a KdfParams")
    problem = kdf_problem(kdf)
    if problem is not None:
        raise VaultError(f"{problem}: use DEFAULT_KDF or at least MINIMUM_KDF")
    password = password_a_bytes(password_a)
    if not password:
        raise VaultError("password A must not be empty: choose a passphrase")
    return derive_new_keys(password, kdf)


# --- the document encoding ------------------------------------------------------------------


def check_plain_json(value: object, depth: int = 0) -> None:
    """Refuse what json.dumps would silently change (tuples, int keys) or choke on.

    Messages name types only: values may be secrets.
    """
    if depth > DOCUMENT_DEPTH_MAX:
        raise VaultError(
            f"the vault document nests deeper than {DOCUMENT_DEPTH_MAX} levels: nothing was written"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise VaultError(
                    f"the vault document has a {type(key).__name__} key; keys must be str: "
                    "nothing was written"
                )
            check_plain_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_plain_json(item, depth + 1)
    elif value is not None and not isinstance(value, (str, int, float)):
        raise VaultError(
            f"the vault document holds a {type(value).__name__}; only str, int, float, bool, None, "
            "list and dict fit: nothing was written"
        )


def encode_document(data: object, *, wrapper_levels: int = 0) -> bytes:
    """Canonical UTF-8 JSON of a dict (a whole v1 document, a v2 state or one record).

    wrapper_levels: how deep the caller's document sits inside ``data`` (the v2 state wraps the
    core one level down), so the depth limit is the same for every document whatever wraps it."""
    if not isinstance(data, dict):
        raise VaultError("the vault document must be a JSON object (dict): nothing was written")
    check_plain_json(data, -wrapper_levels)
    try:
        return canonical_json(data, ascii_only=False)
    except (ValueError, UnicodeEncodeError):
        # NaN/infinity or lone surrogates; the exception text could quote secrets.
        raise VaultError(
            "the vault document holds NaN, infinity or invalid Unicode: nothing was written"
        ) from None


def decode_document(plaintext: bytes) -> dict:
    try:
        data = json.loads(plaintext.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise VaultCorrupt("the vault decrypted but its document is not JSON: restore a backup") from None
    if not isinstance(data, dict):
        raise VaultCorrupt("the vault decrypted but its document is not a JSON object: restore a backup")
    return data
