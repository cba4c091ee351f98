"""Smartcard commands: readers, card status, card unblock, and `init --card`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from hostkit.cli import emit, read_secret
from tokens import DEFAULT_CARD_TIMEOUT_S
from tokens.base import KeyType

from token_wallet.cli.common import CardTimeout, JsonFlag, _choice, _password_a, _password_b, _say, app


def _init_card(reader, key_type, admin_pin_file, card_timeout, a_file, a_fd, b_file, b_fd):
    key_type_value = _choice(key_type, {"ed25519": KeyType.ED25519, "rsa2048": KeyType.RSA2048, "p256": KeyType.P256},
                             "--key-type")
    from tokens.openpgp_card import open_openpgp_card

    token = open_openpgp_card(reader, timeout_s=card_timeout, on_wait=_say)
    _say(f"this replaces the signature key on the card in {token.info().label}, and its PIN will be asked "
         "for every signature")
    admin_pin = read_secret(what="admin PIN", file_option=admin_pin_file, env_var=None)
    password_a = _password_a(a_file, a_fd, confirm=True)
    password_b = _password_b(b_file, b_fd)
    key = token.generate_key(key_type_value, password_b, so_pin=admin_pin)
    info = token.info()
    return token, key, {"kind": "openpgp-card", "reader": info.label, "serial": info.serial}, password_a


@app.command()
def readers(as_json: JsonFlag = False) -> None:
    """List PC/SC readers and whether a card is in each."""
    from tokens.pcsc import list_readers

    found = list_readers()
    document = [{"name": r.name, "card_present": r.card_present} for r in found]

    def render(out) -> None:
        if not found:
            out.print("no PC/SC readers found: plug one in (and check that pcscd runs)")
        for r in found:
            out.print(f"{r.name}: {'card present' if r.card_present else 'empty'}")

    emit(as_json, document, render)


card_app = typer.Typer(help="OpenPGP smartcard: status and PIN unblocking", no_args_is_help=True)
app.add_typer(card_app, name="card")


@card_app.command("status")
def card_status(
    reader: Annotated[Optional[str], typer.Option(help="Reader name (or part of it)")] = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
    as_json: JsonFlag = False,
) -> None:
    """The card in the reader: serial, maker, version, PIN tries left (no password needed)."""
    from tokens.openpgp_card import open_openpgp_card

    card = open_openpgp_card(reader, timeout_s=card_timeout, on_wait=_say)
    info, pin, admin = card.info(), card.pin_status(), card.admin_pin_status()
    document = {"reader": info.label, "serial": info.serial, "manufacturer": info.manufacturer, "model": info.model,
                "pin": pin.to_json(), "admin_pin": admin.to_json()}
    emit(as_json, document, lambda out: out.print(
        f"{info.model} serial {info.serial} by {info.manufacturer} in {info.label}\n"
        f"card PIN (password B): {'BLOCKED' if pin.locked else f'{pin.tries_left} tries left'}\n"
        f"admin PIN: {'BLOCKED' if admin.locked else f'{admin.tries_left} tries left'}"))


@card_app.command("unblock")
def card_unblock(
    reader: Annotated[Optional[str], typer.Option(help="Reader name (or part of it)")] = None,
    admin_pin_file: Annotated[Optional[str], typer.Option(envvar="WALLET_ADMIN_PIN_FILE",
                                                          help="File with the card's admin PIN (PW3)")] = None,
    resetting_code_file: Annotated[Optional[str], typer.Option(help="File with the resetting code (instead of the "
                                                                     "admin PIN)")] = None,
    new_password_b_file: Annotated[Optional[str], typer.Option(help="File with the new card PIN")] = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
    as_json: JsonFlag = False,
) -> None:
    """Reset a blocked card PIN (password B) with the admin PIN or the resetting code."""
    from tokens.openpgp_card import open_openpgp_card

    card = open_openpgp_card(reader, timeout_s=card_timeout, on_wait=_say)
    if resetting_code_file:
        code = read_secret(what="resetting code", file_option=resetting_code_file, env_var=None)
        unblock = {"resetting_code": code}
    else:
        unblock = {"admin_pin": read_secret(what="admin PIN", file_option=admin_pin_file, env_var=None)}
    new_pin = read_secret(what="new password B", file_option=new_password_b_file, env_var=None, confirm=True)
    card.unblock(new_pin, **unblock)
    status = card.pin_status()
    emit(as_json, {"unblocked": True, "pin": status.to_json()}, lambda out: out.print(
        f"card PIN reset: {status.tries_left} tries left"))
