"""Token backends behind one interface (base.Token), and how the vault finds them again."""

from __future__ import annotations

from token_wallet.tokens.base import Token, TokenError


def open_token(token_doc: dict) -> Token:
    """Open the token a vault names: {"kind": "pkcs11", "module", "label", "serial"}."""
    kind = token_doc.get("kind")
    if kind == "pkcs11":
        from token_wallet.tokens.pkcs11_token import open_pkcs11_token

        return open_pkcs11_token(token_doc["module"], label=token_doc["label"], serial=token_doc.get("serial"))
    raise TokenError(f"this wallet names a token of kind {kind!r}, which this version cannot open")
