"""`wallet`: the member's and store's command line, assembled from one module per command group.

A run imports only the modules of the command it runs (token_wallet.cli.command_index says which):
each registers its commands on `app` (token_wallet.cli.command_index) when imported. `wallet --help`
lists every command from the index without importing any, in the index's order. A new command is
one more entry there and its module. No module imports this one.

`wallet --version` is answered before Typer is imported: it needs only the package metadata.
"""

from __future__ import annotations

import importlib
import sys

DISTRIBUTION = "tokenpay"  # pyproject.toml [project] name


def wallet_version() -> str:
    # Imported here: importlib.metadata costs tens of milliseconds, and only --version needs it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def assembled_app(modules: tuple[str, ...] | None = None):
    """The Typer app with the commands of `modules` (every command when None) registered."""
    import typer

    from token_wallet.cli.command_index import COMMANDS, MODULE_PACKAGE, app

    if modules is None:
        modules = tuple(dict.fromkeys(module for _, owners in COMMANDS.values() for module in owners))
    for module in modules:
        importlib.import_module(f"{MODULE_PACKAGE}.{module}")

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

    return app


def user_errors() -> tuple[type[BaseException], ...]:
    """What a command may raise that is the user's to act on: one line on stderr, no traceback.
    Asked only when something was raised, so that a run imports only the modules it uses."""
    from paywire.errors import WireError
    from token_wallet.document import WalletError
    from token_wallet.vault import VaultError
    from tokens.base import TokenError

    return (VaultError, TokenError, WalletError, WireError, OSError)


def main() -> None:
    if sys.argv[1:] == ["--version"]:  # the common case, answered without loading the commands
        print(f"wallet {wallet_version()}")
        return
    from hostkit.cli import run_cli
    from token_wallet.cli.command_index import modules_for

    run_cli(assembled_app(modules_for(sys.argv[1:])), user_errors)
