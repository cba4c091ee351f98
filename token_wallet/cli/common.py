"""What the wallet's commands share: option types, secrets, opening the vault and the token, signing
and delivering, output helpers.

Command modules (token_wallet.cli.card, wallet_home, keys, money, operator, operator_keys, ...)
import this module and helper modules (token_wallet.cli.recovery, token_choice), never each
other: each registers its commands on `app` (or a group of it; token_wallet.cli.command_index)
when token_wallet.cli.main imports it, and a run imports only the module of its command.

Long because that rule puts here whatever two command modules share: options, secrets, opening the
wallet (the wallet is looked for before password A is asked), signing and delivering, and the words
for what a person reads (answers, PIN states).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hostkit import timing
from hostkit.cli import CliError, emit, read_option_file, read_secret
from hostkit.private_files import write_new_file
from hostkit.shown import quoted
from paywire.fields import KID_PATTERN, MAX_REASON_CHARS
from paywire.messages import ENROLL, OPERATOR_ACTION
from paywire.money import AmountError, format_amount, parse_amount
from token_wallet.center_url import CenterRefused, CenterUnreachable, check_center_urls
from token_wallet.home import check_wallet_home
from token_wallet.vault import Vault
from token_wallet.vault_lock import vault_lock
from token_wallet.wallet import Wallet, vault_path
from tokens import load_driver, open_token
from tokens.base import PinStatus, Token, WrongPin

# Rich, the HTTP client, X.509 and the token modules are imported inside the functions that use
# them: each is milliseconds to tens of milliseconds of every command's start-up, and most commands
# need only some of them (issue 16's start-up budget; bench/bench_wallet_startup.py).
if TYPE_CHECKING:
    from rich.console import RenderableType

    from paywire.center_cert import CenterIdentity

DEFAULT_HOME_NAME = ".tokenpay-wallet"  # under the user's home directory
CENTER_CERT_MAX_BYTES = 16 * 1024
# A public key file is for others to read (an operator, an issuer); still never written over.
PUBLIC_FILE_MODE = 0o644
MEMBER_ROLES = ("member", "store")

Home = Annotated[Path | None, typer.Option("--home", envvar="WALLET_HOME", help="Wallet home directory")]
# A plain flag: metavar "" so that help shows `--json` alone, not a value type after it.
JsonFlag = Annotated[bool, typer.Option("--json", metavar="", help="Machine-readable output on stdout")]
PasswordAFile = Annotated[
    str | None,
    typer.Option(
        "--password-a-file", envvar="WALLET_PASSWORD_A_FILE", help="File whose first line is password A"
    ),
]
PasswordBFile = Annotated[
    str | None,
    typer.Option(
        "--password-b-file",
        envvar="WALLET_PASSWORD_B_FILE",
        help="File whose first line is password B (token PIN)",
    ),
]
PasswordAFd = Annotated[
    int | None, typer.Option("--password-a-fd", help="Read password A from this descriptor")
]
PasswordBFd = Annotated[
    int | None, typer.Option("--password-b-fd", help="Read password B from this descriptor")
]
# Repeated for a center with several nodes: every command tries them in this order (token_wallet.client).
CenterUrls = Annotated[
    list[str],
    typer.Option(
        "--center", help="Center URL, e.g. https://127.0.0.1:8443; repeat it for each node of the center"
    ),
]
CardTimeout = Annotated[
    float,
    typer.Option("--card-timeout", min=0, max=3600, help="Seconds to wait for the smartcard to be inserted"),
]


def home_dir(home: Path | None) -> Path:
    return (home or Path.home() / DEFAULT_HOME_NAME).expanduser().resolve()


def read_password_a(file: str | None, fd: int | None, *, confirm: bool = False) -> str:
    return read_secret(what="password A", file_option=file, env_var=None, fd=fd, confirm=confirm)


def read_password_b(file: str | None, fd: int | None, *, card: bool = False) -> str:
    """Password B, asked as what it is: the PIN of the token (or card) that holds the key."""
    prompt = f"password B ({'card' if card else 'token'} PIN)"
    return read_secret(what="password B", file_option=file, env_var=None, fd=fd, prompt=prompt)


def existing_vault_path(home: Path | None) -> Path:
    """The wallet's vault, refused in one line when there is none: called before password A is asked,
    so that nobody types a password for a wallet that is not there."""
    path = vault_path(home_dir(home))
    if not path.exists():
        raise CliError(f"no wallet at {path.parent}: run `wallet init` first (or give --home / WALLET_HOME)")
    return path


def unlock_wallet(home: Path | None, password_a_file: str | None, password_a_fd: int | None):
    """open_wallet with password A read only once the wallet is known to exist."""
    existing_vault_path(home)
    return open_wallet(home, read_password_a(password_a_file, password_a_fd))


@contextmanager
def open_wallet(home: Path | None, password_a: str) -> Iterator[Wallet]:
    path = existing_vault_path(home)
    check_wallet_home(path.parent, path)
    with vault_lock(path):
        vault = Vault.open(path, password_a)
        try:
            yield Wallet(vault)
        finally:
            vault.close()


@dataclass(frozen=True)
class Signing:
    """What every command that signs is told (each declares the options itself: Typer reads the
    command's own signature): the wallet home, where passwords A and B come from, how long to wait
    for a card."""

    home: Path | None
    password_a_file: str | None
    password_a_fd: int | None
    password_b_file: str | None
    password_b_fd: int | None
    card_timeout_s: float

    def open_wallet(self) -> AbstractContextManager[Wallet]:
        return unlock_wallet(self.home, self.password_a_file, self.password_a_fd)

    def token_and_pin(self, wallet: Wallet) -> tuple[Token, str]:
        """The wallet's token and password B, asked once for several signatures."""
        token = open_wallet_token(wallet, self.card_timeout_s)
        return token, ask_pin(token, self.password_b_file, self.password_b_fd)

    def sign_and_deliver(self, wallet: Wallet, msg_type: str, body: dict) -> tuple[str, dict | None, dict]:
        """Sign one message (password B), deliver it: (state, result, entry) for print_outcome."""
        token = open_wallet_token(wallet, self.card_timeout_s)
        entry = sign_message(wallet, token, msg_type, body, self.password_b_file, self.password_b_fd)
        state, result = deliver_checked(wallet, entry)
        return state, result, entry


# What to do about a refusal, where the center's words are about the wire, not the command line.
REFUSAL_HINTS = {
    "duplicate_order": "if you mean to pay that order again, re-run `wallet pay` with --allow-repeat",
    "counter_replayed": "this vault's counter is behind the center's (an older copy of the vault, or "
    "the key used elsewhere): run `wallet account-info` to check and move past it",
}


def deliver_checked(wallet: Wallet, entry: dict) -> tuple[str, dict | None]:
    report = wallet.deliver()
    state, result = report.outcome_of(entry["msg_id"])
    if state == "refused":  # a refusal the center signed for this very request
        hint = REFUSAL_HINTS.get(result["code"])
        raise CliError(
            f"the center refused it ({result['code']}): {result['message']}" + (f"; {hint}" if hint else "")
        )
    if state == "alarm":
        raise CliError(
            f"ALARM: the center's signed receipt contradicts what you signed ({result['reason']}): not "
            f"recorded as done, kept in the history; run `wallet balance` and contact the center"
        )
    if state == "unknown":
        raise CliError(
            f"the center's answer ({result['code']}, HTTP {result['status']}) carries no refusal signed "
            f"by the center's key: outcome unknown, the signed {entry['type']} stays in the outbox: "
            f"run `wallet sync`"
        )
    if state == "expired":
        raise CliError(
            f"the signed {entry['type']} expired without a receipt: outcome unknown; run `wallet balance`"
        )
    if state == "queued":
        return state, {"reason": report.unreachable}
    return state, result


def print_outcome(as_json: bool, outcome: tuple, describe) -> None:
    state, result, entry = outcome
    if state == "queued":
        document = {"status": "queued", "msg_id": entry["msg_id"], "reason": result["reason"]}
        emit(
            as_json,
            document,
            lambda out: out.print(
                f"the center could not be reached; the signed {entry['type']} waits in the outbox: "
                f"run `wallet sync` later ({result['reason']})"
            ),
        )
        return
    emit(
        as_json,
        {"status": "accepted", "msg_id": entry["msg_id"], **result},
        lambda out: out.print(describe(result)),
    )


def learn_currency(wallet: Wallet) -> str:
    return online(wallet.learn_currency, "learn its currency")


def online(action, what: str):
    try:
        return action()
    except CenterUnreachable as error:
        raise CliError(f"cannot {what}: {error}; nothing was signed") from None
    except CenterRefused as error:
        raise CliError(f"cannot {what}: {error}") from None


def read_amount(text: str, currency: str) -> int:
    try:
        return parse_amount(text, currency)
    except AmountError as error:
        raise CliError(str(error)) from None


def ask_confirmation(question: RenderableType, yes: bool, warnings: tuple[str, ...] = ()) -> None:
    """Show what is about to be signed (stderr), with any warning in bold red; ask unless --yes."""
    from rich.text import Text

    from hostkit.console import stderr_console

    stderr_console.print(question)
    for warning in warnings:
        stderr_console.print(Text(f"WARNING: {warning}", style="bold red"))
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            "confirmation needed and there is no terminal: re-run with --yes to confirm; nothing was signed"
        )
    if not typer.confirm("Confirm", default=False, err=True):
        raise CliError("not confirmed; nothing was signed")


def open_wallet_token(wallet: Wallet, card_timeout_s: float):
    load_driver(wallet.doc["token"])  # its import is the wallet's own time, not the token's
    with timing.span("token"):
        return open_token(wallet.doc["token"], card_timeout_s=card_timeout_s, on_wait=say)


def ask_pin(token, pin_file, pin_fd) -> str:
    """Password B; a card tells its tries left first, and a blocked PIN is not asked at all."""
    # Only a card counts tries; asking token.info() first would cost a card session per signature.
    # The card driver (pyscard) is loaded only when a card was opened: no module, no card.
    card_driver = sys.modules.get("tokens.openpgp_card")
    if card_driver is not None and isinstance(token, card_driver.OpenPgpCardToken):
        status = token.pin_status()
        if status.locked:
            raise CliError(
                "the card PIN (password B) is blocked: run `wallet card unblock` with the admin PIN"
            )
        say(f"card PIN (password B): {status.tries_left} tries left")
        return read_password_b(pin_file, pin_fd, card=True)
    return read_password_b(pin_file, pin_fd)


def say(message: str) -> None:
    from hostkit.console import stderr_console

    stderr_console.print(message)


def sign_message(wallet: Wallet, token, msg_type: str, body: dict, pin_file, pin_fd) -> dict:
    return sign_with_pin(wallet, token, ask_pin(token, pin_file, pin_fd), msg_type, body)


def sign_with_pin(wallet: Wallet, token, pin: str, msg_type: str, body: dict) -> dict:
    """Sign and queue one message with a password B already asked; a wrong one says the tries left."""
    return with_pin_message(
        lambda: wallet.sign_and_queue(token, pin, msg_type, body, now_s=int(time.time())), token
    )


def with_pin_message(action, token):
    try:
        return action()
    except WrongPin as error:
        status = error.status or token.pin_status()
        left = pin_tries_words(status)
        raise CliError(f"wrong password B (token PIN): nothing was signed; {left}") from None


def pin_tries_words(status: PinStatus) -> str:
    """The tries a PIN has left, in words. A card counts them; a PKCS#11 token only sets flags
    (CKF_USER_PIN_COUNT_LOW: a wrong PIN was given since the last right one; CKF_USER_PIN_FINAL_TRY:
    the next wrong one locks it), which are said here in words, never as flag names."""
    if status.locked:
        return "no tries left: the PIN is locked"
    if status.tries_left is not None:
        last = "; the last try: the next wrong PIN locks it" if status.final_try else ""
        return f"{status.tries_left} tries left{last}"
    if status.final_try:
        return "the last try: the token says the next wrong PIN locks it"
    if status.count_low:
        return "few tries left: the token says a wrong PIN was given since the last right one"
    return "the token does not tell how many tries are left"


def pin_state_line(status: PinStatus) -> str:
    """`wallet status`'s PIN line: "ok" only when no try is lost, never beside few tries left."""
    if status.locked:
        return "PIN: LOCKED"
    words = pin_tries_words(status)
    return f"PIN: {words}" if status.final_try or status.count_low else f"PIN: ok, {words}"


def describe_result(details: dict, currency: str | None = None) -> str:
    """One line for a history entry or delivery result, whatever its type."""
    if "code" in details:
        return f"{details['code']}: {details.get('message', '')}"
    money = (
        format_amount(details["amount_minor"], details.get("currency") or currency or "JPY")
        if "amount_minor" in details
        else ""
    )
    action = details.get("action")
    if "member_id" in details and action == "enrolled":
        return f"enrolled {details['member_id']} ({details.get('role', '')})"
    if (
        action == "paid"
    ):  # the store id first, the store's own name quoted after it (quoted: it cannot fake one)
        return (
            f"{money} to store {details['store_id']} {quoted(details['store_name'])}, "
            f"order {quoted(details['order_ref'])}, payment {details['payment_id']}"
        )
    if "topup_id" in details:
        return (
            f"top-up {details['topup_id']}: {money} by {details.get('method', '?')}, "
            f"{details.get('status', '')}"
        )
    if "refund_id" in details:
        return f"refund {details['refund_id']} of payment {details['payment_id']}: {money}"
    if "payout_id" in details:
        return f"payout {details['payout_id']}: {money} to {details.get('bank_account', 'the bank')}"
    if "buyer_id" in details and "payment_id" in details:
        return (
            f"{money} from {details['buyer_id']}, order {quoted(details['order_ref'])}, "
            f"payment {details['payment_id']}"
        )
    return describe_answer(details, currency)


def describe_answer(details: dict, currency: str | None) -> str:
    """The answers that move no money (balance, notices, key rotation, account facts), in the words
    of the commands that ask them; any other as its plain fields, never a Python repr."""
    action = details.get("action")
    if action == "balance" and "balance_minor" in details:
        pending = len(details.get("topups") or [])
        money = format_amount(details["balance_minor"], details.get("currency") or currency or "JPY")
        return f"balance: {money}" + (f", {pending} recent top-up(s)" if pending else "")
    if action == "notices_sent":
        return f"{details.get('count', 0)} payment notice(s) fetched"
    if action == "key_rotated":
        return f"key rotated: new key {details.get('new_kid')} ({details.get('algorithm', '?')})"
    if action == "account_info":
        return (
            f"account {details.get('party_id')} ({details.get('role')}): key {details.get('key_status')}, "
            f"highest counter {details.get('highest_counter')}"
        )
    return ", ".join(_plain_field(k, v) for k, v in sorted(details.items()) if k != "action")


def _plain_field(name: str, value: object) -> str:
    """One field for people: a list or mapping says how many it holds (the JSON output has them)."""
    if isinstance(value, list | tuple | dict):
        return f"{name}: {len(value)} item(s)"
    return f"{name}={value}"


def format_when(at_ms: int) -> str:
    return dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def choice(value: str, options: dict, option_name: str):
    if value not in options:
        raise CliError(f"{option_name} must be one of {', '.join(options)}, not {value!r}")
    return options[value]


def well_formed_center_urls(urls: list[str]) -> list[str]:
    """--center once or more: each URL well-formed (https, a host), checked before anything is read,
    signed, queued or changed."""
    try:
        return check_center_urls(urls)
    except ValueError as error:
        raise CliError(f"--center: {error}; nothing was signed or changed") from None


def same_center_urls(urls: list[str], cert_pem: bytes, center_id: str) -> None:
    """Two or more URLs must all be the one center: each that answers presents the pinned certificate
    and names the pinned center id, or the command stops here, naming it (nothing signed or queued).
    One URL is left to the TLS pin at every connection, as before several were possible: a wrong one
    only keeps a message in the outbox, and `wallet sync --center` points it elsewhere."""
    if len(urls) < 2:
        return
    from token_wallet.client import check_same_center

    try:
        check_same_center(urls, cert_pem, center_id)
    except ValueError as error:
        raise CliError(f"--center {error}; nothing was signed or changed") from None


def read_center_cert(path: Path) -> CenterIdentity:
    """The center certificate a wallet pins (`wallet enroll`, `wallet operator attach`), checked."""
    from paywire.center_cert import read_center_certificate

    try:
        return read_center_certificate(
            read_option_file(
                path,
                "--center-cert",
                max_bytes=CENTER_CERT_MAX_BYTES,
                what="a center certificate (center-cert.pem)",
            )
        )
    except ValueError as error:
        raise CliError(f"--center-cert {path}: {error}") from None


def public_key_pem(spki_der: bytes) -> str:
    from cryptography.hazmat.primitives import serialization

    public_key = serialization.load_der_public_key(spki_der)
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def write_public_file(path: Path, data: bytes, option: str) -> None:
    """A new file others may read (a public key); otherwise written like a secret: never over what is
    there."""
    try:
        write_new_file(path, data, mode=PUBLIC_FILE_MODE)
    except FileExistsError:
        raise CliError(f"{path} already exists; choose another {option} file or remove it") from None
    except OSError as error:
        raise CliError(f"cannot write {path}: {error.strerror}") from None


def refuse_member_wallet(wallet: Wallet) -> None:
    if wallet.doc["role"] in MEMBER_ROLES:
        raise CliError(
            f"this wallet is enrolled as {wallet.doc['role']} {wallet.doc['member_id']}; an operator needs "
            "a token key of its own (`wallet init --home NEW_DIR`)"
        )
    if any(entry["type"] == ENROLL for entry in wallet.doc["outbox"]):
        raise CliError("an enrollment waits in this wallet's outbox; an operator's wallet does not enroll")


def require_operator_wallet(wallet: Wallet) -> None:
    refuse_member_wallet(wallet)
    if wallet.doc["center"] is None:
        raise CliError(
            "this wallet is not attached to a center: run `wallet operator attach --center URL "
            "--center-cert PEM` first"
        )


def send_operator_action(
    signing: Signing, as_json: bool, action: str, args: dict, describe: Callable
) -> None:
    """One operator action: signed by an operator's wallet, delivered, its outcome printed."""
    with signing.open_wallet() as wallet:
        require_operator_wallet(wallet)
        outcome = signing.sign_and_deliver(wallet, OPERATOR_ACTION, {"action": action, "args": args})
    print_outcome(as_json, outcome, describe)


def check_kid(kid: str, shown_by: str) -> None:
    """Refuse a KID argument that is not a key id; `shown_by` names where the operator finds one."""
    if not KID_PATTERN.fullmatch(kid):
        raise CliError(f"KID must be a key id: 64 lower-case hex digits (as {shown_by} shows)")


def check_reason(reason: str) -> None:
    """An operator's --reason, as the wire takes it (kept in the audit trail)."""
    if not reason.strip() or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise CliError(f"--reason must be 1 to {MAX_REASON_CHARS} printable characters")
