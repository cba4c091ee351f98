"""`center backup` and `center restore` (center.backup, center.restore)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from center.cli import DataDir, JsonFlag, app
from token_wallet.cliutil import emit, read_secret

PASSWORD_ENV = "CENTER_BACKUP_PASSWORD_FILE"

PasswordFile = Annotated[Optional[str], typer.Option(
    "--password-file", envvar=PASSWORD_ENV,
    help=f"File whose first line is the backup password (or ${PASSWORD_ENV})")]


@app.command("backup")
def backup_command(
    file: Annotated[Path, typer.Argument(help="The archive to write (never overwritten)")],
    data_dir: DataDir,
    password_file: PasswordFile = None,
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Encrypt; ask for the password (no echo)")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write one archive with the center's files, token, secrets and a consistent database snapshot."""
    from center.backup import create_backup
    from center.backup_crypto import BackupCryptoError, check_new_password
    from center.backup_format import BackupError

    password = None
    if password_file is not None or encrypt:
        password = read_secret(what="password", file_option=password_file, env_var=None, confirm=True)
        try:
            check_new_password(password)
        except BackupCryptoError as error:
            raise BackupError(str(error)) from None
    summary = create_backup(data_dir, file, password=password)
    emit(as_json, summary, lambda out: out.print(
        f"wrote {summary['file']}: {summary['bytes']} bytes, sha256 {summary['sha256']}\n"
        f"  center {summary['center_id']}, {summary['db_kind']} snapshot, {summary['members']} members, "
        f"{'encrypted' if summary['encrypted'] else '[bold]not encrypted[/]'}, mode 0600\n"
        f"  {summary['warning']}", markup=True, highlight=False))


@app.command("restore")
def restore_command(
    file: Annotated[Path, typer.Argument(help="The archive `center backup` wrote")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The new data directory (absent or empty)")],
    db: Annotated[Optional[str], typer.Option(
        "--db", help="PostgreSQL backups: URL of a new, empty database to restore into")] = None,
    password_file: PasswordFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup into a new data directory, then run the ledger check and the audit verification."""
    from center.restore import backup_is_encrypted, restore_backup

    password = None
    if backup_is_encrypted(file):
        password = read_secret(what="password", file_option=password_file, env_var=None)
    summary = restore_backup(file, data_dir, db_url=db, password=password)
    emit(as_json, summary, lambda out: out.print(_restore_text(summary), highlight=False))
    if not summary["ok"]:
        raise typer.Exit(code=1)


def _restore_text(summary: dict) -> str:
    ledger, audit = summary["ledger"], summary["audit"]
    ledger_line = (f"ledger {'OK' if ledger['ok'] else 'BROKEN'}: {ledger['accounts']} accounts, "
                   f"{ledger['transfers']} transfers, sum {ledger['total_minor']}"
                   + "".join(f"\n    {problem}" for problem in ledger["problems"]))
    audit_line = (f"audit chain OK: {audit['entries']} entries" if audit["ok"]
                  else f"audit chain BROKEN at entry {audit['first_bad_seq']}: {audit['problem']}")
    return (f"restored center {summary['center_id']} (backup of {summary['backup_created_at']}) into "
            f"{summary['data_dir']}\n  database {summary['db']}\n  {ledger_line}\n  {audit_line}")
