"""The wallet's side of `account_info`: what the answer means for this wallet's key.

The center answers which account the key belongs to and the highest counter it has accepted from
the key (center.pipeline.account_info); token_wallet.answer_checks checks the echoed facts. Here:
the highest counter against this wallet's own. This wallet signs every counter of its key in
order, so the center can never have seen one above the last this wallet used. If it has, the key
signed something this wallet did not: an older copy of the vault was put back (its counter is
behind), or the key is used elsewhere. Either way the wallet raises an alarm, and forgets the
known balance (the key may have paid).

Two shapes of the same alarm: an accepted query whose highest counter is above the wallet's
(`counter_alarm`), and a query refused with `counter_replayed` (`record_replayed_alarm`): the
wallet's next counter was already used, so the center refused the query itself.
"""

from __future__ import annotations

from typing import Protocol

from paywire.messages import ACCOUNT_INFO
from token_wallet.document import add_history

# What a counter this wallet never used, seen by the center, may mean, and what to do then.
KEY_MISUSE_CAUSES = "an older copy of the vault restored, or the key used elsewhere"
KEY_MISUSE_ADVICE = "check `wallet balance`, and contact the center to revoke the key if you did not do this"
ALARM_OUTCOME = "alarm: the key signed messages this wallet did not"
REPLAYED = "counter_replayed"


class RecordingWallet(Protocol):
    """What recording an answer needs of token_wallet.wallet.Wallet: its vault document."""

    doc: dict


def counter_alarm(highest_counter: int, wallet_counter: int) -> str | None:
    """The alarm when the center has seen a counter above the last this wallet signed, else None."""
    if highest_counter <= wallet_counter:
        return None
    return (
        f"ALARM: the center has seen counter {highest_counter} from this key, but this wallet has "
        f"signed only up to {wallet_counter}: the key signed messages this wallet did not "
        f"({KEY_MISUSE_CAUSES}); {KEY_MISUSE_ADVICE}"
    )


def was_replayed(new_history: list[dict]) -> bool:
    """Whether one of these new history entries is an account_info query refused as counter_replayed."""
    return any(
        entry["type"] == ACCOUNT_INFO and entry["details"].get("code") == REPLAYED for entry in new_history
    )


def moved_past_note(old_counter: int, highest_counter: int, new_counter: int) -> str:
    """What the wallet says after moving its counter past the center's highest."""
    return (
        f"this wallet's counter was {old_counter}, the center had seen up to {highest_counter} from "
        f"this key: the wallet now signs from {new_counter + 1} on, so it is heard again"
    )


def record_replayed_alarm(doc: dict, new_history: list[dict]) -> str | None:
    """The alarm when the center refused an account_info query (one of `new_history`, the entries
    its delivery added to `doc`) because its counter was used before: kept in the history (the
    caller saves the vault). None when no such refusal is there."""
    for entry in new_history:
        if was_replayed([entry]):
            alarm = (
                f"ALARM: the center refused this query's counter {doc['counter']} as used before "
                "or far below the highest it has seen from this key: the key signed messages this "
                f"wallet did not ({KEY_MISUSE_CAUSES}); {KEY_MISUSE_ADVICE}"
            )
            _record_alarm(doc, entry["msg_id"], {"code": REPLAYED, "message": alarm})
            return alarm
    return None


def record_account_info(wallet: RecordingWallet, entry: dict, result: dict, _extras: list) -> None:
    """Record an accepted answer (token_wallet.wallet's record table); an alarm is kept in the history."""
    doc = wallet.doc
    alarm = counter_alarm(result["highest_counter"], doc["counter"])
    if alarm is None:
        add_history(doc, ACCOUNT_INFO, entry["msg_id"], "accepted", result)
        return
    _record_alarm(doc, entry["msg_id"], result | {"wallet_counter": doc["counter"], "alarm": alarm})
    # Counters this wallet never signed are used: its next ones may be too. Past them, it is heard.
    doc["counter"] = result["highest_counter"]


def _record_alarm(doc: dict, msg_id: str, details: dict) -> None:
    """Keep an alarm in the history, with the wallet's counter (last unless `details` has it)."""
    doc["balance_minor"] = None  # the key may have paid: resync with `wallet balance`
    add_history(doc, ACCOUNT_INFO, msg_id, ALARM_OUTCOME, {**details, "wallet_counter": doc["counter"]})
