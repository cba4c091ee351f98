"""Operator commands: `wallet operator attach|confirm-topup|decline-topup|revoke-key` and
`wallet console-login`.

An operator's wallet holds a token key that the center's administrator added
with `center operator add` (from `wallet export-public-key`); it never runs
`wallet enroll`. Each command here is a request signed on the token (password
B) and delivered through the outbox like a payment: one that cannot be
delivered waits there, and `wallet sync` delivers it once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from paywire.messages import (CONSOLE_CHALLENGE_PATTERN, CONSOLE_LOGIN, ENROLL, KID_PATTERN, MAX_REASON_CHARS,
                              OPERATOR_ACTION, TOPUP_ID_PATTERN)
from paywire.money import format_amount
from token_wallet.cli_common import (CardTimeout, Home, JsonFlag, PasswordAFd, PasswordAFile, PasswordBFd,
                                     PasswordBFile, _learn_currency, _open_wallet, _password_a, _print_outcome,
                                     _say, _sign_and_deliver, app)
from token_wallet.cliutil import CliError, emit
from token_wallet.tokens import DEFAULT_CARD_TIMEOUT_S
from token_wallet.wallet import Wallet

operator_app = typer.Typer(help="Operator actions, each signed with this wallet's token key", no_args_is_help=True)
app.add_typer(operator_app, name="operator")

CenterUrl = Annotated[str, typer.Option("--center", help="Center URL, e.g. https://127.0.0.1:8443")]
CenterCert = Annotated[Path, typer.Option("--center-cert", help="The center's certificate (center-cert.pem) to pin")]
MEMBER_ROLES = ("member", "store")
# Base32 has no 0, 1 or 8: read them as the letters they are mistaken for.
LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})
QUEUED_EXIT_CODE = 3


@operator_app.command("attach")
def attach(
    center: CenterUrl, center_cert: CenterCert,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Pin the center and ask it (a signed request) which operator account this token key belongs to."""
    identity = _center_identity(center, center_cert)
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        _refuse_member_wallet(wallet)
        previous = wallet.doc["center"]
        wallet.pin_center(center, identity.cert_pem, identity.center_id, identity.receipt_spki, identity.receipt_alg)
        try:
            state, result, entry = _sign_and_deliver(wallet, OPERATOR_ACTION, {"action": "whoami", "args": {}},
                                                     password_b_file, password_b_fd, card_timeout)
        except CliError:
            # Not attached: leave the wallet as it was (a refusal is kept in the history).
            wallet.doc["center"] = previous
            wallet.vault.save()
            raise
        if state == "delivered":
            _learn_currency(wallet)  # kept in the vault: later actions need not ask before signing
    document = {"status": "attached" if state == "delivered" else "queued", "center": center,
                "center_id": identity.center_id, "kid": wallet.kid, "msg_id": entry["msg_id"],
                "operator_id": wallet.doc["member_id"], "role": wallet.doc["role"],
                "name": result.get("name") if state == "delivered" else None}
    if state != "delivered":
        document["reason"] = result["reason"]
    emit(as_json, document, lambda out: out.print(
        f"attached to {identity.center_id} as {document['role']} [bold]{document['operator_id']}[/] "
        f"({document['name']})" if state == "delivered" else
        f"center unreachable; the check waits in the outbox: run `wallet sync` later ({document['reason']})"))


@operator_app.command("confirm-topup")
def confirm_topup(
    topup_id: Annotated[str, typer.Argument(help="The pending top-up (U-...)")],
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Confirm a pending top-up: the member's balance is credited (operators only)."""
    _decide_topup("confirm_topup", topup_id, home, as_json, password_a_file, password_a_fd, password_b_file,
                  password_b_fd, card_timeout)


@operator_app.command("decline-topup")
def decline_topup(
    topup_id: Annotated[str, typer.Argument(help="The pending top-up (U-...)")],
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Decline a pending top-up: nothing is credited (operators only)."""
    _decide_topup("decline_topup", topup_id, home, as_json, password_a_file, password_a_fd, password_b_file,
                  password_b_fd, card_timeout)


@operator_app.command("revoke-key")
def revoke_key(
    kid: Annotated[str, typer.Argument(help="The key id (64 hex digits) of the lost or compromised key")],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "reported lost",
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Revoke a key: every message it signs from now on is refused; its history stays (operators only)."""
    if not KID_PATTERN.fullmatch(kid):
        raise CliError("KID must be a key id: 64 lower-case hex digits (as `center operator list` or the "
                       "member's `wallet status` shows)")
    if not reason.strip() or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise CliError(f"--reason must be 1 to {MAX_REASON_CHARS} printable characters")
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        _require_operator_wallet(wallet)
        outcome = _sign_and_deliver(wallet, OPERATOR_ACTION, {"action": "revoke_key",
                                                               "args": {"kid": kid, "reason": reason}},
                                    password_b_file, password_b_fd, card_timeout)
    _print_outcome(as_json, outcome, lambda r: f"key {r['kid'][:16]}... of {r['member_id']} "
                   + ("was already revoked" if r["repeated"] else "revoked"))


@app.command("console-login")
def console_login(
    challenge: Annotated[str, typer.Argument(help="The code the console shows, e.g. ABCD-EFGH-IJKL-MNOP")],
    center: Annotated[Optional[str], typer.Option("--center", help="Center URL (default: the attached one)")] = None,
    center_cert: Annotated[Optional[Path], typer.Option("--center-cert", help="Its certificate, with --center")] = None,
    home: Home = None, as_json: JsonFlag = False,
    password_a_file: PasswordAFile = None, password_a_fd: PasswordAFd = None,
    password_b_file: PasswordBFile = None, password_b_fd: PasswordBFd = None,
    card_timeout: CardTimeout = DEFAULT_CARD_TIMEOUT_S,
) -> None:
    """Log the browser showing CHALLENGE in to the operator console, with a signature from this token."""
    code = normalise_challenge(challenge)
    if (center is None) != (center_cert is None):
        raise CliError("give --center and --center-cert together (or neither, to use the attached center)")
    with _open_wallet(home, _password_a(password_a_file, password_a_fd)) as wallet:
        if center is not None:
            identity = _center_identity(center, center_cert)
            wallet.pin_center(center, identity.cert_pem, identity.center_id, identity.receipt_spki,
                              identity.receipt_alg)
        elif wallet.doc["center"] is None:
            raise CliError("this wallet knows no center: run `wallet operator attach --center URL --center-cert PEM` "
                           "first, or give --center and --center-cert")
        # Device-style logins can be phished: whoever shows you a code gets the session you approve.
        _say(f"approving console login {code} at {wallet.doc['center']['url']}: only approve a code your own "
             "browser shows you")
        state, result, entry = _sign_and_deliver(wallet, CONSOLE_LOGIN, {"challenge": code}, password_b_file,
                                                 password_b_fd, card_timeout)
    if state != "delivered":
        raise CliError(f"cannot reach the center ({result['reason']}): the approval waits in the outbox and is "
                       "refused once the login expires; start a new login in the browser", QUEUED_EXIT_CODE)
    document = {"status": "approved", "challenge": code, "operator_id": result["operator_id"],
                "role": result["role"], "msg_id": entry["msg_id"], "expires_at_ms": result["expires_at_ms"]}
    emit(as_json, document, lambda out: out.print(
        f"console login {code} approved: the browser is now logged in as {result['role']} "
        f"[bold]{result['operator_id']}[/]"))


def normalise_challenge(text: str) -> str:
    """What the operator typed, as the wire carries it: upper case, four groups of four."""
    compact = re.sub(r"[\s-]", "", text[:64]).upper().translate(LOOKALIKES)
    grouped = "-".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    if not CONSOLE_CHALLENGE_PATTERN.fullmatch(grouped):
        raise CliError(f"{text[:40]!r} is not a console login code: 16 letters and digits 2-7, "
                       "like ABCD-EFGH-IJKL-MNOP")
    return grouped


def _decide_topup(action: str, topup_id: str, home, as_json, a_file, a_fd, b_file, b_fd, card_timeout) -> None:
    if not TOPUP_ID_PATTERN.fullmatch(topup_id):
        raise CliError(f"TOPUP_ID {topup_id[:40]!r} is not a top-up id (U- and 16 hex digits)")
    with _open_wallet(home, _password_a(a_file, a_fd)) as wallet:
        _require_operator_wallet(wallet)
        currency = _learn_currency(wallet)
        outcome = _sign_and_deliver(wallet, OPERATOR_ACTION, {"action": action, "args": {"topup_id": topup_id}},
                                    b_file, b_fd, card_timeout)
    _print_outcome(as_json, outcome, lambda r: f"top-up {r['topup_id']} {r['status']}"
                   + (" (already)" if r["repeated"] else "")
                   + f": {format_amount(r['amount_minor'], currency)} for {r['member_id']} by {r['method']}")


def _center_identity(url: str, cert_path: Path):
    from token_wallet.cli import _read_center_cert  # the same reading and checks as `wallet enroll`

    if not url.startswith("https://"):
        raise CliError(f"--center must be an https:// URL, not {url[:60]!r}")
    return _read_center_cert(cert_path)


def _refuse_member_wallet(wallet: Wallet) -> None:
    if wallet.doc["role"] in MEMBER_ROLES:
        raise CliError(f"this wallet is enrolled as {wallet.doc['role']} {wallet.doc['member_id']}; an operator needs "
                       "a token key of its own (`wallet init --home NEW_DIR`)")
    if any(entry["type"] == ENROLL for entry in wallet.doc["outbox"]):
        raise CliError("an enrollment waits in this wallet's outbox; an operator's wallet does not enroll")


def _require_operator_wallet(wallet: Wallet) -> None:
    _refuse_member_wallet(wallet)
    if wallet.doc["center"] is None:
        raise CliError("this wallet is not attached to a center: run `wallet operator attach --center URL "
                       "--center-cert PEM` first")
