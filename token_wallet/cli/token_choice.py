"""Which token and key a new signing key gets: the words the options take and the SO PIN rule,
shared by `wallet init` (token_wallet.cli.wallet_home) and `rotate-key`/`replace-key`
(token_wallet.cli.keys). Each command keeps its own prompts in its own order."""

from __future__ import annotations

from typing import Annotated

import typer

from hostkit.cli import read_secret
from token_wallet.cli.common import choice
from tokens.base import KeyMode, KeyType

# The option types whose help is the same in every command that makes a key.
TokenSerial = Annotated[str | None, typer.Option(help="Serial, when several tokens share a label")]
Reader = Annotated[str | None, typer.Option(help="Reader name (or part of it) for --card")]
KeyTypeOption = Annotated[
    str | None, typer.Option(help="p256, ed25519 or rsa2048 (token); ed25519, rsa2048 or p256 (card)")
]
KeyModeOption = Annotated[str, typer.Option(help="auto, wrapped or resident (PKCS#11)")]

CARD_KEY_TYPES = {"ed25519": KeyType.ED25519, "rsa2048": KeyType.RSA2048, "p256": KeyType.P256}
PKCS11_KEY_TYPES = {"p256": KeyType.P256, "ed25519": KeyType.ED25519, "rsa2048": KeyType.RSA2048}
KEY_MODES = {"auto": None, "wrapped": KeyMode.WRAPPED, "resident": KeyMode.RESIDENT}


def parse_card_key_type(value: str) -> KeyType:
    return choice(value, CARD_KEY_TYPES, "--key-type")


def parse_pkcs11_key_type(value: str) -> KeyType:
    return choice(value, PKCS11_KEY_TYPES, "--key-type")


def parse_key_mode(value: str) -> KeyMode | None:
    """None for auto: the backend chooses (tokens.pkcs11_token.Pkcs11Token.generate_key)."""
    return choice(value, KEY_MODES, "--key-mode")


def so_pin_for(token, mode: KeyMode | None, so_pin_file: str | None) -> str | None:
    """The SO PIN when the key will be wrapped: asked for wrapped mode, or auto on a token that can
    wrap (the backend falls back to resident otherwise, e.g. Ed25519 on SoftHSM); and always on a
    token that generates no key without it (an OpenPGP card through OpenSC: its admin PIN)."""
    wrapped = mode is KeyMode.WRAPPED or (mode is None and token.supports_wrapping())
    if wrapped or token.generation_needs_so_pin():
        return read_secret(what="SO PIN", file_option=so_pin_file, env_var=None)
    return None
