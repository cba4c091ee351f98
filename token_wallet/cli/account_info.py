"""`wallet account-info`: ask the center (a signed query) which account this key belongs to, and
the highest counter it has seen from the key; alarm when that is above this wallet's own
(token_wallet.account_info)."""

from __future__ import annotations

from hostkit.cli import CliError, emit
from paywire.messages import ACCOUNT_INFO
from token_wallet.account_info import counter_alarm, record_replayed_alarm
from token_wallet.cli.common import (
    CardTimeout,
    Home,
    JsonFlag,
    PasswordAFd,
    PasswordAFile,
    PasswordBFd,
    PasswordBFile,
    Signing,
    app,
)
from token_wallet.wallet import Wallet
from tokens import DEFAULT_CARD_TIMEOUT_S

ACCOUNT_ROLES = ("member", "store")
# The answer's fields, one line each in the plain output, in this order.
FIELDS = ("party_id", "role", "key_status", "highest_counter")


@app.command("account-info")
def account_info(
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Ask the center which account this key belongs to and the highest counter it has seen from it."""
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    with signing.open_wallet() as wallet:
        wallet.require_enrolled()
        _refuse_operator_wallet(wallet)
        result = _ask(wallet, signing)
        wallet_counter = wallet.doc["counter"]
    alarm = counter_alarm(result["highest_counter"], wallet_counter)
    document = {field: result[field] for field in FIELDS} | {"wallet_counter": wallet_counter, "alarm": alarm}
    lines = "\n".join(f"{field}: {document[field]}" for field in FIELDS)
    emit(as_json, document, lambda out: out.print(lines))
    if alarm is not None:
        raise CliError(alarm)  # after the answer: exit 1, the alarm on stderr (and kept in the history)


def _refuse_operator_wallet(wallet: Wallet) -> None:
    if wallet.doc["role"] not in ACCOUNT_ROLES:
        raise CliError(
            f"this wallet's key belongs to an {wallet.doc['role']}, which has no member or store "
            "account: `wallet operator attach` asks the center which operator it is; "
            "nothing was signed"
        )


def _ask(wallet: Wallet, signing: Signing) -> dict:
    """Sign and deliver the query; its accepted result, or CliError (an alarm when its counter was used)."""
    history_before = len(wallet.doc["history"])
    try:
        state, result, _entry = signing.sign_and_deliver(wallet, ACCOUNT_INFO, {})
    except CliError:
        alarm = record_replayed_alarm(wallet.doc, wallet.doc["history"][history_before:])
        if alarm is not None:
            wallet.vault.save()
            raise CliError(alarm) from None
        raise
    if state != "delivered":
        raise CliError(
            "the center could not be reached; the query waits in the outbox: run `wallet sync` later"
        )
    return result
