"""`center`: the settlement center's command line, assembled from one module per command group.

This module only puts the groups together (the order here is the order `center --help` lists them)
and holds the entry point; every command lives in its group's module over center.cli.common.
"""

from __future__ import annotations

import typer

from center.cli import backup, issuer, keys, ledger, operators, server, topups
from hostkit.cli import run_cli
from tokens.base import TokenError

app = typer.Typer(
    help="tokenpay settlement center",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
operator_app = typer.Typer(help="Operator actions on this center's data directory", no_args_is_help=True)

# A group added without a name lends its commands to the parent: `center init`, `center operator add`.
app.add_typer(server.app)  # init, serve, migrate
app.add_typer(backup.app)  # backup, restore, join
app.add_typer(operator_app, name="operator")
operator_app.add_typer(topups.app)  # confirm-topup, decline-topup
operator_app.add_typer(operators.app)  # add, list, access-log, list-stores, clear-store
operator_app.add_typer(keys.app)  # revoke-key, bind-key, reject-key, issue-recovery-ticket, list-keys
app.add_typer(ledger.ledger_app, name="ledger")
app.add_typer(ledger.audit_app, name="audit")
app.add_typer(ledger.payouts_app, name="payouts")
app.add_typer(issuer.app, name="issuer")
app.add_typer(backup.backup_key_app, name="backup-key")


def user_errors() -> tuple[type[BaseException], ...]:
    # Imported here, not at the top: SQLAlchemy costs ~0.2 s that `center --help` does not need.
    from sqlalchemy.exc import OperationalError

    return (TokenError, OperationalError, FileNotFoundError, PermissionError)


def main() -> None:
    run_cli(app, user_errors)
