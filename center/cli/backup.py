"""`center backup`, `center restore`, `center join` and `center backup-key create` (center.ops.backup,
center.ops.restore, center.ops.join, center.ops.backup_signing).

The center's modules are imported inside the commands (center.cli.common says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from center.cli.common import DataDir, JsonFlag
from center.ops.backup_format import BackupError
from hostkit.cli import emit, read_secret

PASSWORD_ENV = "CENTER_BACKUP_PASSWORD_FILE"
SIGNING_KEY_ENV = "CENTER_BACKUP_SIGNING_KEY"
SIGNING_SECRET_ENV = "CENTER_BACKUP_SIGNING_KEY_PASSWORD_FILE"
PUBLIC_KEY_ENV = "CENTER_BACKUP_PUBLIC_KEY"

PasswordFile = Annotated[
    str | None,
    typer.Option(
        "--password-file",
        envvar=PASSWORD_ENV,
        help=f"File whose first line is the backup password (or ${PASSWORD_ENV})",
    ),
]

BackupPublicKey = Annotated[
    Path | None,
    typer.Option(
        "--backup-public-key",
        envvar=PUBLIC_KEY_ENV,
        help="Public key of the backup key (backup-signing-key.pub.pem): the archive must be signed by it",
    ),
]

app = typer.Typer()
backup_key_app = typer.Typer(
    help="The administrator's backup signing key (kept apart from the center)", no_args_is_help=True
)


@backup_key_app.command(
    "create",
    help=(
        "Create the backup signing key: a password-sealed key file, or a key on your own token; "
        "and its public key."
    ),
)
def backup_key_create(
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the key and its public key (not a center's)")
    ],
    key_type: Annotated[str, typer.Option("--key-type", help="ed25519 or p256")] = "ed25519",
    password_file: Annotated[
        str | None,
        typer.Option(
            "--password-file", help="Key file: file whose first line is its new password (else asked twice)"
        ),
    ] = None,
    pkcs11_module: Annotated[
        str | None,
        typer.Option(
            help="Make the key on your own PKCS#11 token instead of in a file: its module (default: SoftHSM)",
        ),
    ] = None,
    token_label: Annotated[
        str | None, typer.Option(help="Label of your token (selects the token mode)")
    ] = None,
    pin_file: Annotated[
        str | None, typer.Option(help="Token mode: file holding your token's user PIN")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    from center.ops.backup_signing import KEY_TYPES, create_key_file, create_token_key

    if key_type not in KEY_TYPES:
        raise BackupError(f"--key-type must be one of {', '.join(KEY_TYPES)}")
    if token_label is None:
        if pkcs11_module is not None or pin_file is not None:
            raise BackupError(
                "--pkcs11-module and --pin-file need --token-label (the token to make the key on)"
            )
        password = read_secret(what="password", file_option=password_file, env_var=None, confirm=True)
        summary = create_key_file(out, password, key_type)
    else:
        from center.ops.restore import choose_pkcs11_module

        module = choose_pkcs11_module(pkcs11_module)
        pin = read_secret(what="pin", file_option=pin_file, env_var=None)
        summary = create_token_key(out, module, token_label, pin, key_type)
    emit(
        as_json,
        summary,
        lambda console: console.print(
            f"backup signing key {summary['signing_key']} "
            f"({summary['key_type']}, key id {summary['key_id'][:16]}...)\n"
            f"  public key {summary['public_key']}: give it to `center restore --backup-public-key`\n"
            "  keep the key and its password away from the center and its backups",
            highlight=False,
        ),
    )


@app.command("backup")
def backup_command(
    file: Annotated[Path, typer.Argument(help="The archive to write (never overwritten)")],
    data_dir: DataDir,
    password_file: PasswordFile = None,
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Encrypt; ask for the password (no echo)")
    ] = False,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            envvar=SIGNING_KEY_ENV,
            help="The backup key (`center backup-key create`): key file or token reference",
        ),
    ] = None,
    signing_key_password_file: Annotated[
        str | None,
        typer.Option(
            "--signing-key-password-file",
            envvar=SIGNING_SECRET_ENV,
            help="File whose first line is the backup key's password (token: its PIN)",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write one signed archive with the center's files, token, secrets and a consistent database snapshot."""
    from center.ops.backup import create_backup
    from center.ops.backup_crypto import BackupCryptoError, check_new_password
    from center.ops.backup_signing import CREATE_HINT

    if signing_key is None:
        raise BackupError(f"every backup is signed and no --signing-key was given: {CREATE_HINT}")
    signing_secret = read_secret(
        what="signing key password", file_option=signing_key_password_file, env_var=None
    )
    password = None
    if password_file is not None or encrypt:
        password = read_secret(what="password", file_option=password_file, env_var=None, confirm=True)
        try:
            check_new_password(password)
        except BackupCryptoError as error:
            raise BackupError(str(error)) from None
    summary = create_backup(
        data_dir, file, password=password, signing_key=signing_key, signing_secret=signing_secret
    )
    emit(
        as_json,
        summary,
        lambda out: out.print(
            f"wrote {summary['file']}: {summary['bytes']} bytes, sha256 {summary['sha256']}\n"
            f"  center {summary['center_id']}, {summary['db_kind']} snapshot, {summary['members']} members, "
            f"{'encrypted' if summary['encrypted'] else 'not encrypted'}, mode 0600, "
            f"signed by backup key {summary['signed_by_key_id'][:16]}...\n"
            f"  {summary['warning']}",
            highlight=False,
        ),
    )


@app.command(
    "restore",
    help=(
        "Check a backup's signature, restore it into a new data directory, then run the ledger check and the "
        "audit\nverification."
    ),
)
def restore_command(
    file: Annotated[Path, typer.Argument(help="The archive `center backup` wrote")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The new data directory (absent or empty)")],
    db: Annotated[
        str | None,
        typer.Option("--db", help="PostgreSQL backups: URL of a new, empty database to restore into"),
    ] = None,
    password_file: PasswordFile = None,
    backup_public_key: BackupPublicKey = None,
    pkcs11_module: Annotated[
        str | None,
        typer.Option(
            help=(
                "Token module the restored center loads "
                "(default: this machine's SoftHSM; never the archive's)"
            ),
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    from center.ops.restore import restore_backup

    verifier, password = _verifier_and_password(file, backup_public_key, password_file)
    summary = restore_backup(
        file, data_dir, db_url=db, password=password, verifier=verifier, pkcs11_module=pkcs11_module
    )
    emit(as_json, summary, lambda out: out.print(_restore_text(summary), highlight=False))
    if not summary["ok"]:
        raise typer.Exit(code=1)


@app.command(
    "join",
    help=(
        "Make a second node of a running center: its config, certificate and token key from a signed "
        "backup,\non the center's live database (read, never written)."
    ),
)
def join_command(
    file: Annotated[Path, typer.Argument(help="An archive `center backup` wrote of the center to join")],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="The new node's data directory (absent or empty)")
    ],
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help=(
                "URL of the running center's live database (several PostgreSQL hosts: repeat ?host=); "
                "checked read-only, never migrated or written"
            ),
        ),
    ] = None,
    password_file: PasswordFile = None,
    backup_public_key: BackupPublicKey = None,
    pkcs11_module: Annotated[
        str | None,
        typer.Option(
            help="Token module the new node loads (default: this machine's SoftHSM; never the archive's)",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    from center.ops.join import join_center, require_db_url

    require_db_url(db)  # before the password prompt: nothing to ask for when the command cannot run
    verifier, password = _verifier_and_password(file, backup_public_key, password_file)
    summary = join_center(
        file, data_dir, db_url=db, password=password, verifier=verifier, pkcs11_module=pkcs11_module
    )
    emit(as_json, summary, lambda out: out.print(_join_text(summary), highlight=False))


def _verifier_and_password(file: Path, backup_public_key: Path | None, password_file: str | None):
    """What reading a backup needs: the backup key's verifier, and the password when it is encrypted."""
    from center.ops.backup_signing import load_verifier
    from center.ops.restore_archive import backup_is_encrypted

    if backup_public_key is None:
        raise BackupError(
            "give --backup-public-key FILE, the backup-signing-key.pub.pem of the key that "
            "signed the backup (nothing was written)"
        )
    verifier = load_verifier(backup_public_key)
    password = None
    if backup_is_encrypted(file):
        password = read_secret(what="password", file_option=password_file, env_var=None)
    return verifier, password


def _join_text(summary: dict) -> str:
    database = summary["database"]
    module_line = f"token module {summary['pkcs11_module']}"
    if summary["archive_pkcs11_module_ignored"] != summary["pkcs11_module"]:
        module_line += f" (the archive's {summary['archive_pkcs11_module_ignored']} is not used)"
    return (
        f"joined center {summary['center_id']} as a new node in {summary['data_dir']} (backup of "
        f"{summary['backup_created_at']}, signature OK, backup key {summary['signed_by_key_id'][:16]}...)\n"
        f"  database {summary['db']}: schema {database['schema_revision']}, {database['entries']} entries, "
        f"newest tree head (size {database['newest_tree_head_size']}) signed by this center; not written\n"
        f"  {module_line}\n"
        f"  start it with `center serve --data-dir {summary['data_dir']}`"
    )


def _restore_text(summary: dict) -> str:
    ledger, audit = summary["ledger"], summary["audit"]
    ledger_line = (
        f"ledger {'OK' if ledger['ok'] else 'BROKEN'}: {ledger['accounts']} accounts, "
        f"{ledger['transfers']} transfers, sum {ledger['total_minor']}"
        + "".join(f"\n    {problem}" for problem in ledger["problems"])
    )
    audit_line = (
        f"audit chain OK: {audit['entries']} entries"
        if audit["ok"]
        else f"audit chain BROKEN at entry {audit['first_bad_seq']}: {audit['problem']}"
    )
    module_line = f"token module {summary['pkcs11_module']}"
    if summary["archive_pkcs11_module_ignored"] != summary["pkcs11_module"]:
        module_line += f" (the archive's {summary['archive_pkcs11_module_ignored']} is not used)"
    return (
        f"restored center {summary['center_id']} (backup of {summary['backup_created_at']}, "
        f"signature OK, backup key {summary['signed_by_key_id'][:16]}...) into {summary['data_dir']}\n"
        f"  database {summary['db']}\n  {module_line}\n  {ledger_line}\n  {audit_line}"
    )
