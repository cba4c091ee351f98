"""`wallet`: the member's and store's command line, assembled from one module per command group.

Each module imported in assembled_app registers its commands on `app` (token_wallet.cli.common)
when imported; the order of the imports is the order of `wallet --help` (groups such as `card` and
`operator` come after the plain commands whatever their place). A new command group is one more
import there. No module imports this one.

`wallet --version` is answered before any of them is imported: it needs only the package metadata,
not the cryptography, HTTP, Rich or token modules the commands load (a few hundred milliseconds).
"""

from __future__ import annotations

import sys

DISTRIBUTION = "tokenpay"  # pyproject.toml [project] name


def wallet_version() -> str:
    # Imported here: importlib.metadata costs tens of milliseconds, and only --version needs it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def assembled_app():
    """The Typer app with every command registered, and the errors that are the user's to act on."""
    import typer

    from paywire.errors import WireError
    from token_wallet.cli.common import app
    from token_wallet.document import WalletError
    from token_wallet.vault import VaultError
    from tokens.base import TokenError

    # isort: off
    from token_wallet.cli import card  # noqa: F401  readers, card status|unblock
    from token_wallet.cli import wallet_home  # noqa: F401  init, enroll, sync, history, status, ...
    from token_wallet.cli import keys  # noqa: F401  rotate-key, replace-key
    from token_wallet.cli import money  # noqa: F401  topup, pay, balance, notices, payout, refund
    from token_wallet.cli import account_info  # noqa: F401  account-info
    from token_wallet.cli import audit  # noqa: F401  audit check
    from token_wallet.cli import operator  # noqa: F401  console-login, operator attach|...|revoke-key
    from token_wallet.cli import operator_keys  # noqa: F401  operator bind-key|reject-key
    # isort: on

    def print_version(value: bool) -> None:
        if value:
            print(f"wallet {wallet_version()}")
            raise typer.Exit()

    @app.callback()
    def options(
        show_version: bool = typer.Option(
            False, "--version", metavar="", is_eager=True, callback=print_version, help="Print the version"
        ),
    ) -> None:
        """tokenpay wallet: pay with a key that lives on your token"""

    # What a command may raise that is the user's to act on: one line on stderr, no traceback.
    return app, (VaultError, TokenError, WalletError, WireError, OSError)


def main() -> None:
    if sys.argv[1:] == ["--version"]:  # the common case, answered without loading the commands
        print(f"wallet {wallet_version()}")
        return
    from hostkit.cli import run_cli

    app, user_errors = assembled_app()
    run_cli(app, user_errors)
