"""Who may read a private directory: the owner only. One rule for the wallet home and the center's
data directory (center.files walks the latter with it).

A directory holding keys, PINs or personal data is 0700 and every file in it 0600. Commands that
create such a directory tighten whatever was there before; commands that open one refuse it, in one
line naming the path and the chmod that fixes it, while group or others have any access (a copy of
the vault can be attacked offline; the center's database names people and their bank accounts).
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from token_wallet.cliutil import CliError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Any permission bit for group or others: read, write or (for a directory) search.
OTHERS_BITS = 0o077


def access_problem(path: Path) -> str | None:
    """One line when group or others have access to `path` (not following a link); None when private or absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & OTHERS_BITS:
        return None
    mode = stat.S_IMODE(info.st_mode)
    wanted = PRIVATE_DIR_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
    return (f"{path} is open to other users (mode {mode:04o}): "
            f"run `chmod {wanted:o} {shlex.quote(str(path))}` and try again")


def make_private(path: Path) -> None:
    """0700 for a directory, 0600 for anything else; a symbolic link is left alone (never followed)."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return
    wanted = PRIVATE_DIR_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
    if stat.S_IMODE(info.st_mode) != wanted:
        os.chmod(path, wanted, follow_symlinks=False)


def check_wallet_home(home: Path, vault: Path) -> None:
    """Before a wallet command opens the vault: the home and the vault files are the owner's alone.

    Checks the home, the vault and its siblings (`.prev` holds the previous vault, `.lock` and
    `.tmp` are written beside it); CliError with the chmod that fixes the first problem.
    """
    for path in (home, *_vault_files(vault)):
        problem = access_problem(path)
        if problem is not None:
            raise CliError(f"refusing to open the wallet: {problem}")


def _vault_files(vault: Path) -> list[Path]:
    return [vault, *(vault.with_name(vault.name + suffix) for suffix in (".prev", ".lock", ".tmp"))]
