"""`wallet operator bind-key|reject-key`: an operator decides a lost card's new key with signed requests.

The same decisions as `center operator bind-key|reject-key` (center.keys.binding),
for an operator who has a token key but not the center's data directory. Each
is a signed `operator_action` delivered through the outbox, like
`wallet operator revoke-key` (token_wallet.cli.operator, whose group this joins).
"""

from __future__ import annotations

from typing import Annotated

import typer

from hostkit.cli import CliError
from paywire.messages import KID_PATTERN, MAX_REASON_CHARS, OPERATOR_ACTION
from token_wallet.cli.common import (
    CardTimeout,
    Home,
    JsonFlag,
    PasswordAFd,
    PasswordAFile,
    PasswordBFd,
    PasswordBFile,
    open_wallet,
    operator_app,
    print_outcome,
    read_password_a,
    require_operator_wallet,
    sign_and_deliver,
)
from tokens import DEFAULT_CARD_TIMEOUT_S

Kid = Annotated[
    str, typer.Argument(help="The new key's id (64 hex digits), as `center operator list-keys` shows")
]


@operator_app.command("bind-key")
def bind_key(
    kid: Kid,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Bind a pending key to the account it claims; the account's lost key must be revoked first (operators only)."""  # noqa: E501  (the --help line)
    _check_kid(kid)
    with open_wallet(home, read_password_a(password_a_file, password_a_fd)) as wallet:
        require_operator_wallet(wallet)
        outcome = sign_and_deliver(
            wallet,
            OPERATOR_ACTION,
            {"action": "bind_key", "args": {"kid": kid}},
            password_b_file,
            password_b_fd,
            card_timeout_s,
        )
    print_outcome(
        as_json,
        outcome,
        lambda r: (
            f"key {r['kid'][:16]}... {'was already' if r['repeated'] else 'is now'} bound to {r['member_id']}"
        ),
    )


@operator_app.command("reject-key")
def reject_key(
    kid: Kid,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "identity not confirmed",
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Reject a pending key's claim to an account: it can then sign nothing (operators only)."""
    _check_kid(kid)
    if not reason.strip() or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise CliError(f"--reason must be 1 to {MAX_REASON_CHARS} printable characters")
    with open_wallet(home, read_password_a(password_a_file, password_a_fd)) as wallet:
        require_operator_wallet(wallet)
        outcome = sign_and_deliver(
            wallet,
            OPERATOR_ACTION,
            {"action": "reject_key", "args": {"kid": kid, "reason": reason}},
            password_b_file,
            password_b_fd,
            card_timeout_s,
        )
    print_outcome(
        as_json,
        outcome,
        lambda r: (
            f"key {r['kid'][:16]}... "
            f"{'was already' if r['repeated'] else 'is now'} rejected for {r['member_id']}"
        ),
    )


def _check_kid(kid: str) -> None:
    if not KID_PATTERN.fullmatch(kid):
        raise CliError(
            "KID must be a key id: 64 lower-case hex digits (as `center operator list-keys` shows)"
        )
