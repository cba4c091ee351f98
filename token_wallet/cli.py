"""`wallet`: the member's and store's command line.

Secrets: password A opens the vault, password B is the token PIN. Each is
prompted without echo, or read from --password-X-fd N, --password-X-file F or
the file named by $WALLET_PASSWORD_X_FILE (first line only).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.table import Table

from paywire.center_cert import read_center_certificate
from paywire.algorithms import key_id
from paywire.envelope import b64url_encode
from paywire.errors import WireError
from paywire.messages import BALANCE, ENROLL, FUNDING_METHODS, NOTICES, PAY, PAYOUT, REFUND, TOPUP
from paywire.money import AmountError, format_amount, parse_amount
from token_wallet.client import CenterRefused, CenterUnreachable
from token_wallet.cliutil import CliError, emit, read_secret, run_cli, stderr_console
from token_wallet.tokens import DEFAULT_CARD_TIMEOUT_S, open_token
from token_wallet.tokens.base import KeyMode, KeyType, TokenError, WrongPin
from token_wallet.vault import Vault, VaultError, vault_lock
from token_wallet.wallet import MAX_NOTICES_PER_FETCH, Wallet, WalletError, new_document, vault_path

# Bounded: one `wallet notices` fetches at most this many pages of notices.
MAX_NOTICE_FETCHES = 10

app = typer.Typer(help="tokenpay wallet: pay with a key that lives on your token", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

Home = Annotated[Optional[Path], typer.Option("--home", envvar="WALLET_HOME", help="Wallet home directory")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout")]
PasswordAFile = Annotated[Optional[str], typer.Option("--password-a-file", envvar="WALLET_PASSWORD_A_FILE",
                                                      help="File whose first line is password A")]
PasswordBFile = Annotated[Optional[str], typer.Option("--password-b-file", envvar="WALLET_PASSWORD_B_FILE",
                                                      help="File whose first line is password B (token PIN)")]
PasswordAFd = Annotated[Optional[int], typer.Option("--password-a-fd", help="Read password A from this descriptor")]
PasswordBFd = Annotated[Optional[int], typer.Option("--password-b-fd", help="Read password B from this descriptor")]
CardTimeout = Annotated[float, typer.Option("--card-timeout", min=0, max=3600,
                                            help="Seconds to wait for the smartcard to be inserted")]


def _home(home: Optional[Path]) -> Path:
    return (home or Path.home() / ".tokenpay-wallet").expanduser().resolve()


def _password_a(file: Optional[str], fd: Optional[int], *, confirm: bool = False) -> str:
    return read_secret(what="password A", file_option=file, env_var=None, fd=fd, confirm=confirm)


def _password_b(file: Optional[str], fd: Optional[int]) -> str:
    return read_secret(what="password B", file_option=file, env_var=None, fd=fd)


@contextmanager
def _open_wallet(home: Optional[Path], password_a: str) -> Iterator[Wallet]:
    path = vault_path(_home(home))
    if not path.exists():
        raise CliError(f"no wallet at {path.parent}: run `wallet init` first (or give --home / WALLET_HOME)")
    with vault_lock(path):
        yield Wallet(Vault.open(path, password_a))


@app.command()
def init(
    pkcs11_module: Annotated[Optional[str], typer.Option(help="Path of the PKCS#11 module (.so) of your token")] = None,
    token_label: Annotated[Optional[str], typer.Option(help="Label of the PKCS#11 token")] = None,
    card: Annotated[bool, typer.Option("--card", help="Use an OpenPGP smartcard in a PC/SC reader")] = False,
    reader: Annotated[Optional[str], typer.Option(help="Reader name (or part of it) for --card")] = None,
    key_type: Annotated[Optional[str], typer.Option(help="p256 or ed25519 (token); ed25519, rsa2048 or p256 (card)")] = None,
    key_mode: Annotated[str, typer.Option(help="auto, wrapped or resident (PKCS#11)")] = "auto",
    token_serial: Annotated[Optional[str], typer.Option(help="Serial, when several tokens share a label")] = None,
    so_pin_file: Annotated[Optional[str], typer.Option(envvar="WALLET_SO_PIN_FILE",
                                                       help="File with the token's SO PIN (wrapped mode)")] = None,
    admin_pin_file: Annotated[Optional[str], typer.Option(envvar="WALLET_ADMIN_PIN_FILE",
                                                          help="File with the card's admin PIN (PW3)")] = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
    entropy_file: Annotated[Optional[Path], typer.Option(help="Extra randomness to mix into the token's RNG")] = None,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
) -> None:
    """Generate the signing key on the token or card and create the password-A vault."""
    path = vault_path(_home(home))
    if path.exists():
        raise CliError(f"a wallet already exists at {path.parent}; use another --home to make a new one")
    entropy = _read_entropy(entropy_file)
    if card:
        if pkcs11_module or token_label:
            raise CliError("--card and --pkcs11-module/--token-label exclude each other: choose one token")
        token, key, token_doc, password_a = _init_card(reader, key_type or "ed25519", admin_pin_file, card_timeout,
                                           password_a_file, password_a_fd, password_b_file, password_b_fd)
    else:
        if not pkcs11_module or not token_label:
            raise CliError("give --pkcs11-module and --token-label for a PKCS#11 token, or --card for a smartcard")
        token, key, token_doc, password_a = _init_pkcs11(pkcs11_module, token_label, token_serial, key_type or "p256", key_mode,
                                             so_pin_file, entropy, password_a_file, password_a_fd,
                                             password_b_file, password_b_fd)
    info = token.info()
    with vault_lock(path):
        Vault.create(path, password_a, new_document(token_doc, key))
    summary = {"home": str(path.parent), "kid": key_id(key.spki_der), "algorithm": key.algorithm,
               "key_mode": key.mode.value, "token": info.to_json()}
    emit(as_json, summary, lambda out: out.print(
        f"key generated on {'card' if card else 'token'} [bold]{info.label}[/] ({key.mode.value} mode, {key.algorithm})\n"
        f"  key id {summary['kid']}\n  vault {path}"))


def _init_pkcs11(module, label, serial, key_type, key_mode, so_pin_file, entropy, a_file, a_fd, b_file, b_fd):
    key_type_value = _choice(key_type, {"p256": KeyType.P256, "ed25519": KeyType.ED25519}, "--key-type")
    mode = _choice(key_mode, {"auto": None, "wrapped": KeyMode.WRAPPED, "resident": KeyMode.RESIDENT}, "--key-mode")
    from token_wallet.tokens.pkcs11_token import open_pkcs11_token

    token = open_pkcs11_token(module, label=label, serial=serial)
    # auto: wrapped where the token can wrap this key type (the backend falls
    # back to resident otherwise, e.g. Ed25519 on SoftHSM), which needs the SO PIN.
    wants_wrapping = mode is KeyMode.WRAPPED or (mode is None and token.supports_wrapping())
    so_pin = read_secret(what="SO PIN", file_option=so_pin_file, env_var=None) if wants_wrapping else None
    password_a = _password_a(a_file, a_fd, confirm=True)
    password_b = _password_b(b_file, b_fd)
    key = token.generate_key(key_type_value, password_b, so_pin=so_pin, entropy=entropy, mode=mode)
    info = token.info()
    return token, key, {"kind": "pkcs11", "module": module, "label": info.label, "serial": info.serial}, password_a


def _init_card(reader, key_type, admin_pin_file, card_timeout, a_file, a_fd, b_file, b_fd):
    key_type_value = _choice(key_type, {"ed25519": KeyType.ED25519, "rsa2048": KeyType.RSA2048, "p256": KeyType.P256},
                             "--key-type")
    from token_wallet.tokens.openpgp_card import open_openpgp_card

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
def enroll(
    center: Annotated[str, typer.Option(help="Center URL, e.g. https://127.0.0.1:8443")],
    center_cert: Annotated[Path, typer.Option(help="The center's certificate (center-cert.pem) to pin")],
    name: Annotated[str, typer.Option(help="Your name, or the store's name")],
    address: Annotated[str, typer.Option(help="Postal address")],
    birth_date: Annotated[Optional[str], typer.Option(help="YYYY-MM-DD (members)")] = None,
    store: Annotated[bool, typer.Option("--store", help="Enroll as a store")] = False,
    bank_account: Annotated[Optional[str], typer.Option(help="Payout bank account (stores)")] = None,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Register with the center: a registration signed by the token key, sent over pinned TLS."""
    body = _registration_body(name, address, birth_date, store, bank_account)
    identity = _read_center_cert(center_cert)
    password_a = _password_a(password_a_file, password_a_fd)
    with _open_wallet(home, password_a) as wallet:
        if wallet.doc["member_id"]:
            raise CliError(f"this wallet is already enrolled as {wallet.doc['member_id']}")
        if any(entry["type"] == ENROLL for entry in wallet.doc["outbox"]):
            raise CliError("an enrollment is already waiting in the outbox: run `wallet sync` to deliver it")
        key = wallet.key
        body.update(public_key=b64url_encode(key.spki_der), alg=key.algorithm)
        wallet.pin_center(center, identity.cert_pem, identity.center_id, identity.receipt_spki, identity.receipt_alg)
        token = _open_token(wallet, card_timeout)
        entry = _sign(wallet, token, ENROLL, body, password_b_file, password_b_fd)
        report = wallet.deliver()
    _print_enrollment(as_json, wallet, entry, report)


@app.command()
def sync(
    center: Annotated[Optional[str], typer.Option(help="New URL of the same center (its pinned certificate stays)")] = None,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
) -> None:
    """Deliver signed messages waiting in the outbox (needs password A only)."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        if center:
            wallet.move_center(center)
        report = wallet.deliver()
    document = report.to_json() | {"member_id": wallet.doc["member_id"]}

    def render(out) -> None:
        for item in report.delivered:
            out.print(f"delivered {item['type']} {item['msg_id']}: {_describe_result(item['result'])}")
        for item in report.refused:
            out.print(f"refused {item['type']} {item['msg_id']}: {item['code']}: {item['message']}")
        if report.unreachable:
            out.print(f"{report.pending} message(s) still waiting: {report.unreachable}")
        elif not report.delivered and not report.refused:
            out.print("nothing to send")

    emit(as_json, document, render)
    if report.unreachable:
        raise typer.Exit(code=3)


@app.command()
def history(
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
) -> None:
    """Show the history and waiting messages (password A only; the key is not touched)."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        doc = wallet.doc
    currency = (doc["center"] or {}).get("currency")
    outbox = [{"msg_id": e["msg_id"], "type": e["type"], "queued_at_ms": e["queued_at_ms"],
               "attempts": e["attempts"]} for e in doc["outbox"]]
    document = {"member_id": doc["member_id"], "role": doc["role"], "entries": doc["history"], "outbox": outbox}

    def render(out) -> None:
        table = Table(title=f"history of {doc['member_id'] or 'this wallet (not enrolled yet)'}")
        for column in ("when (UTC)", "what", "outcome", "details"):
            table.add_column(column)
        for entry in doc["history"]:
            table.add_row(_when(entry["at_ms"]), entry["type"], entry["outcome"],
                          _describe_result(entry["details"], currency))
        for entry in outbox:
            table.add_row(_when(entry["queued_at_ms"]), entry["type"], "waiting in outbox", entry["msg_id"])
        out.print(table)

    emit(as_json, document, render)


@app.command()
def status(
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
) -> None:
    """Show the token, key id, algorithm, member id and PIN state."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        doc = wallet.doc
    token_state: dict = {"present": False}
    try:
        token = open_token(doc["token"], card_timeout_s=0)  # status does not wait for a card
        token_state = {"present": True, **token.info().to_json(), "pin": token.pin_status().to_json()}
    except TokenError as error:
        token_state["problem"] = str(error)
    center = doc["center"]
    document = {
        "token": token_state, "kid": doc["kid"], "algorithm": doc["key"]["algorithm"],
        "key_mode": doc["key"]["mode"], "member_id": doc["member_id"], "role": doc["role"],
        "center": {"url": center["url"], "center_id": center["center_id"]} if center else None,
        "counter": doc["counter"], "outbox": len(doc["outbox"]),
    }
    emit(as_json, document, lambda out: _render_status(out, document))


@app.command()
def topup(
    amount: Annotated[str, typer.Argument(help="Amount in the center's currency, e.g. 5000 (JPY) or 12.50 (EUR)")],
    method: Annotated[str, typer.Option(help="credit, bank, postal or cash")],
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Ask to load prepaid value; it is credited once the funding is confirmed."""
    _choice(method, {m: m for m in FUNDING_METHODS}, "--method")
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        wallet.require_enrolled("member")
        currency = _learn_currency(wallet)
        body = {"amount_minor": _amount(amount, currency), "currency": currency, "method": method}
        outcome = _sign_and_deliver(wallet, TOPUP, body, password_b_file, password_b_fd, card_timeout)
    _print_outcome(as_json, outcome, lambda r: f"top-up {r['topup_id']} of {format_amount(r['amount_minor'], currency)} "
                   f"by {r['method']} is {r['status']}: it is credited once the funding is confirmed")


@app.command()
def pay(
    store: Annotated[str, typer.Option(help="The store's id (S-...)")],
    amount: Annotated[str, typer.Option(help="Amount in the center's currency")],
    order: Annotated[str, typer.Option(help="The store's order reference")],
    yes: Annotated[bool, typer.Option("--yes", help="Skip the confirmation question (not password B)")] = False,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Pay a store from the prepaid balance with a payment signed on the token."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        wallet.require_enrolled("member")
        currency = _learn_currency(wallet)
        amount_minor = _amount(amount, currency)
        name = _online(lambda: wallet.store_name(store), "look up the store")
        body = {"payee": store, "payee_name": name, "amount_minor": amount_minor, "currency": currency,
                "order_ref": order}
        _confirm(f"Pay {format_amount(amount_minor, currency)} to {name} ({store}) for order {order!r}?", yes)
        outcome = _sign_and_deliver(wallet, PAY, body, password_b_file, password_b_fd, card_timeout)
    _print_outcome(as_json, outcome, lambda r: f"paid {format_amount(r['amount_minor'], currency)} to "
                   f"{r['store_name']}: payment {r['payment_id']}, balance {format_amount(r['balance_minor'], currency)}")


@app.command()
def balance(
    offline: Annotated[bool, typer.Option("--offline", help="Show the last known balance (password A only)")] = False,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Ask the center for the balance (a signed query), or show the last known one."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        wallet.require_enrolled()
        currency = wallet.currency if offline else _learn_currency(wallet)
        if not offline:
            outcome = _sign_and_deliver(wallet, BALANCE, {}, password_b_file, password_b_fd, card_timeout)
            if outcome[0] != "delivered":
                raise CliError("the center could not be reached; the query waits in the outbox "
                               "(use --offline for the last known balance)")
        doc = wallet.doc
    pending = [{"topup_id": k, **v} for k, v in doc["topups"].items() if v["status"] == "pending"]
    document = {"balance_minor": doc["balance_minor"], "currency": currency, "member_id": doc["member_id"],
                "pending_topups": pending, "source": "vault" if offline else "center"}
    emit(as_json, document, lambda out: out.print(
        f"balance: {format_amount(doc['balance_minor'] or 0, currency or 'JPY')}"
        + (" (last known)" if offline else "")
        + "".join(f"\n  pending top-up {t['topup_id']}: {format_amount(t['amount_minor'], currency)} by {t['method']}"
                  for t in pending)))


@app.command()
def notices(
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Fetch the store's payment notices; each is checked against the center's signature."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        wallet.require_enrolled("store")
        before = len(wallet.doc["notices"])
        token = _open_token(wallet, card_timeout)
        pin = _ask_pin(token, password_b_file, password_b_fd)
        for _ in range(MAX_NOTICE_FETCHES):
            body = {"after": wallet.doc["notices_cursor"], "limit": MAX_NOTICES_PER_FETCH}
            entry = _with_pin_message(lambda: wallet.sign_and_queue(token, pin, NOTICES, body, now_s=int(time.time())),
                                      token)
            state, result = _deliver_checked(wallet, entry)
            if state != "delivered" or result["count"] < MAX_NOTICES_PER_FETCH:
                break
        all_notices = [n["notice"] for n in wallet.doc["notices"]]
    new = all_notices[before:]
    document = {"notices": all_notices, "new": len(new), "status": state}

    def render(out) -> None:
        table = Table(title=f"payment notices ({len(new)} new, all verified against the center's key)")
        for column in ("payment", "buyer", "amount", "order", "paid (UTC)"):
            table.add_column(column)
        for n in all_notices:
            table.add_row(n["payment_id"], n["buyer_id"], format_amount(n["amount_minor"], n["currency"]),
                          n["order_ref"], _when(n["paid_at_ms"]))
        out.print(table)
        if state == "queued":
            out.print("the center could not be reached; run `wallet sync` later")

    emit(as_json, document, render)


@app.command()
def payout(
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Claim the store's whole balance as a payout to its bank account."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        wallet.require_enrolled("store")
        currency = _learn_currency(wallet)
        outcome = _sign_and_deliver(wallet, PAYOUT, {"currency": currency}, password_b_file, password_b_fd, card_timeout)
    _print_outcome(as_json, outcome, lambda r: f"payout {r['payout_id']} of {format_amount(r['amount_minor'], currency)} "
                   f"to {r['bank_account']} is {r['status']}")


@app.command()
def refund(
    payment_id: Annotated[str, typer.Argument(help="The payment to refund (P-...)")],
    amount: Annotated[Optional[str], typer.Option(help="Part to refund (default: all not yet refunded)")] = None,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Return money of a payment to the buyer (stores only; never more than was paid)."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        wallet.require_enrolled("store")
        currency = _learn_currency(wallet)
        body = {"payment_id": payment_id, "amount_minor": _amount(amount, currency) if amount else None,
                "currency": currency}
        outcome = _sign_and_deliver(wallet, REFUND, body, password_b_file, password_b_fd, card_timeout)
    _print_outcome(as_json, outcome, lambda r: f"refunded {format_amount(r['amount_minor'], currency)} of payment "
                   f"{r['payment_id']} to {r['buyer_id']} (refund {r['refund_id']})")


@app.command()
def readers(as_json: JsonFlag = False) -> None:
    """List PC/SC readers and whether a card is in each."""
    from token_wallet.tokens.pcsc import list_readers

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
    from token_wallet.tokens.openpgp_card import open_openpgp_card

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
    from token_wallet.tokens.openpgp_card import open_openpgp_card

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


@app.command("change-password-a")
def change_password_a(
    new_password_a_file: Annotated[Optional[str], typer.Option(help="File with the new password A")] = None,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
) -> None:
    """Re-encrypt the vault under a new password A."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        new = read_secret(what="new password A", file_option=new_password_a_file, env_var=None, confirm=True)
        wallet.vault.change_password(new)
    emit(as_json, {"changed": "password_a"}, lambda out: out.print("password A changed; the vault is re-encrypted"))


@app.command("change-password-b")
def change_password_b(
    new_password_b_file: Annotated[Optional[str], typer.Option(help="File with the new password B")] = None,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Change the token PIN (password B)."""
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        token = _open_token(wallet, card_timeout)
    old = _ask_pin(token, password_b_file, password_b_fd)
    new = read_secret(what="new password B", file_option=new_password_b_file, env_var=None, confirm=True)
    _with_pin_message(lambda: token.change_pin(old, new), token)
    emit(as_json, {"changed": "password_b"}, lambda out: out.print("password B (token PIN) changed"))


def _sign_and_deliver(wallet: Wallet, msg_type: str, body: dict, pin_file, pin_fd,
                      card_timeout: float) -> tuple[str, dict | None, dict]:
    token = _open_token(wallet, card_timeout)
    entry = _sign(wallet, token, msg_type, body, pin_file, pin_fd)
    state, result = _deliver_checked(wallet, entry)
    return state, result, entry


def _deliver_checked(wallet: Wallet, entry: dict) -> tuple[str, dict | None]:
    report = wallet.deliver()
    state, result = report.outcome_of(entry["msg_id"])
    if state == "refused":
        raise CliError(f"the center refused it ({result['code']}): {result['message']}")
    if state == "queued":
        return state, {"reason": report.unreachable}
    return state, result


def _print_outcome(as_json: bool, outcome: tuple, describe) -> None:
    state, result, entry = outcome
    if state == "queued":
        document = {"status": "queued", "msg_id": entry["msg_id"], "reason": result["reason"]}
        emit(as_json, document, lambda out: out.print(
            f"the center could not be reached; the signed {entry['type']} waits in the outbox: "
            f"run `wallet sync` later ({result['reason']})"))
        return
    emit(as_json, {"status": "accepted", "msg_id": entry["msg_id"], **result}, lambda out: out.print(describe(result)))


def _learn_currency(wallet: Wallet) -> str:
    return _online(wallet.learn_currency, "learn its currency")


def _online(action, what: str):
    try:
        return action()
    except CenterUnreachable as error:
        raise CliError(f"cannot {what}: {error}; nothing was signed") from None
    except CenterRefused as error:
        raise CliError(f"cannot {what}: {error}") from None


def _amount(text: str, currency: str) -> int:
    try:
        return parse_amount(text, currency)
    except AmountError as error:
        raise CliError(str(error)) from None


def _confirm(question: str, yes: bool) -> None:
    stderr_console.print(question)
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError("confirmation needed and there is no terminal: re-run with --yes to confirm; nothing was signed")
    if not typer.confirm("Confirm", default=False, err=True):
        raise CliError("not confirmed; nothing was signed")


def _open_token(wallet: Wallet, card_timeout: float):
    return open_token(wallet.doc["token"], card_timeout_s=card_timeout, on_wait=_say)


def _ask_pin(token, pin_file, pin_fd) -> str:
    """Password B; a card tells its tries left first, and a blocked PIN is not asked at all."""
    if token.info().kind == "openpgp-card":
        status = token.pin_status()
        if status.locked:
            raise CliError("the card PIN (password B) is blocked: run `wallet card unblock` with the admin PIN")
        _say(f"card PIN (password B): {status.tries_left} tries left")
    return _password_b(pin_file, pin_fd)


def _say(message: str) -> None:
    stderr_console.print(message)


def _sign(wallet: Wallet, token, msg_type: str, body: dict, pin_file, pin_fd) -> dict:
    pin = _ask_pin(token, pin_file, pin_fd)
    return _with_pin_message(lambda: wallet.sign_and_queue(token, pin, msg_type, body, now_s=int(time.time())), token)


def _with_pin_message(action, token):
    try:
        return action()
    except WrongPin as error:
        status = error.status or token.pin_status()
        left = f"{status.tries_left} tries left" if status.tries_left is not None else (
            "the token says this is the final try" if status.final_try else
            "the token says few tries are left" if status.count_low else "the token does not tell how many tries are left")
        raise CliError(f"wrong password B (token PIN): nothing was signed; {left}") from None


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


def _read_center_cert(path: Path):
    try:
        return read_center_certificate(path.read_bytes())
    except OSError as error:
        raise CliError(f"cannot read --center-cert {path}: {error.strerror}") from None
    except ValueError as error:
        raise CliError(f"--center-cert {path}: {error}") from None


def _print_enrollment(as_json: bool, wallet: Wallet, entry: dict, report) -> None:
    member_id = wallet.doc["member_id"]
    refused = next((item for item in report.refused if item["msg_id"] == entry["msg_id"]), None)
    if refused:
        raise CliError(f"the center refused the enrollment ({refused['code']}): {refused['message']}")
    queued = member_id is None
    document = {"member_id": member_id, "role": wallet.doc["role"], "kid": wallet.kid,
                "status": "queued" if queued else "enrolled", "msg_id": entry["msg_id"]}
    if queued:
        document["reason"] = report.unreachable
    emit(as_json, document, lambda out: out.print(
        f"center unreachable; the signed enrollment waits in the outbox: run `wallet sync` later ({report.unreachable})"
        if queued else f"enrolled as [bold]{member_id}[/] ({wallet.doc['role']})"))


def _render_status(out, document: dict) -> None:
    token = document["token"]
    out.print(f"token: {token.get('label', '?')} serial {token.get('serial', '?')} "
              f"({token.get('manufacturer', '')} {token.get('model', '')})" if token["present"]
              else f"token: not found ({token.get('problem')})")
    if token["present"]:
        pin = token["pin"]
        tries = pin["tries_left"] if pin["tries_left"] is not None else "not reported by the token"
        out.print(f"PIN: {'LOCKED' if pin['locked'] else 'ok'}, tries left: {tries}"
                  + (" (count low)" if pin["count_low"] else ""))
    out.print(f"key id: {document['kid']}\nalgorithm: {document['algorithm']} ({document['key_mode']} key)")
    out.print(f"member id: {document['member_id'] or 'not enrolled'}"
              + (f" ({document['role']})" if document["role"] else ""))
    if document["center"]:
        out.print(f"center: {document['center']['center_id']} at {document['center']['url']}")
    if document["outbox"]:
        out.print(f"outbox: {document['outbox']} message(s) waiting; run `wallet sync`")


def _describe_result(details: dict, currency: str | None = None) -> str:
    """One line for a history entry or delivery result, whatever its type."""
    if "code" in details:
        return f"{details['code']}: {details.get('message', '')}"
    money = format_amount(details["amount_minor"], details.get("currency") or currency or "JPY") \
        if "amount_minor" in details else ""
    action = details.get("action")
    if "member_id" in details and action == "enrolled":
        return f"enrolled {details['member_id']} ({details.get('role', '')})"
    if action == "paid":
        return f"{money} to {details['store_name']} ({details['store_id']}), order {details['order_ref']}, " \
               f"payment {details['payment_id']}"
    if "topup_id" in details:
        return f"top-up {details['topup_id']}: {money} by {details.get('method', '?')}, {details.get('status', '')}"
    if "refund_id" in details:
        return f"refund {details['refund_id']} of payment {details['payment_id']}: {money}"
    if "payout_id" in details:
        return f"payout {details['payout_id']}: {money} to {details.get('bank_account', 'the bank')}"
    if "buyer_id" in details and "payment_id" in details:
        return f"{money} from {details['buyer_id']}, order {details['order_ref']}, payment {details['payment_id']}"
    return ", ".join(f"{k}={v}" for k, v in sorted(details.items()) if k != "action")


def _when(at_ms: int) -> str:
    return dt.datetime.fromtimestamp(at_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _choice(value: str, options: dict, option_name: str):
    if value not in options:
        raise CliError(f"{option_name} must be one of {', '.join(options)}, not {value!r}")
    return options[value]


def _read_entropy(path: Optional[Path]) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()[:4096]
    except OSError as error:
        raise CliError(f"cannot read --entropy-file {path}: {error.strerror}") from None
    if len(data) < 16:
        raise CliError("--entropy-file must hold at least 16 bytes")
    return data


def main() -> None:
    run_cli(app, (VaultError, TokenError, WalletError, WireError, OSError))


if __name__ == "__main__":
    main()
