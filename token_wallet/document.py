"""The vault document: its shape, its history, and which key signs (below Wallet and key_rotation).

token_wallet.wallet (signing, delivering, recording answers) and token_wallet.key_rotation
(replacing and rotating the key) both change the document; what both need lives here, so neither
imports the other back: the history, and the key fields a rotation's receipt or refusal changes.

Center fields (`center`): urls (the center's URLs, in the order tried: its nodes, issue 15), url (the
first of them, kept for readers that know one URL), cert_pem, center_id, receipt_spki, receipt_alg,
currency.

Key fields: token, key, kid, counter (the current key's); key_status ('new', 'pending_bind' or
'active'); pending_key (a rotation's new key, saved before anything is sent); previous_keys (kid,
algorithm, token, why and when retired, so the history can still name the key of an old entry).
"""

from __future__ import annotations

import time

from paywire.algorithms import key_id
from paywire.messages import PAY, ROTATE
from tokens.base import KeyRecord

DOCUMENT_VERSION = 1
MAX_PREVIOUS_KEYS = 100
KEY_STATES = ("new", "pending_bind", "active")
# A payment whose outcome the wallet could not confirm may still have been applied (answer_checks).
UNCONFIRMED_OUTCOMES = ("alarm", "expired")


class WalletError(Exception):
    """A refusal the user can act on (one line)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_document(token_doc: dict, key: KeyRecord) -> dict:
    return {
        "version": DOCUMENT_VERSION,
        "token": token_doc,
        "key": key.to_json(),
        "kid": key_id(key.spki_der),
        "counter": 0,
        "center": None,
        "member_id": None,
        "role": None,
        "balance_minor": None,
        "history": [],
        "receipts": [],
        "outbox": [],
        "topups": {},
        "notices": [],
        "notices_cursor": 0,
        "history_at_ms": 0,
        "credit_totals": {"paid_minor": 0, "refunded_minor": 0},
    }


def add_history(doc: dict, kind: str, ref: str, outcome: str, details: dict) -> None:
    """Append to the history (no cap short of the disk: token_wallet.vault stores records one by
    one). Times never go back, even if the clock does, so `wallet history --since` can bisect;
    the totals a balance check needs are kept as the history grows (`credit_totals`)."""
    at_ms = max(now_ms(), doc.get("history_at_ms") or 0)
    entry = {"at_ms": at_ms, "type": kind, "msg_id": ref, "outcome": outcome, "details": details}
    doc["history"].append(entry)
    doc["history_at_ms"] = at_ms
    totals = doc.get("credit_totals")
    if totals is not None:
        _count_credits(totals, entry)


def _count_credits(totals: dict, entry: dict) -> None:
    """What a member's history says may have left (payments, even unconfirmed ones) and come back
    (refunds received): the bound answer_checks puts on a balance the center states."""
    amount_minor = entry["details"].get("amount_minor", 0) if isinstance(entry["details"], dict) else 0
    if entry["type"] == PAY and (
        entry["outcome"] == "accepted" or entry["outcome"].startswith(UNCONFIRMED_OUTCOMES)
    ):
        totals["paid_minor"] += amount_minor
    elif entry["type"] == "refund_received":
        totals["refunded_minor"] += amount_minor


def center_urls(center: dict) -> list[str]:
    """The center's URLs in the order a request tries them."""
    return list(center.get("urls") or [center["url"]])


def set_center_urls(center: dict, urls: list[str]) -> None:
    """The one place the URL list changes: `url` stays its first entry."""
    center["urls"], center["url"] = list(urls), urls[0]


def upgrade_document(doc: dict) -> None:
    """Fields older vaults lack, made once here (saved with the next change).

    A vault written before the history was stored record by record keeps no running totals: count
    them once from the history (one read of it). A vault from before a center had several URLs holds
    one `url`: it becomes the list of one; a `url` no longer first in `urls` was moved by an older
    wallet (`sync --center`), which knew only that field: it wins.
    """
    center = doc.get("center")
    if center is not None and center.get("url") and (center.get("urls") or [None])[0] != center["url"]:
        set_center_urls(center, [center["url"]])
    if "credit_totals" not in doc:
        totals = {"paid_minor": 0, "refunded_minor": 0}
        last_ms = 0
        for entry in doc["history"]:
            _count_credits(totals, entry)
            last_ms = max(last_ms, entry.get("at_ms") or 0)
        doc["credit_totals"], doc["history_at_ms"] = totals, last_ms


# --- the key ----------------------------------------------------------------------------------


def key_state(doc: dict) -> str:
    """'new' (not at the center yet), 'pending_bind' (waiting for an operator) or 'active'."""
    state = doc.get("key_status")
    if state is None:  # vaults from before key lifecycle: enrolled means active
        state = "active" if doc["member_id"] else "new"
    assert state in KEY_STATES, state
    return state


def queued_rotation(doc: dict) -> dict | None:
    return next((entry for entry in doc["outbox"] if entry["type"] == ROTATE), None)


def discard_pending_key(doc: dict, reason: str) -> None:
    """The center refused the rotation (or the old key is lost): the new key is forgotten."""
    pending = doc.get("pending_key")
    if pending:
        add_history(doc, "key_rotation_abandoned", pending["kid"], "discarded", {"reason": reason})
        doc["pending_key"] = None


def switch_to_rotated_key(doc: dict, result: dict) -> None:
    """The center's verified receipt says the rotation is in: the new key is the wallet's key from now on."""
    pending = doc.get("pending_key")
    if not pending or result["new_kid"] != pending["kid"] or result["old_kid"] != doc["kid"]:
        raise WalletError(
            "the center's rotation receipt names keys this wallet does not expect; nothing changed"
        )
    retire_current_key(doc, "rotated")
    install_key(
        doc, pending["token"], KeyRecord.from_json(pending["key"]), counter=pending["counter"], state="active"
    )
    doc["pending_key"] = None


def retire_current_key(doc: dict, why: str) -> None:
    previous = doc.setdefault("previous_keys", [])
    if len(previous) >= MAX_PREVIOUS_KEYS:
        raise WalletError(
            f"this wallet has retired {MAX_PREVIOUS_KEYS} keys already: start a new wallet home"
        )
    previous.append(
        {
            "kid": doc["kid"],
            "algorithm": doc["key"]["algorithm"],
            "token": doc["token"],
            "retired": why,
            "retired_at_ms": now_ms(),
        }
    )


def install_key(doc: dict, token_doc: dict, key: KeyRecord, *, counter: int, state: str) -> None:
    doc["token"], doc["key"], doc["kid"] = token_doc, key.to_json(), key_id(key.spki_der)
    doc["counter"], doc["key_status"] = counter, state
