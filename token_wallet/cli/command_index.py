"""Every `wallet` command and group: its one-line help and the modules that define it; and the Typer
app (with its groups) those modules register their commands on.

`wallet COMMAND` imports only COMMAND's modules (token_wallet.cli.main): the other command modules
and what they load (the token, HTTP, tables) are most of a full start-up, and issue 16 gives a
command ~150 ms of its own. `wallet --help` lists the commands from this index, so it loads none of
them. The one-line help is a copy of the first paragraph of each command's docstring (or its
group's help); tests/test_wallet_startup.py holds the copies, the order and the modules equal to
the commands the modules really define. Help is Click's plain help, not Typer's Rich panels: those
load ~85 ms of modules (Markdown, Pygments) on every `--help`.
"""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup

# In `wallet --help` order: the plain commands, then the groups.
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "readers": ("List PC/SC readers and whether a card is in each.", ("card",)),
    "init": (
        "Generate the signing key on the token or card and create the password-A vault.",
        ("wallet_home",),
    ),
    "enroll": (
        "Register with the center: a registration signed by the token key, sent over pinned TLS.",
        ("wallet_home",),
    ),
    "sync": ("Deliver signed messages waiting in the outbox (needs password A only).", ("wallet_home",)),
    "history": (
        "Show the history a page at a time, and the waiting messages (password A only; no key use).",
        ("wallet_home",),
    ),
    "status": ("Show the token, key id, algorithm, member id and PIN state.", ("wallet_home",)),
    "export-public-key": (
        "Print the token key's public key (PEM), for an operator account or an issuer certificate.",
        ("wallet_home",),
    ),
    "change-password-a": ("Re-encrypt the vault under a new password A.", ("wallet_home",)),
    "change-password-b": ("Change the token PIN (password B).", ("wallet_home",)),
    "rotate-key": (
        "Replace the signing key by a new one: one message signed by both keys; account, balance and "
        "history stay.",
        ("keys",),
    ),
    "replace-key": (
        "After a lost card: a key on a new token becomes this wallet's key "
        "(password B: the NEW token's PIN).",
        ("keys",),
    ),
    "topup": ("Ask to load prepaid value; it is credited once the funding is confirmed.", ("money",)),
    "pay": ("Pay a store from the prepaid balance with a payment signed on the token.", ("money",)),
    "balance": ("Ask the center for the balance (a signed query), or show the last known one.", ("money",)),
    "notices": (
        "Fetch the store's new payment notices, each checked against the center's signature.",
        ("money",),
    ),
    "payout": ("Claim the store's whole balance as a payout to its bank account.", ("money",)),
    "refund": ("Return money of a payment to the buyer (stores only; never more than was paid).", ("money",)),
    "account-info": (
        "Ask the center which account this key belongs to and the highest counter it has seen from it.",
        ("account_info",),
    ),
    "console-login": (
        "Log the browser showing CHALLENGE in to the operator console, with a signature from this token.",
        ("operator",),
    ),
    "card": ("OpenPGP smartcard: status and PIN unblocking", ("card",)),
    "operator": ("Operator actions, each signed with this wallet's token key", ("operator", "operator_keys")),
    "audit": ("Check the center's verifiable log against this wallet's receipts", ("audit",)),
}
MODULE_PACKAGE = "token_wallet.cli"


def modules_for(argv: list[str]) -> tuple[str, ...]:
    """The modules to import for a command line: those of its command, the first word that is not an
    option (`wallet` itself takes only --version and --help, which have no value); none for
    `wallet`, `wallet --help` or an unknown word (which Typer then refuses, naming the commands)."""
    for word in argv:
        if not word.startswith("-"):
            return COMMANDS.get(word, ("", ()))[1]
    return ()


class PlainHelpGroup(TyperGroup):
    """A command group whose help lists each command with its whole one-line help, wrapped, where
    Click would cut it at the column width with "..."."""

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, (command.short_help or command.help or "").split("\n\n")[0]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class IndexedGroup(PlainHelpGroup):
    """The `wallet` group: lists every command of COMMANDS in its order, loaded or not. A command
    whose module was not imported (not the one being run) is shown by its index entry."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in COMMANDS:
            return command
        return TyperCommand(cmd_name, help=COMMANDS[cmd_name][0], callback=_not_loaded)


def _not_loaded() -> None:
    # main imports the modules of the command it runs, so only help ever reaches an index entry.
    raise AssertionError("a wallet command ran without its module being imported")


# The app every command module registers on, and its groups (added here so that their place in
# `wallet --help` is fixed: after the commands).
app = typer.Typer(
    cls=IndexedGroup,  # lists every command, also those whose module this run did not import
    help="tokenpay wallet: pay with a key that lives on your token",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Typer's Rich help loads ~85 ms of modules (markdown, pygments)
    add_completion=False,
)
# The command groups, added here so that their place in `wallet --help` is fixed (after the commands).
card_app = typer.Typer(
    cls=PlainHelpGroup,
    help="OpenPGP smartcard: status and PIN unblocking",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(card_app, name="card")
operator_app = typer.Typer(
    cls=PlainHelpGroup,
    help="Operator actions, each signed with this wallet's token key",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(operator_app, name="operator")
