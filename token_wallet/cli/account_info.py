"""`wallet account-info`: ask the center (a signed query) which account this key belongs to, and
the highest counter it has seen from the key; alarm when that is above this wallet's own
(token_wallet.account_info).

An older copy of the vault put back (or the key used elsewhere) leaves this wallet's counter
behind the center's, and every message it signs is refused as `counter_replayed`. After the alarm,
the query is signed again with the counter moved past the center's window, and once answered the
wallet's counter is set to the highest the center has seen: the wallet can sign again, and says
so. The alarm stands (exit 1): only the holder can tell whether the key was used by someone else."""

from __future__ import annotations

from hostkit.cli import CliError, emit
from paywire.messages import ACCOUNT_INFO, COUNTER_WINDOW
from token_wallet.account_info import counter_alarm, moved_past_note, record_replayed_alarm, was_replayed
from token_wallet.cli.command_index import app
from token_wallet.cli.common import (
    CardTimeout,
    Home,
    JsonFlag,
    PasswordAFd,
    PasswordAFile,
    PasswordBFd,
    PasswordBFile,
    Signing,
)
from token_wallet.wallet import Wallet
from tokens import DEFAULT_CARD_TIMEOUT_S

ACCOUNT_ROLES = ("member", "store")
# The answer's fields, one line each in the plain output, in this order.
FIELDS = ("party_id", "role", "key_status", "highest_counter")
# Each try skips a window of counters: 16 tries reach a key used 65,536 times elsewhere.
MAX_COUNTER_JUMPS = 16


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
        signed_counter = wallet.doc["counter"] + 1  # the query's own, unless it has to move past
        result, moved = _ask(wallet, signing)
        wallet_counter = wallet.doc["counter"]
    alarm = moved or counter_alarm(result["highest_counter"], signed_counter)
    if alarm is not None and moved is None:  # the answer moved the counter (record_account_info)
        alarm = f"{alarm}; {moved_past_note(signed_counter, result['highest_counter'], wallet_counter)}"
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


def _ask(wallet: Wallet, signing: Signing) -> tuple[dict, str | None]:
    """Sign and deliver the query: its accepted result and, when this wallet's counter was behind,
    the alarm and what was done about it; CliError otherwise."""
    history_before = len(wallet.doc["history"])
    try:
        result = _delivered(wallet, signing)
    except CliError:
        alarm = record_replayed_alarm(wallet.doc, wallet.doc["history"][history_before:])
        if alarm is None:
            raise
        wallet.vault.save()
        return _move_past(wallet, signing, alarm)
    return result, None


def _move_past(wallet: Wallet, signing: Signing, alarm: str) -> tuple[dict, str]:
    """Sign the query again above the center's window until it is heard (each try skips a window of
    counters), then take the highest counter the center has seen as this wallet's own."""
    old_counter = wallet.doc["counter"]
    for _ in range(MAX_COUNTER_JUMPS):
        wallet.doc["counter"] += COUNTER_WINDOW
        history_before = len(wallet.doc["history"])
        try:
            result = _delivered(wallet, signing)
        except CliError:
            if was_replayed(wallet.doc["history"][history_before:]):
                continue
            raise
        wallet.doc["counter"] = max(wallet.doc["counter"], result["highest_counter"])
        wallet.vault.save()
        note = moved_past_note(old_counter, result["highest_counter"], wallet.doc["counter"])
        return result, f"{alarm}; {note}"
    wallet.vault.save()
    raise CliError(f"{alarm}; moving past it failed after {MAX_COUNTER_JUMPS} tries: contact the center")


def _delivered(wallet: Wallet, signing: Signing) -> dict:
    state, result, _entry = signing.sign_and_deliver(wallet, ACCOUNT_INFO, {})
    if state != "delivered":
        raise CliError(
            "the center could not be reached; the query waits in the outbox: run `wallet sync` later"
        )
    return result
