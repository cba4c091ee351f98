"""Smartcard commands: readers, card status, card unblock (`init --card` is token_wallet.cli.wallet_home)."""

from __future__ import annotations

from typing import Annotated

import typer

from hostkit.cli import emit, read_secret
from token_wallet.cli.command_index import app, card_app
from token_wallet.cli.common import (
    CardTimeout,
    JsonFlag,
    say,
)
from tokens import DEFAULT_CARD_TIMEOUT_S


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


@card_app.command("status")
def card_status(
    reader: Annotated[str | None, typer.Option(help="Reader name (or part of it)")] = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
    as_json: JsonFlag = False,
) -> None:
    """The card in the reader: serial, maker, version, PIN tries left (no password needed)."""
    from tokens.openpgp_card import open_openpgp_card

    card = open_openpgp_card(reader, timeout_s=card_timeout_s, on_wait=say)
    info, pin, admin = card.info(), card.pin_status(), card.admin_pin_status()
    document = {
        "reader": info.label,
        "serial": info.serial,
        "manufacturer": info.manufacturer,
        "model": info.model,
        "pin": pin.to_json(),
        "admin_pin": admin.to_json(),
    }
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"{info.model} serial {info.serial} by {info.manufacturer} in {info.label}\n"
            f"card PIN (password B): {'BLOCKED' if pin.locked else f'{pin.tries_left} tries left'}\n"
            f"admin PIN: {'BLOCKED' if admin.locked else f'{admin.tries_left} tries left'}"
        ),
    )


@card_app.command("unblock")
def card_unblock(
    reader: Annotated[str | None, typer.Option(help="Reader name (or part of it)")] = None,
    admin_pin_file: Annotated[
        str | None,
        typer.Option(envvar="WALLET_ADMIN_PIN_FILE", help="File with the card's admin PIN (PW3)"),
    ] = None,
    resetting_code_file: Annotated[
        str | None, typer.Option(help="File with the resetting code (instead of the admin PIN)")
    ] = None,
    new_password_b_file: Annotated[str | None, typer.Option(help="File with the new card PIN")] = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
    as_json: JsonFlag = False,
) -> None:
    """Reset a blocked card PIN (password B) with the admin PIN or the resetting code."""
    from tokens.openpgp_card import open_openpgp_card

    card = open_openpgp_card(reader, timeout_s=card_timeout_s, on_wait=say)
    if resetting_code_file:
        code = read_secret(what="resetting code", file_option=resetting_code_file, env_var=None)
        unblock = {"resetting_code": code}
    else:
        unblock = {"admin_pin": read_secret(what="admin PIN", file_option=admin_pin_file, env_var=None)}
    new_pin = read_secret(what="new password B", file_option=new_password_b_file, env_var=None, confirm=True)
    card.unblock(new_pin, **unblock)
    status = card.pin_status()
    emit(
        as_json,
        {"unblocked": True, "pin": status.to_json()},
        lambda out: out.print(f"card PIN reset: {status.tries_left} tries left"),
    )
