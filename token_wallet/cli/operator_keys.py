"""`wallet operator bind-key|reject-key`: an operator decides a lost card's new key with signed requests.

The same decisions as `center operator bind-key|reject-key` (center.keys.binding),
for an operator who has a token key but not the center's data directory. Each
is a signed `operator_action` delivered through the outbox, like
`wallet operator revoke-key` (token_wallet.cli.operator, whose group this joins).
"""

from __future__ import annotations

from typing import Annotated

import typer

from token_wallet.cli.command_index import operator_app
from token_wallet.cli.common import (
    CardTimeout,
    Home,
    JsonFlag,
    PasswordAFd,
    PasswordAFile,
    PasswordBFd,
    PasswordBFile,
    Signing,
    check_kid,
    check_reason,
    send_operator_action,
)
from tokens import DEFAULT_CARD_TIMEOUT_S

KID_SHOWN_BY = "`center operator list-keys`"
Kid = Annotated[str, typer.Argument(help=f"The new key's id (64 hex digits), as {KID_SHOWN_BY} shows")]


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
    check_kid(kid, KID_SHOWN_BY)
    send_operator_action(
        Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s),
        as_json,
        "bind_key",
        {"kid": kid},
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
    check_kid(kid, KID_SHOWN_BY)
    check_reason(reason)
    send_operator_action(
        Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s),
        as_json,
        "reject_key",
        {"kid": kid, "reason": reason},
        lambda r: (
            f"key {r['kid'][:16]}... "
            f"{'was already' if r['repeated'] else 'is now'} rejected for {r['member_id']}"
        ),
    )
