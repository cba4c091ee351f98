"""The wallet home's own commands: init, enroll, sync, history, status, export-public-key,
change-password-a and change-password-b.

What a wallet does to itself, before and besides money: create the vault and the key (init),
register with a center (enroll), deliver its outbox (sync), show what it holds (history, status,
export-public-key) and change its two passwords. Money is token_wallet.cli.money, keys after
enrollment token_wallet.cli.keys, smartcards token_wallet.cli.card.

Long because each command declares its options one per line (Typer signatures, ~15 lines a
command) and these eight are one group in `wallet --help`, registered in its order; their helpers
(init's token choice, enroll's body and outcome, status's rendering) stay beside them. Recovery
codes are token_wallet.cli.recovery.

Secrets: password A opens the vault, password B is the token PIN. Each is
prompted without echo, or read from --password-X-fd N, --password-X-file F or
the file named by $WALLET_PASSWORD_X_FILE (first line only).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from hostkit.cli import CliError, emit, read_option_file, read_secret
from paywire.algorithms import key_id
from paywire.envelope import b64url_encode
from paywire.messages import ENROLL
from token_wallet.cli.command_index import app
from token_wallet.cli.common import (
    CardTimeout,
    CenterUrls,
    Home,
    JsonFlag,
    PasswordAFd,
    PasswordAFile,
    PasswordBFd,
    PasswordBFile,
    ask_pin,
    describe_result,
    format_when,
    home_dir,
    open_wallet_token,
    pin_state_line,
    public_key_pem,
    read_center_cert,
    read_password_a,
    read_password_b,
    same_center_urls,
    say,
    sign_message,
    unlock_wallet,
    well_formed_center_urls,
    with_pin_message,
    write_public_file,
)
from token_wallet.cli.paging import PageLimit, checked_limit, page_info, parse_since_ms
from token_wallet.cli.recovery import (
    add_recovery_fields,
    check_rebind,
    checked_recovery_code,
    render_recovery_code,
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
from token_wallet.document import key_state, new_document
from token_wallet.vault import Vault
from token_wallet.vault_lock import vault_lock
from token_wallet.wallet import Wallet, vault_path
from tokens import DEFAULT_CARD_TIMEOUT_S, card_token_doc, key_protection, open_token, pkcs11_token_doc
from tokens.base import PROTECTION_PROTECTED, KeyRecord, PinStatus, TokenError

ENTROPY_MIN_BYTES = 16
ENTROPY_MAX_BYTES = 4096


@app.command()
def init(
    pkcs11_module: Annotated[
        str | None, typer.Option(help="Path of the PKCS#11 module (.so) of your token")
    ] = None,
    token_label: Annotated[str | None, typer.Option(help="Label of the PKCS#11 token")] = None,
    card: Annotated[
        bool, typer.Option("--card", metavar="", help="Use an OpenPGP smartcard in a PC/SC reader")
    ] = False,
    reader: Reader = None,
    key_type: KeyTypeOption = None,
    key_mode: KeyModeOption = "auto",
    token_serial: TokenSerial = None,
    so_pin_file: Annotated[
        str | None,
        typer.Option(envvar="WALLET_SO_PIN_FILE", help="File with the token's SO PIN (wrapped mode)"),
    ] = None,
    admin_pin_file: Annotated[
        str | None,
        typer.Option(envvar="WALLET_ADMIN_PIN_FILE", help="File with the card's admin PIN (PW3)"),
    ] = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
    entropy_file: Annotated[
        Path | None, typer.Option(help="Extra randomness to mix into the token's RNG")
    ] = None,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
) -> None:
    """Generate the signing key on the token or card and create the password-A vault."""
    path = vault_path(home_dir(home))
    if path.exists():
        raise CliError(f"a wallet already exists at {path.parent}; use another --home to make a new one")
    entropy = _read_entropy(entropy_file)
    if card:
        if pkcs11_module or token_label:
            raise CliError("--card and --pkcs11-module/--token-label exclude each other: choose one token")
        token, key, token_doc, password_a = init_card(
            reader,
            key_type or "ed25519",
            admin_pin_file,
            card_timeout_s,
            password_a_file,
            password_a_fd,
            password_b_file,
            password_b_fd,
        )
    else:
        if not pkcs11_module or not token_label:
            raise CliError(
                "give --pkcs11-module and --token-label for a PKCS#11 token, or --card for a smartcard"
            )
        token, key, token_doc, password_a = _init_pkcs11(
            pkcs11_module,
            token_label,
            token_serial,
            key_type or "p256",
            key_mode,
            so_pin_file,
            entropy,
            password_a_file,
            password_a_fd,
            password_b_file,
            password_b_fd,
        )
    info = token.info()
    with vault_lock(path):
        Vault.create(path, password_a, new_document(token_doc, key))
    summary = {
        "home": str(path.parent),
        "kid": key_id(key.spki_der),
        "algorithm": key.algorithm,
        "key_mode": key.mode.value,
        "key_protection": key_protection(key),
        "token": info.to_json(),
    }
    emit(
        as_json,
        summary,
        lambda out: out.print(
            f"key generated on {'card' if card else 'token'} {info.label} "
            f"({key.mode.value} mode, {key.algorithm})\n"
            f"  key id {summary['kid']}\n  vault {path}"
        ),
    )


def init_card(reader, key_type, admin_pin_file, card_timeout_s, a_file, a_fd, b_file, b_fd):
    key_type_value = parse_card_key_type(key_type)
    from tokens.openpgp_card import open_openpgp_card  # backends load when used (tokens.open_token)

    token = open_openpgp_card(reader, timeout_s=card_timeout_s, on_wait=say)
    say(
        f"this replaces the signature key on the card in {token.info().label}, and its PIN will be asked "
        "for every signature"
    )
    admin_pin = read_secret(what="admin PIN", file_option=admin_pin_file, env_var=None)
    password_a = read_password_a(a_file, a_fd, confirm=True)
    password_b = read_password_b(b_file, b_fd, card=True)
    key = token.generate_key(key_type_value, password_b, so_pin=admin_pin)
    return token, key, card_token_doc(token.info()), password_a


def _init_pkcs11(module, label, serial, key_type, key_mode, so_pin_file, entropy, a_file, a_fd, b_file, b_fd):
    key_type_value = parse_pkcs11_key_type(key_type)
    mode = parse_key_mode(key_mode)
    # Backends load when used, as in tokens.open_token: a card user needs no PKCS#11 library.
    from tokens.pkcs11_token import open_pkcs11_token

    token = open_pkcs11_token(module, label=label, serial=serial)
    so_pin = so_pin_for(token, mode, so_pin_file)
    password_a = read_password_a(a_file, a_fd, confirm=True)
    password_b = read_password_b(b_file, b_fd)
    key = token.generate_key(key_type_value, password_b, so_pin=so_pin, entropy=entropy, mode=mode)
    return token, key, pkcs11_token_doc(module, token.info()), password_a


@app.command()
def enroll(
    center: CenterUrls,
    center_cert: Annotated[Path, typer.Option(help="The center's certificate (center-cert.pem) to pin")],
    name: Annotated[str, typer.Option(help="Your name, or the store's name")],
    address: Annotated[str, typer.Option(help="Postal address")],
    birth_date: Annotated[str | None, typer.Option(help="YYYY-MM-DD (members)")] = None,
    store: Annotated[bool, typer.Option("--store", metavar="", help="Enroll as a store")] = False,
    bank_account: Annotated[str | None, typer.Option(help="Payout bank account (stores)")] = None,
    key_cert: Annotated[
        Path | None,
        typer.Option(
            help="The card issuer's certificate for this key (PEM or DER, from `center issuer certify`)"
        ),
    ] = None,
    rebind: Annotated[
        str | None,
        typer.Option(
            help="After a lost card: bind this new key to your existing "
            "account M-... (S-... for a store); an operator confirms"
        ),
    ] = None,
    recovery_code: Annotated[
        str | None,
        typer.Option(
            help="With --rebind: the recovery code from your enrollment, or an operator's ticket ('-': ask)"
        ),
    ] = None,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Register with the center: a registration signed by the token key, sent over pinned TLS."""
    urls = well_formed_center_urls(center)  # refused before anything is read, signed or queued
    old_code = checked_recovery_code(recovery_code, rebind)
    body = _registration_body(name, address, birth_date, store, bank_account)
    identity = read_center_cert(center_cert)
    same_center_urls(urls, identity.cert_pem, identity.center_id)
    with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
        check_rebind(wallet, rebind)  # already enrolled, waiting in the outbox, or a lost card's new key
        key = wallet.key
        body.update(public_key=b64url_encode(key.spki_der), alg=key.algorithm)
        if rebind is not None:
            body["rebind"] = rebind
        if key_cert is not None:
            from token_wallet.key_cert import read_key_certificate  # X.509: tens of ms, rarely needed

            body["key_cert"] = b64url_encode(read_key_certificate(key_cert, key.spki_der))
        # A new recovery code each time: shown once below, never stored; the center keeps its public key.
        new_code = add_recovery_fields(
            body, center_id=identity.center_id, new_kid=wallet.kid, old_code=old_code
        )
        wallet.pin_center(
            urls, identity.cert_pem, identity.center_id, identity.receipt_spki, identity.receipt_alg
        )
        token = open_wallet_token(wallet, card_timeout_s)
        entry = sign_message(wallet, token, ENROLL, body, password_b_file, password_b_fd)
        report = wallet.deliver()
    _print_enrollment(as_json, wallet, entry, report, new_code)


@app.command()
def sync(
    center: Annotated[
        list[str] | None,
        typer.Option(
            help="New URL of the same center (its pinned certificate stays); repeated, the whole new list"
        ),
    ] = None,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
) -> None:
    """Deliver signed messages waiting in the outbox (needs password A only)."""
    urls = well_formed_center_urls(center) if center else None  # all checked before anything changes
    with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
        if urls:
            pinned = wallet.doc["center"]
            if pinned is not None:
                same_center_urls(urls, pinned["cert_pem"].encode(), pinned["center_id"])
            wallet.move_center(urls)
        report = wallet.deliver()
    document = report.to_json() | {"member_id": wallet.doc["member_id"]}
    currency = (wallet.doc["center"] or {}).get("currency")

    def render(out) -> None:
        for item in report.delivered:
            # In the words `history` and the command that signed it use, never a Python dict.
            out.print(
                f"delivered {item['type']} {item['msg_id']}: {describe_result(item['result'], currency)}"
            )
        for item in report.refused:
            out.print(f"refused {item['type']} {item['msg_id']}: {item['code']}: {item['message']}")
        for item in report.alarms:
            out.print(
                f"ALARM {item['type']} {item['msg_id']}: the center's receipt contradicts the request "
                f"({item['reason']}); kept in the history, not recorded as done"
            )
        for item in report.dropped:
            out.print(
                f"expired {item['type']} {item['msg_id']}: outcome unknown; `wallet balance` shows "
                "whether it took effect"
            )
        if report.unreachable:
            out.print(f"{report.pending} message(s) still waiting: {report.unreachable}")
        elif not report.delivered and not report.refused:
            out.print("nothing to send")

    emit(as_json, document, render)
    if report.alarms:
        raise typer.Exit(code=1)
    if report.unreachable:
        raise typer.Exit(code=3)


HISTORY_PAGE_DEFAULT = 100


@app.command()
def history(
    home: Home = None,
    as_json: JsonFlag = False,
    limit: PageLimit = HISTORY_PAGE_DEFAULT,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="From this date on (YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC); else the newest"
        ),
    ] = None,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
) -> None:
    """Show the history a page at a time, and the waiting messages (password A only; no key use)."""
    limit, since_ms = checked_limit(limit), parse_since_ms(since)
    with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
        doc = wallet.doc
        page = doc["history"].page(limit, since_ms=since_ms)
    currency = (doc["center"] or {}).get("currency")
    outbox = [
        {
            "msg_id": e["msg_id"],
            "type": e["type"],
            "queued_at_ms": e["queued_at_ms"],
            "attempts": e["attempts"],
        }
        for e in doc["outbox"]
    ]
    document = {
        "member_id": doc["member_id"],
        "role": doc["role"],
        "entries": page.items,
        "outbox": outbox,
        "page": page_info(page, limit, since),
    }

    def render(out) -> None:
        from rich.table import Table  # only for people: `--json` never loads Rich's tables

        table = Table(title=f"history of {doc['member_id'] or 'this wallet (not enrolled yet)'}")
        for column in ("when (UTC)", "what", "outcome", "details"):
            table.add_column(column)
        for entry in page.items:
            table.add_row(
                format_when(entry["at_ms"]),
                entry["type"],
                entry["outcome"],
                describe_result(entry["details"], currency),
            )
        for entry in outbox:
            table.add_row(
                format_when(entry["queued_at_ms"]), entry["type"], "waiting in outbox", entry["msg_id"]
            )
        out.print(table)

    emit(as_json, document, render)


@app.command()
def status(
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
) -> None:
    """Show the token, key id, algorithm, member id and PIN state."""
    with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
        doc = wallet.doc
    token_state: dict = {"present": False}
    try:
        token = open_token(doc["token"], card_timeout_s=0)  # status does not wait for a card
        token_state = {"present": True, **token.info().to_json(), "pin": token.pin_status().to_json()}
    except TokenError as error:
        token_state["problem"] = str(error)
    center = doc["center"]
    document = {
        "token": token_state,
        "kid": doc["kid"],
        "algorithm": doc["key"]["algorithm"],
        "key_mode": doc["key"]["mode"],
        "member_id": doc["member_id"],
        "role": doc["role"],
        "center": {"url": center["url"], "center_id": center["center_id"]} if center else None,
        # In the order every command tries them (token_wallet.client); the first is `center.url`.
        "center_urls": wallet.center_urls,
        "counter": doc["counter"],
        "outbox": len(doc["outbox"]),
        # new | pending_bind | active, and a rotation's new key not yet confirmed (token_wallet.key_rotation)
        "key_status": key_state(doc),
        "pending_kid": (doc.get("pending_key") or {}).get("kid"),
        # protected | extractable_legacy_wrap (a blob under a token's old wrap key: tokens.key_protection)
        "key_protection": key_protection(KeyRecord.from_json(doc["key"])),
    }
    emit(as_json, document, lambda out: _render_status(out, document))


@app.command("export-public-key")
def export_public_key(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the PEM here instead of standard output")
    ] = None,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
) -> None:
    """Print the token key's public key (PEM), for an operator account or an issuer certificate."""
    with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
        key = wallet.key
    pem = public_key_pem(key.spki_der)
    if out is not None:
        write_public_file(out, pem.encode(), "--out")
    document = {
        "kid": key_id(key.spki_der),
        "algorithm": key.algorithm,
        "public_key_pem": pem,
        "file": str(out) if out else None,
    }
    emit(
        as_json,
        document,
        lambda console: (
            console.print(f"wrote the public key of {document['kid']} to {out}")
            if out
            else console.out(pem, end="", highlight=False)
        ),
    )


@app.command("change-password-a")
def change_password_a(
    new_password_a_file: Annotated[str | None, typer.Option(help="File with the new password A")] = None,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
) -> None:
    """Re-encrypt the vault under a new password A."""
    with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
        new = read_secret(what="new password A", file_option=new_password_a_file, env_var=None, confirm=True)
        wallet.vault.change_password(new)
    emit(
        as_json,
        {"changed": "password_a"},
        lambda out: out.print("password A changed; the vault is re-encrypted"),
    )


@app.command("change-password-b")
def change_password_b(
    new_password_b_file: Annotated[str | None, typer.Option(help="File with the new password B")] = None,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Change the token PIN (password B)."""
    with unlock_wallet(home, password_a_file, password_a_fd) as wallet:
        token = open_wallet_token(wallet, card_timeout_s)
    old = ask_pin(token, password_b_file, password_b_fd)
    new = read_secret(what="new password B", file_option=new_password_b_file, env_var=None, confirm=True)
    with_pin_message(lambda: token.change_pin(old, new), token)
    emit(as_json, {"changed": "password_b"}, lambda out: out.print("password B (token PIN) changed"))


def _registration_body(name, address, birth_date, store, bank_account) -> dict:
    if store:
        if not bank_account:
            raise CliError("a store needs --bank-account for its payouts")
        if birth_date:
            raise CliError("--birth-date is for members; a store gives --bank-account")
        return {"role": "store", "name": name, "address": address, "bank_account": bank_account}
    if not birth_date:
        raise CliError("a member needs --birth-date YYYY-MM-DD (or use --store)")
    if bank_account:
        raise CliError("--bank-account is for stores: add --store")
    try:
        parsed = dt.date.fromisoformat(birth_date)
    except ValueError:
        raise CliError(f"--birth-date {birth_date!r} is not a date YYYY-MM-DD") from None
    if parsed >= dt.date.today():
        raise CliError("--birth-date must be in the past")
    return {"role": "member", "name": name, "address": address, "birth_date": birth_date}


def _print_enrollment(as_json: bool, wallet: Wallet, entry: dict, report, new_code: str) -> None:
    member_id = wallet.doc["member_id"]
    refused = next((item for item in report.refused if item["msg_id"] == entry["msg_id"]), None)
    if refused:
        raise CliError(f"the center refused the enrollment ({refused['code']}): {refused['message']}")
    outcome, result = report.outcome_of(entry["msg_id"])
    queued = outcome == "queued"
    pending = not queued and wallet.doc.get("key_status") == "pending_bind"  # a lost card's new key
    document = {
        "member_id": member_id,
        "role": wallet.doc["role"],
        "kid": wallet.kid,
        "status": "queued" if queued else "pending_bind" if pending else "enrolled",
        "msg_id": entry["msg_id"],
        "recovery_code": new_code,
    }
    if queued:
        document["reason"] = report.unreachable
    if pending:
        document["recovery_verified"] = result.get("recovery_verified")

    def render(out) -> None:
        if queued:
            out.print(
                f"center unreachable; the signed enrollment waits in the outbox: run `wallet sync` later "
                f"({report.unreachable})"
            )
        elif pending:
            verified = " (recovery code verified)" if document["recovery_verified"] else ""
            out.print(
                f"new key recorded for {member_id}{verified}: it signs nothing until an operator "
                "binds it (after revoking the lost key)"
            )
        else:
            out.print(f"enrolled as {member_id} ({wallet.doc['role']})")
        render_recovery_code(out, new_code, pending=queued or pending)

    emit(as_json, document, render)


# One line, for a wallet whose key blob is under a token's old wrap key (no unwrap template).
LEGACY_WRAP_WARNING = (
    "key protection: EXTRACTABLE: this key is wrapped under the token's old wrap key, so whoever has "
    "this vault with password A and password B can copy it off the token; move to a protected key "
    "with `wallet rotate-key --so-pin-file FILE` (the token's SO PIN, once)"
)


def _render_status(out, document: dict) -> None:
    token = document["token"]
    out.print(
        f"token: {token.get('label', '?')} serial {token.get('serial', '?')} "
        f"({token.get('manufacturer', '')} {token.get('model', '')})"
        if token["present"]
        else f"token: not found ({token.get('problem')})"
    )
    if token["present"]:
        out.print(pin_state_line(PinStatus(**token["pin"])))
    out.print(f"key id: {document['kid']}\nalgorithm: {document['algorithm']} ({document['key_mode']} key)")
    if document["key_protection"] != PROTECTION_PROTECTED:
        out.print(LEGACY_WRAP_WARNING, soft_wrap=True)  # one line, whatever the terminal width
    out.print(
        f"member id: {document['member_id'] or 'not enrolled'}"
        + (f" ({document['role']})" if document["role"] else "")
    )
    if document["key_status"] != "active":
        waiting = document["key_status"] == "pending_bind"
        out.print(f"key: {'waiting for an operator to bind it' if waiting else 'not enrolled yet'}")
    if document["pending_kid"]:
        out.print(
            f"rotation: new key {document['pending_kid'][:16]}... waits; "
            "run `wallet rotate-key` or `wallet sync`"
        )
    if document["center"]:
        urls = document["center_urls"]
        also = f" (then {', '.join(urls[1:])})" if len(urls) > 1 else ""
        # One line whatever the terminal width: URLs are copied from it.
        out.print(f"center: {document['center']['center_id']} at {urls[0]}{also}", soft_wrap=True)
    if document["outbox"]:
        out.print(f"outbox: {document['outbox']} message(s) waiting; run `wallet sync`")


def _read_entropy(path: Path | None) -> bytes | None:
    if path is None:
        return None
    data = read_option_file(
        path,
        "--entropy-file",
        max_bytes=4096,
        what="a seed of 16 to 4096 bytes (e.g. head -c 64 /dev/urandom > seed)",
    )
    if len(data) < 16:
        raise CliError("--entropy-file must hold at least 16 bytes")
    return data
