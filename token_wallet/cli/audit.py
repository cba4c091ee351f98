"""`wallet audit check`: prove that the center's log still holds every receipt this wallet kept,
and that the log it shows now extends every tree head this wallet has seen (token_wallet.log_audit).

Each proof is fetched with a log query signed by the wallet's token key (password B), like the
balance query, but never audited and using no counter. Exit 0 when everything holds; 1 with the
first problem on one line (also kept in the history), or when the center cannot be asked.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from hostkit.cli import CliError, emit
from token_wallet.cli.command_index import PlainHelpGroup, app
from token_wallet.cli.common import (
    CardTimeout,
    Home,
    JsonFlag,
    PasswordAFd,
    PasswordAFile,
    PasswordBFd,
    PasswordBFile,
    Signing,
    with_pin_message,
)
from token_wallet.log_audit import MAX_QUERIES_PER_RUN, LogAudit, signed_fetch
from tokens import DEFAULT_CARD_TIMEOUT_S

audit_app = typer.Typer(
    cls=PlainHelpGroup,
    help="Check the center's verifiable log against this wallet's receipts",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as the app's (token_wallet.cli.command_index)
)
app.add_typer(audit_app, name="audit")


@audit_app.command("check")
def audit_check(
    home: Home = None,
    as_json: JsonFlag = False,
    max_queries: Annotated[
        int,
        typer.Option(
            "--max-queries",
            min=3,
            max=10_000,
            help="At most this many signed log queries (proofs) this run; the rest waits for the next",
        ),
    ] = MAX_QUERIES_PER_RUN,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Check that the center's log holds every receipt kept here and never rewrote or forked."""
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    with signing.open_wallet() as wallet:
        wallet.require_enrolled()
        token, pin = signing.token_and_pin(wallet)
        with wallet.client() as client:
            audit = LogAudit(
                wallet.doc,
                signed_fetch(wallet.doc, token, pin, client, lambda: int(time.time())),
                center_key=wallet.center_key(),
                max_queries=max_queries,
            )
            report = with_pin_message(audit.run, token)
        wallet.vault.save()
    if report.ok or as_json:  # a problem is the one error line on stderr otherwise
        emit(as_json, report.to_json(), lambda out: out.print(report.summary()))
    if not report.ok:
        raise CliError(report.problem)
