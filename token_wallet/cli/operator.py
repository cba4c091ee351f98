"""Operator commands: `wallet operator attach|confirm-topup|decline-topup|revoke-key` and
`wallet console-login`.

An operator's wallet holds a token key that the center's administrator added
with `center operator add` (from `wallet export-public-key`); it never runs
`wallet enroll`. Each command here is a request signed on the token (password
B) and delivered through the outbox like a payment: one that cannot be
delivered waits there, and `wallet sync` delivers it once.

What you see is what you sign: `confirm-topup` and `decline-topup` first fetch
the top-up with an operator-signed read (`show_topup`), show its member, amount,
method and time, ask (--yes skips), and then sign a decision naming that member,
amount and currency; the center decides only if they are still the top-up's.
`console-login` first fetches who asked for the code (address, user agent, time,
as the center recorded them), shows it, asks, and signs the code with a hash of
those facts. Neither can be queued offline: what is approved must be seen first.

Long because each command declares its options one per line (Typer signatures, ~15 lines a
command), and the fetch-show-ask-sign steps of each decision are kept beside the command that
shows them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from hostkit.cli import CliError, emit
from paywire.bodies import console_client_sha256
from paywire.center_cert import CenterIdentity
from paywire.fields import CONSOLE_CHALLENGE_PATTERN, TOPUP_ID_PATTERN
from paywire.messages import CONSOLE_LOGIN, OPERATOR_ACTION
from paywire.money import format_amount
from token_wallet.cli.command_index import app, operator_app
from token_wallet.cli.common import (
    CardTimeout,
    CenterUrls,
    Home,
    JsonFlag,
    PasswordAFd,
    PasswordAFile,
    PasswordBFd,
    PasswordBFile,
    Signing,
    ask_confirmation,
    check_kid,
    check_reason,
    deliver_checked,
    format_when,
    learn_currency,
    online,
    print_outcome,
    read_center_cert,
    refuse_member_wallet,
    require_operator_wallet,
    same_center_urls,
    send_operator_action,
    sign_with_pin,
    well_formed_center_urls,
)
from token_wallet.wallet import Wallet
from tokens import DEFAULT_CARD_TIMEOUT_S

CenterCert = Annotated[
    Path, typer.Option("--center-cert", help="The center's certificate (center-cert.pem) to pin")
]
# Base32 has no 0, 1 or 8: read them as the letters they are mistaken for.
LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})
QUEUED_EXIT_CODE = 3
Yes = Annotated[
    bool,
    typer.Option(
        "--yes",
        metavar="",
        help="Skip the confirmation question (not password B); the details are still shown",
    ),
]


@operator_app.command("attach")
def attach(
    center: CenterUrls,
    center_cert: CenterCert,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Pin the center and ask it (a signed request) which operator account this token key belongs to."""
    urls, identity = _center_identity(center, center_cert)
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    with signing.open_wallet() as wallet:
        refuse_member_wallet(wallet)
        previous = wallet.doc["center"]
        wallet.pin_center(
            urls, identity.cert_pem, identity.center_id, identity.receipt_spki, identity.receipt_alg
        )
        try:
            state, result, entry = signing.sign_and_deliver(
                wallet, OPERATOR_ACTION, {"action": "whoami", "args": {}}
            )
        except CliError:
            # Not attached: leave the wallet as it was (a refusal is kept in the history).
            wallet.doc["center"] = previous
            wallet.vault.save()
            raise
        if state == "delivered":
            learn_currency(wallet)  # kept in the vault: later actions need not ask before signing
    document = {
        "status": "attached" if state == "delivered" else "queued",
        "center": urls[0],
        "center_urls": urls,
        "center_id": identity.center_id,
        "kid": wallet.kid,
        "msg_id": entry["msg_id"],
        "operator_id": wallet.doc["member_id"],
        "role": wallet.doc["role"],
        "name": result.get("name") if state == "delivered" else None,
    }
    if state != "delivered":
        document["reason"] = result["reason"]
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"attached to {identity.center_id} as {document['role']} {document['operator_id']} "
            f"({document['name']})"
            if state == "delivered"
            else "center unreachable; the check waits in the outbox: run `wallet sync` later "
            f"({document['reason']})"
        ),
    )


@operator_app.command("confirm-topup")
def confirm_topup(
    topup_id: Annotated[str, typer.Argument(help="The pending top-up (U-...)")],
    yes: Yes = False,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Confirm a pending top-up: the member's balance is credited (operators only); shown and asked first."""
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    _decide_topup("confirm_topup", topup_id, yes, as_json, signing)


@operator_app.command("decline-topup")
def decline_topup(
    topup_id: Annotated[str, typer.Argument(help="The pending top-up (U-...)")],
    yes: Yes = False,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Decline a pending top-up: nothing is credited (operators only); shown and asked first."""
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    _decide_topup("decline_topup", topup_id, yes, as_json, signing)


@operator_app.command("revoke-key")
def revoke_key(
    kid: Annotated[str, typer.Argument(help="The key id (64 hex digits) of the lost or compromised key")],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "reported lost",
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Revoke a key: every message it signs from now on is refused; its history stays (operators only)."""
    check_kid(kid, "`center operator list` or the member's `wallet status`")
    check_reason(reason)
    send_operator_action(
        Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s),
        as_json,
        "revoke_key",
        {"kid": kid, "reason": reason},
        lambda r: (
            f"key {r['kid'][:16]}... of {r['member_id']} "
            + ("was already revoked" if r["repeated"] else "revoked")
        ),
    )


@app.command("console-login")
def console_login(
    challenge: Annotated[str, typer.Argument(help="The code the console shows, e.g. ABCD-EFGH-IJKL-MNOP")],
    center: Annotated[
        list[str] | None,
        typer.Option(
            "--center", help="Center URL (default: the attached ones); repeated, the whole new list"
        ),
    ] = None,
    center_cert: Annotated[
        Path | None, typer.Option("--center-cert", help="Its certificate, with --center")
    ] = None,
    yes: Yes = False,
    home: Home = None,
    as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None,
    password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None,
    password_b_fd: PasswordBFd = None,
    card_timeout_s: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Log the browser showing CHALLENGE in to the operator console, with a signature from this token."""
    code = normalise_challenge(challenge)
    center = center or None  # no --center at all, whatever the option parser gives for it
    if (center is None) != (center_cert is None):
        raise CliError("give --center and --center-cert together (or neither, to use the attached center)")
    # All the URLs checked before the wallet is opened: one malformed or foreign one changes nothing.
    pinned = _center_identity(center, center_cert) if center is not None else None
    signing = Signing(home, password_a_file, password_a_fd, password_b_file, password_b_fd, card_timeout_s)
    with signing.open_wallet() as wallet:
        if pinned is not None:
            urls, identity = pinned
            wallet.pin_center(
                urls, identity.cert_pem, identity.center_id, identity.receipt_spki, identity.receipt_alg
            )
        elif wallet.doc["center"] is None:
            raise CliError(
                "this wallet knows no center: run `wallet operator attach --center URL --center-cert PEM` "
                "first, or give --center and --center-cert"
            )
        details = online(lambda: _challenge_details(wallet, code), "fetch who asked for this code")
        # Device-style logins can be phished: whoever shows you a code gets the session you approve.
        ask_confirmation(_login_question(code, wallet.doc["center"]["url"], details), yes)
        body = {
            "challenge": code,
            "client_sha256": console_client_sha256(
                code, details["client_address"], details["user_agent"], details["created_at_ms"]
            ),
        }
        state, result, entry = signing.sign_and_deliver(wallet, CONSOLE_LOGIN, body)
    if state != "delivered":
        raise CliError(
            f"cannot reach the center ({result['reason']}): the approval waits in the outbox and is "
            "refused once the login expires; start a new login in the browser",
            QUEUED_EXIT_CODE,
        )
    document = {
        "status": "approved",
        "challenge": code,
        "operator_id": result["operator_id"],
        "role": result["role"],
        "msg_id": entry["msg_id"],
        "expires_at_ms": result["expires_at_ms"],
    }
    emit(
        as_json,
        document,
        lambda out: out.print(
            f"console login {code} approved: the browser is now logged in as {result['role']} "
            f"{result['operator_id']}"
        ),
    )


def normalise_challenge(text: str) -> str:
    """What the operator typed, as the wire carries it: upper case, four groups of four."""
    compact = re.sub(r"[\s-]", "", text[:64]).upper().translate(LOOKALIKES)
    grouped = "-".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    if not CONSOLE_CHALLENGE_PATTERN.fullmatch(grouped):
        raise CliError(
            f"{text[:40]!r} is not a console login code: 16 letters and digits 2-7, like ABCD-EFGH-IJKL-MNOP"
        )
    return grouped


def _challenge_details(wallet: Wallet, code: str) -> dict:
    """Who asked for this code, as the center recorded it (a read over the pinned TLS connection)."""
    with wallet.client() as client:
        details = client.get_json(f"/v1/console/challenges/{code}")
    kinds = {
        "challenge": str,
        "client_address": str,
        "user_agent": str,
        "created_at_ms": int,
        "expires_at_ms": int,
    }
    if (
        any(type(details.get(name)) is not kind for name, kind in kinds.items())
        or details["challenge"] != code
    ):
        raise CliError(f"the center's description of console login {code} is malformed; nothing was signed")
    return details


def _login_question(code: str, url: str, details: dict) -> Text:
    # A Text, never markup: the user agent is whatever the requesting browser sent.
    question = Text(f"Console login {code} at {url} was asked for by:\n")
    for label, value in (
        ("address", details["client_address"] or "(not recorded)"),
        ("browser", details["user_agent"] or "(no user agent)"),
        ("asked at", f"{format_when(details['created_at_ms'])} UTC"),
    ):
        question.append(f"  {label:<9} ").append(value, style="bold").append("\n")
    question.append(
        "Approve only if that is your own browser, now: whoever approves a code gives that "
        "browser a console session."
    )
    return question


def _decide_topup(action: str, topup_id: str, yes: bool, as_json: bool, signing: Signing) -> None:
    if not TOPUP_ID_PATTERN.fullmatch(topup_id):
        raise CliError(f"TOPUP_ID {topup_id[:40]!r} is not a top-up id (U- and 16 hex digits)")
    with signing.open_wallet() as wallet:
        require_operator_wallet(wallet)
        currency = learn_currency(wallet)
        token, pin = signing.token_and_pin(wallet)  # asked once: for the read, then the decision
        topup = _fetch_topup(wallet, token, pin, topup_id, currency)
        ask_confirmation(_decision_question(action, topup), yes)
        args = {
            "topup_id": topup_id,
            "member_id": topup["member_id"],
            "amount_minor": topup["amount_minor"],
            "currency": topup["currency"],
        }
        entry = sign_with_pin(wallet, token, pin, OPERATOR_ACTION, {"action": action, "args": args})
        state, result = deliver_checked(wallet, entry)
    print_outcome(
        as_json,
        (state, result, entry),
        lambda r: (
            f"top-up {r['topup_id']} {r['status']}"
            + (" (already)" if r["repeated"] else "")
            + f": {format_amount(r['amount_minor'], currency)} for {r['member_id']} by {r['method']}"
        ),
    )


def _fetch_topup(wallet: Wallet, token, pin: str, topup_id: str, currency: str) -> dict:
    """The top-up as the center has it, by an operator-signed read; a read that cannot be delivered
    now is dropped from the outbox (worthless later), and nothing is decided."""
    entry = sign_with_pin(
        wallet, token, pin, OPERATOR_ACTION, {"action": "show_topup", "args": {"topup_id": topup_id}}
    )
    state, result = deliver_checked(wallet, entry)
    if state == "queued":
        wallet.doc["outbox"] = [e for e in wallet.doc["outbox"] if e["msg_id"] != entry["msg_id"]]
        wallet.vault.save()
        raise CliError(
            f"cannot fetch top-up {topup_id} from the center ({result['reason']}); nothing was decided: "
            "try again when it answers"
        )
    if result.get("action") != "topup_shown" or result.get("topup_id") != topup_id:
        raise CliError(f"the center answered the read of {topup_id} with something else; nothing was decided")
    if result["currency"] != currency:
        raise CliError(
            f"top-up {topup_id} is in {result['currency']}, this center's currency is {currency}; "
            "nothing was decided"
        )
    if result["status"] != "pending":
        raise CliError(
            f"top-up {topup_id} is already {result['status']} (by {result['decided_by']} at "
            f"{format_when(result['decided_at_ms'])} UTC); nothing was decided"
        )
    return result


def _decision_question(action: str, topup: dict) -> Text:
    # A Text, never markup: the member's name is theirs to choose.
    verb = "Confirm" if action == "confirm_topup" else "Decline"
    question = Text(f"{verb} top-up {topup['topup_id']}?\n")
    for label, value in (
        ("member", f"{topup['member_name']} ({topup['member_id']})"),
        ("amount", format_amount(topup["amount_minor"], topup["currency"])),
        ("method", topup["method"]),
        ("asked at", f"{format_when(topup['created_at_ms'])} UTC"),
    ):
        question.append(f"  {label:<9} ").append(value, style="bold").append("\n")
    question.append(
        "Confirm only when this money has arrived." if verb == "Confirm" else "Nothing will be credited."
    )
    return question


def _center_identity(urls: list[str], cert_path: Path) -> tuple[list[str], CenterIdentity]:
    """--center (once or more) and --center-cert: every URL well-formed and, with several, each that
    answers the center of that certificate; checked before the wallet changes or signs anything."""
    checked = well_formed_center_urls(urls)
    identity = read_center_cert(cert_path)
    same_center_urls(checked, identity.cert_pem, identity.center_id)
    return checked, identity
