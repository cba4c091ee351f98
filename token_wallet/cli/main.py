"""`wallet`: the member's and store's command line, assembled from one module per command group.

Each module below registers its commands on `app` (token_wallet.cli.common) when imported; the
order of the imports is the order of `wallet --help` (groups such as `card` and `operator` come
after the plain commands whatever their place). A new command group is one more import here.
No module imports this one.
"""

from __future__ import annotations

from hostkit.cli import run_cli
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

# What a command may raise that is the user's to act on: one line on stderr, no traceback.
USER_ERRORS = (VaultError, TokenError, WalletError, WireError, OSError)


def main() -> None:
    run_cli(app, USER_ERRORS)
