"""Key commands: `wallet rotate-key` (the old key still works) and `wallet replace-key` (lost card).

Both keep the wallet home: history, receipts and the account stay; only the
signing key changes (token_wallet.key_rotation has the crash-safe order).

- rotate-key: a new key on the same token (default) or another one; ONE
  `rotate` message signed by the old key, holding the new key's own signed
  proof, tells the center. The wallet switches once the center's receipt says so.
- replace-key: after a lost card, a key on a new token becomes the wallet's
  key; `wallet enroll --rebind M-...` then asks to bind it to the same account,
  which an operator does once the lost key is revoked.

Long because each command declares its options one per line (Typer signatures, ~15 lines a
command), and both commands choose and open a new token (PKCS#11 or card) with the same
helpers, which belong next to them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from hostkit.cli import CliError, emit, read_secret
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
    public_key_pem,
    read_password_b,
    say,
    unlock_wallet,
    with_pin_message,
)
from token_wallet.cli.token_choice import (
    KeyModeOption,
    KeyTypeOption,
    Reader,
    TokenSerial,
    parse_card_key_type,
    parse_key_mode,
    parse_pkcs11_key_type,
    so_pin_for,
)
from token_wallet.document import key_state, queued_rotation
from token_wallet.key_rotation import check_can_replace, prepare_rotation, queue_rotation, replace_key
from token_wallet.wallet import Wallet
from tokens import DEFAULT_CARD_TIMEOUT_S, card_token_doc, open_token, pkcs11_token_doc
from tokens.base import KeyRecord

Pkcs11Module = Annotated[str | None, typer.Option(help="PKCS#11 module (.so) of the token for the new key")]
TokenLabel = Annotated[str | None, typer.Option(help="Label of the PKCS#11 token for the new key")]
Card = Annotated[bool, typer.Option("--card", metavar="", help="Put the new key on an OpenPGP smartcard")]
SoPinFile = Annotated[
    str | None,
    typer.Option(
        envvar="WALLET_SO_PIN_FILE", help="File with the new token's SO PIN (wrapped mode, once per token)"
    ),
]
AdminPinFile = Annotated[
    str | None,
    typer.Option(envvar="WALLET_ADMIN_PIN_FILE", help="File with the new card's admin PIN (PW3)"),
]


@app.command("rotate-key")
def rotate_key(
    pkcs11_module: Pkcs11Module = None,
    token_label: TokenLabel = None,
    token_serial: TokenSerial = None,
    card: Card = False,
    reader: Reader = None,
    key_type: KeyTypeOption = None,
    key_mode: KeyModeOption = "auto",
    so_pin_file: SoPinFile = None,
    admin_pin_file: AdminPinFile = None,
    new_password_b_file: Annotated[
        str | None,
        typer.Option(help="File with the new token's PIN, when the new key is on another token"),
    ] = None,
    new_password_b_fd: Annotated[
        int | None, typer.Option(help="Read the new token's PIN from this descriptor")
    ] = None,
    key_cert: Annotated[
        Path | None,
        typer.Option(
            help="The card issuer's certificate for the new key (centers that accept only certified keys)"
        ),
    ] = None,
    prepare_only: Annotated[
        bool,
        typer.Option(
            "--prepare-only",
            metavar="",
            help="Only generate the new key and show its public key (to have it certified first)",
        ),
    ] = False,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Replace the signing key by a new one: one message signed by both keys; account, balance and history stay."""  # noqa: E501  (the --help line)
    options = _TokenOptions(
        pkcs11_module,
        token_label,
        token_serial,
        card,
        reader,
        key_type,
        key_mode,
        so_pin_file,
        admin_pin_file,
        card_timeout_s,
    )
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    with signing.open_wallet() as wallet:
        _check_can_rotate(wallet)
        old_token, old_pin = signing.token_and_pin(wallet)
        pending = wallet.doc.get("pending_key")
        if pending is None:
            new_token, key, token_doc, same = _new_rotation_key(
                wallet, options, old_token, old_pin, new_password_b_file, new_password_b_fd
            )
            pending = prepare_rotation(wallet, token_doc, key)
        else:
            new_token, same = _pending_token(wallet, pending, options)
            say(f"using the new key {pending['kid'][:16]}... generated earlier")
        key = KeyRecord.from_json(pending["key"])
        if prepare_only:
            return _print_prepared(as_json, pending, key)
        new_pin = old_pin if same else _new_pin(new_token, new_password_b_file, new_password_b_fd)
        cert_der = _key_cert(key_cert, key)
        entry = with_pin_message(
            lambda: queue_rotation(
                wallet, old_token, old_pin, new_token, new_pin, key_cert_der=cert_der, now_s=int(time.time())
            ),
            new_token,
        )
        report = wallet.deliver()
    _print_rotation(as_json, wallet, entry, pending, report)


@app.command("replace-key")
def replace_key_command(
    pkcs11_module: Pkcs11Module = None,
    token_label: TokenLabel = None,
    token_serial: TokenSerial = None,
    card: Card = False,
    reader: Reader = None,
    key_type: KeyTypeOption = None,
    key_mode: KeyModeOption = "auto",
    so_pin_file: SoPinFile = None,
    admin_pin_file: AdminPinFile = None,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """After a lost card: a key on a new token becomes this wallet's key (password B: the NEW token's PIN)."""
    options = _TokenOptions(
        pkcs11_module,
        token_label,
        token_serial,
        card,
        reader,
        key_type,
        key_mode,
        so_pin_file,
        admin_pin_file,
        card_timeout_s,
    )
    if not options.names_a_token:
        raise CliError("give the new token: --pkcs11-module and --token-label, or --card")
    with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
        check_can_replace(wallet.doc)
        _refuse_lost_token(wallet, options)
        token, key, token_doc = _generate(
            options, lambda: read_password_b(password_b_file, password_b_fd, card=options.card)
        )
        view = replace_key(wallet, token_doc, key)
    document = {
        "status": "replaced",
        "member_id": view["member_id"],
        "old_kid": view["old_kid"],
        "new_kid": view["new_kid"],
        "algorithm": key.algorithm,
        "key_mode": key.mode.value,
        "next": f"wallet enroll --rebind {view['member_id']}",
    }
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"new key {view['new_kid'][:16]}... on token {token.info().label} replaces "
            f"{view['old_kid'][:16]}...; history kept.\nnext: report the lost card to the center, then "
            f"`wallet enroll --center URL --center-cert PEM "
            f"--rebind {view['member_id']} --recovery-code CODE --name ... --address ...` "
            "(CODE: the recovery code shown at your enrollment, or an operator's ticket) "
            "and wait for an operator to bind the key"
        ),
    )


# --- which token, which key ---------------------------------------------------------------


class _TokenOptions:
    def __init__(
        self,
        module,
        label,
        serial,
        card,
        reader,
        key_type,
        key_mode,
        so_pin_file,
        admin_pin_file,
        card_timeout_s,
    ):
        if card and (module or label):
            raise CliError("--card and --pkcs11-module/--token-label exclude each other: choose one token")
        if bool(module) != bool(label) and not card:
            raise CliError("give both --pkcs11-module and --token-label for a PKCS#11 token")
        self.module, self.label, self.serial, self.card, self.reader = module, label, serial, card, reader
        self.key_type, self.so_pin_file, self.admin_pin_file = key_type, so_pin_file, admin_pin_file
        self.card_timeout_s = card_timeout_s
        self.mode = parse_key_mode(key_mode)

    @property
    def names_a_token(self) -> bool:
        return self.card or bool(self.module)


def _check_can_rotate(wallet: Wallet) -> None:
    wallet.require_enrolled()
    state = key_state(wallet.doc)
    if state != "active":
        raise CliError(
            "this wallet's key is waiting for an operator to bind it; rotate once it is bound"
            if state == "pending_bind"
            else "this wallet's key is not enrolled yet"
        )
    if queued_rotation(wallet.doc):
        raise CliError("a key rotation already waits in the outbox: run `wallet sync` to finish it")


def _new_rotation_key(
    wallet: Wallet, options: _TokenOptions, old_token, old_pin: str, new_pin_file, new_pin_fd
):
    """(token, key, token_doc, same_token): the new key, on the wallet's token unless options name another."""
    current = wallet.doc["token"]
    if not options.names_a_token:
        if current.get("kind") != "pkcs11":
            raise CliError(
                "an OpenPGP card holds one signature key, so it cannot rotate onto itself: give --card "
                "for another card, or --pkcs11-module/--token-label"
            )
        record = wallet.key
        key_type = parse_pkcs11_key_type(options.key_type or record.key_type.value)
        # A token set up before wrap keys were protected needs its SO PIN once, to make the protected one.
        so_pin = (
            read_secret(what="SO PIN", file_option=options.so_pin_file, env_var=None)
            if options.so_pin_file
            else None
        )
        key = with_pin_message(
            lambda: old_token.generate_key(
                key_type, old_pin, so_pin=so_pin, mode=options.mode or record.mode
            ),
            old_token,
        )
        return old_token, key, current, True
    token, key, token_doc = _generate(options, lambda: _new_pin_secret(new_pin_file, new_pin_fd))
    if _same_token(token_doc, current):
        raise CliError("that is the wallet's own token: leave out the token options to rotate on it")
    return token, key, token_doc, False


def _generate(options: _TokenOptions, read_pin):
    """Generate a key on the token the options name; returns (token, key, token_doc)."""
    if options.card:
        from tokens.openpgp_card import open_openpgp_card

        key_type = parse_card_key_type(options.key_type or "ed25519")
        token = open_openpgp_card(options.reader, timeout_s=options.card_timeout_s, on_wait=say)
        say(f"this replaces the signature key on the card in {token.info().label}")
        admin_pin = read_secret(what="admin PIN", file_option=options.admin_pin_file, env_var=None)
        pin = read_pin()
        key = with_pin_message(lambda: token.generate_key(key_type, pin, so_pin=admin_pin), token)
        return token, key, card_token_doc(token.info())
    from tokens.pkcs11_token import open_pkcs11_token

    key_type = parse_pkcs11_key_type(options.key_type or "p256")
    token = open_pkcs11_token(options.module, label=options.label, serial=options.serial)
    so_pin = so_pin_for(token, options.mode, options.so_pin_file)
    pin = read_pin()
    key = with_pin_message(lambda: token.generate_key(key_type, pin, so_pin=so_pin, mode=options.mode), token)
    return token, key, pkcs11_token_doc(options.module, token.info())


def _pending_token(wallet: Wallet, pending: dict, options: _TokenOptions):
    """The token of a new key generated earlier (a rotation interrupted before it was signed)."""
    if options.names_a_token:
        raise CliError(
            f"a new key generated earlier ({pending['kid'][:16]}...) waits to replace this one: run "
            "`wallet rotate-key` without token options to use it"
        )
    same = _same_token(pending["token"], wallet.doc["token"])
    return open_token(pending["token"], card_timeout_s=options.card_timeout_s, on_wait=say), same


def _same_token(a: dict, b: dict) -> bool:
    return (
        a.get("kind") == b.get("kind")
        and a.get("serial") == b.get("serial")
        and a.get("label") == b.get("label")
    )


def _refuse_lost_token(wallet: Wallet, options: _TokenOptions) -> None:
    current = wallet.doc["token"]
    if (
        options.label
        and current.get("kind") == "pkcs11"
        and options.label == current.get("label")
        and options.serial in (None, current.get("serial"))
    ):
        raise CliError(
            "that is the token of the key being replaced: a lost card's key is replaced by one on a "
            "new token (to change keys on a token you still have, use `wallet rotate-key`)"
        )


def _new_pin_secret(file: str | None, fd: int | None) -> str:
    return read_secret(what="new token's password B", file_option=file, env_var=None, fd=fd)


def _new_pin(token, file: str | None, fd: int | None) -> str:
    from tokens.openpgp_card import OpenPgpCardToken

    if isinstance(token, OpenPgpCardToken):
        status = token.pin_status()
        if status.locked:
            raise CliError("the new card's PIN is blocked: run `wallet card unblock` with the admin PIN")
    return _new_pin_secret(file, fd)


def _key_cert(path: Path | None, key: KeyRecord) -> bytes | None:
    if path is None:
        return None
    from token_wallet.key_cert import read_key_certificate  # X.509: tens of ms, rarely needed

    return read_key_certificate(path, key.spki_der)


# --- output ------------------------------------------------------------------------------------


def _print_prepared(as_json: bool, pending: dict, key: KeyRecord) -> None:
    document = {
        "status": "prepared",
        "new_kid": pending["kid"],
        "algorithm": key.algorithm,
        "key_mode": key.mode.value,
        "public_key_pem": public_key_pem(key.spki_der),
    }
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"new key {pending['kid']} is ready; nothing was sent. Have it certified if the center "
            "requires it, then "
            f"run `wallet rotate-key` (with --key-cert CERT) to switch to it.\n{document['public_key_pem']}"
        ),
    )


def _print_rotation(as_json: bool, wallet: Wallet, entry: dict, pending: dict, report) -> None:
    state, result = report.outcome_of(entry["msg_id"])
    if state == "refused":
        raise CliError(
            f"the center refused the rotation ({result['code']}): {result['message']}; "
            "the old key stays in use"
        )
    document = {
        "status": "rotated" if state == "delivered" else "queued",
        "msg_id": entry["msg_id"],
        "member_id": wallet.doc["member_id"],
        "new_kid": pending["kid"],
        "old_kid": result["old_kid"] if result else wallet.kid,
        "algorithm": KeyRecord.from_json(pending["key"]).algorithm,
    }
    if state == "queued":
        document["reason"] = report.unreachable
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"key rotated: {document['new_kid'][:16]}... now signs for {document['member_id']} "
            f"(old key {document['old_kid'][:16]}... is retired)"
            if state == "delivered"
            else f"center unreachable; the signed rotation waits in the outbox: run `wallet sync` later "
            f"({report.unreachable}); the old key signs nothing else until then"
        ),
    )
