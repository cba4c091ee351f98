"""The wallet home's rule: the home and the vault files are the owner's alone (hostkit.private_files)."""

from __future__ import annotations

from pathlib import Path

from hostkit.cli import CliError
from hostkit.private_files import access_problem
from token_wallet.vault import SIDE_FILE_SUFFIXES


def check_wallet_home(home: Path, vault: Path) -> None:
    """Before a wallet command opens the vault: the home and the vault files are the owner's alone.

    Checks the home, the vault and its siblings (the SQLite journal, the lock, a migration's `.v1`
    backup, `.prev` and `.tmp` of the first format); CliError with the chmod that fixes the first problem.
    """
    for path in (home, *_vault_files(vault)):
        problem = access_problem(path)
        if problem is not None:
            raise CliError(f"refusing to open the wallet: {problem}")


def _vault_files(vault: Path) -> list[Path]:
    return [
        vault,
        *(vault.with_name(vault.name + suffix) for suffix in (*SIDE_FILE_SUFFIXES, ".lock", ".prev", ".tmp")),
    ]
