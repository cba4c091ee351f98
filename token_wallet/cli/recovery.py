"""After a lost card: the rebind claim `wallet enroll --rebind` makes, and the recovery codes that prove it.

A recovery code (paywire.recovery) is made at each enrollment and shown once; the center keeps only
its public key. After a lost card, the holder's new key (`wallet replace-key`) enrolls with
`--rebind ID --recovery-code CODE`: the old code signs for exactly this center, account and new key.
"""

from __future__ import annotations

from hostkit.cli import CliError, read_secret
from paywire import recovery
from paywire.fields import PARTY_ID_PATTERN
from paywire.messages import ENROLL
from token_wallet.document import key_state
from token_wallet.wallet import Wallet


def check_rebind(wallet: Wallet, rebind: str | None) -> None:
    """`wallet enroll [--rebind ID]`: may this wallet's key enroll, and for which account?"""
    doc = wallet.doc
    if any(entry["type"] == ENROLL for entry in doc["outbox"]):
        pinned = ", ".join(wallet.center_urls) or "the center"
        raise CliError(
            f"an enrollment for {pinned} is already waiting in the outbox: run `wallet sync` to deliver "
            "it, or `wallet sync --center https://HOST:PORT` if that URL is wrong (the signed "
            "enrollment goes to the corrected URL of the same pinned center; repeat --center for "
            "several nodes)"
        )
    state = key_state(doc)
    if rebind is None:
        if doc["member_id"]:
            raise CliError(
                f"this wallet's new key replaces one of {doc['member_id']}: add --rebind {doc['member_id']}"
                if state == "new"
                else f"this wallet is already enrolled as {doc['member_id']}"
            )
        return
    if not PARTY_ID_PATTERN.fullmatch(rebind):
        raise CliError(
            f"--rebind {rebind[:40]!r} is not an account id: give your member id M-... (or store id S-...)"
        )
    if state != "new":
        raise CliError(
            f"this wallet's key is already enrolled ({doc['member_id']}, {state}): a lost card's new key "
            "is made with `wallet replace-key` (or `wallet init` in a new home) first"
        )
    if doc["member_id"] and doc["member_id"] != rebind:
        raise CliError(f"this wallet belongs to {doc['member_id']}, not {rebind}")


def checked_recovery_code(code: str | None, rebind: str | None) -> str | None:
    """`wallet enroll --recovery-code`: its canonical form, checked before anything is signed."""
    if code is None:
        return None
    if rebind is None:
        raise CliError("--recovery-code proves a claim to an existing account: use it with --rebind M-...")
    if code == "-":  # asked without echo (or read from $WALLET_RECOVERY_CODE_FILE): not in the shell history
        code = read_secret(what="recovery code", file_option=None, env_var="WALLET_RECOVERY_CODE_FILE")
    try:
        return recovery.normalise(code)
    except recovery.RecoveryCodeError as error:
        raise CliError(f"--recovery-code: {error}") from None


def add_recovery_fields(body: dict, *, center_id: str, new_kid: str, old_code: str | None) -> str:
    """A new recovery code's public key into the enrollment body (and, for a rebind, the old code's proof
    for exactly this center, account and new key); returns the new code, which is never stored."""
    new_code = recovery.new_code()
    body["recovery_key"] = recovery.recovery_key(new_code)
    if old_code is not None:
        body["recovery_proof"] = recovery.prove(
            old_code, center_id=center_id, party_id=body["rebind"], new_kid=new_kid
        )
    return new_code


def render_recovery_code(out, code: str, *, pending: bool) -> None:
    when = " (it takes effect once the center has accepted this key)" if pending else ""
    out.print(
        f"recovery code{when}: {code}\n"
        "  Write it down now and keep it apart from the token and this computer: it is shown only once and "
        "not stored.\n  After a lost card it proves the account is yours: `wallet enroll --rebind ID "
        "--recovery-code CODE`."
    )
