"""Token backends behind one interface (base.Token), and how the vault finds them again."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tokens.base import PROTECTION_PROTECTED, KeyRecord, Token, TokenError, TokenInfo

DEFAULT_CARD_TIMEOUT_S = 60.0


# The module that drives each kind of token, imported only when a wallet opens such a token.
DRIVER_MODULES = {"pkcs11": "tokens.pkcs11_token", "openpgp-card": "tokens.openpgp_card"}


def load_driver(token_doc: dict):
    """The driver module of the token a vault names (python-pkcs11, or pyscard), imported, not opened
    (None for a kind this version does not know): lets a caller tell the import's time from the
    token's (hostkit.timing)."""
    module = DRIVER_MODULES.get(token_doc.get("kind"))
    return None if module is None else importlib.import_module(module)


def open_token(
    token_doc: dict,
    *,
    card_timeout_s: float = DEFAULT_CARD_TIMEOUT_S,
    on_wait: Callable[[str], None] | None = None,
) -> Token:
    """Open the token a vault names.

    {"kind": "pkcs11", "module", "label", "serial"} or
    {"kind": "openpgp-card", "reader", "serial"}: for a card, wait (bounded)
    until that very card is in a reader, telling the user through on_wait.
    """
    kind, driver = token_doc.get("kind"), load_driver(token_doc)
    if kind == "pkcs11":
        return driver.open_pkcs11_token(
            token_doc["module"], label=token_doc["label"], serial=token_doc.get("serial")
        )
    if kind == "openpgp-card":
        # By serial in any reader: the card may come back in another reader.
        serial = token_doc.get("serial")
        return driver.open_openpgp_card(
            None if serial else token_doc.get("reader"),
            timeout_s=card_timeout_s,
            on_wait=on_wait or (lambda _message: None),
            serial=serial,
        )
    raise TokenError(f"this wallet names a token of kind {kind!r}, which this version cannot open")


def pkcs11_token_doc(module: str, info: TokenInfo) -> dict:
    """What a vault keeps to find a PKCS#11 token again (read by open_token)."""
    return {"kind": "pkcs11", "module": module, "label": info.label, "serial": info.serial}


def card_token_doc(info: TokenInfo) -> dict:
    """What a vault keeps to find an OpenPGP card again (read by open_token)."""
    return {"kind": "openpgp-card", "reader": info.label, "serial": info.serial}


def key_protection(key: KeyRecord) -> str:
    """base.PROTECTION_*: can this key be copied off its token (a blob under a legacy wrap key)?"""
    if str(key.handle.get("format", "")).startswith("pkcs11-wrapped"):
        from tokens import pkcs11_token

        return pkcs11_token.key_protection(key)
    return PROTECTION_PROTECTED  # resident keys and cards: generated on the token, never extractable
