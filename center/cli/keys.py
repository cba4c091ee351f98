"""`center operator revoke-key|bind-key|reject-key|list-keys|issue-recovery-ticket`: operators decide on keys.

A lost or compromised key is revoked (`revoke-key`). A member who lost their card enrolls a new token key
with `wallet enroll --rebind M-...`; it waits as pending_bind. The operator finds it with
`list-keys --status pending_bind` (claimed and registered identity side by side, and "recovery code
verified" when the claimant proved the account's recovery code), revokes the lost key and binds the new
one, or rejects a wrong claim. `issue-recovery-ticket` gives a member without a code a one-time one.
Assembled into the `operator` group by center.cli.main. The center's modules are imported inside the
commands (center.cli.common says why).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from center.cli.common import DataDir, JsonFlag, api_call, open_engine, operator_name
from hostkit.cli import CliError, emit

app = typer.Typer()

VERIFIED_LABELS = {"code": "recovery code verified", "ticket": "recovery ticket verified"}
# center.keys.binding.MAX_LISTED_KEYS, copied so that `center --help` need not import the database layers
# (tests/test_architecture.py checks the copy).
MAX_LISTED_KEYS = 1000
DEFAULT_LISTED_KEYS = 100
KEY_ID_HEX_DIGITS = 64
Kid = Annotated[str, typer.Argument(help="The key id (64 hex digits) of the new key")]


@app.command("revoke-key")
def revoke_key_command(
    kid: Annotated[str, typer.Argument(help="The key id (64 hex digits) of the lost or compromised key")],
    data_dir: DataDir,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "reported lost",
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key: every message it signs from now on is refused; its history stays."""
    from center.keys.admin import revoke_key
    from center.pipeline.types import now_ms

    view = api_call(
        lambda: revoke_key(
            open_engine(data_dir),
            kid,
            reason=reason,
            decided_by=f"operator:{operator_name()}",
            now_ms=now_ms(),
        )
    )
    emit(
        as_json,
        view,
        lambda out: out.print(
            f"key {kid[:16]}... of {view['member_id']} "
            + ("was already revoked" if view["repeated"] else "revoked")
        ),
    )


@app.command(
    "bind-key",
    help=(
        "Bind a pending key to the account it claims (same member id, balance, history); "
        "the old key must be revoked."
    ),
)
def bind_key_command(kid: Kid, data_dir: DataDir, as_json: JsonFlag = False) -> None:
    from center.keys.binding import bind_key
    from center.pipeline.types import now_ms

    view = api_call(
        lambda: bind_key(
            open_engine(data_dir),
            _checked_kid(kid),
            decided_by=f"operator:{operator_name()}",
            now_ms=now_ms(),
        )
    )
    emit(
        as_json,
        view,
        lambda out: out.print(
            f"key {kid[:16]}... {'was already' if view['repeated'] else 'is now'} "
            f"bound to {view['member_id']}"
        ),
    )


@app.command("reject-key")
def reject_key_command(
    kid: Kid,
    data_dir: DataDir,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "identity not confirmed",
    as_json: JsonFlag = False,
) -> None:
    """Reject a pending key's claim to an account: it can then sign nothing."""
    from center.keys.binding import reject_key
    from center.pipeline.types import now_ms

    view = api_call(
        lambda: reject_key(
            open_engine(data_dir),
            _checked_kid(kid),
            reason=reason,
            decided_by=f"operator:{operator_name()}",
            now_ms=now_ms(),
        )
    )
    emit(
        as_json,
        view,
        lambda out: out.print(
            f"key {kid[:16]}... {'was already' if view['repeated'] else 'is now'} rejected for "
            f"{view['member_id']}"
        ),
    )


@app.command("issue-recovery-ticket")
def issue_recovery_ticket_command(
    party_id: Annotated[
        str, typer.Argument(help="The account (M-... or S-...) whose holder lost card and code")
    ],
    data_dir: DataDir,
    as_json: JsonFlag = False,
) -> None:
    """A one-time recovery code for an account (after checking who asks): the member rebinds with it."""
    from center.keys.admin import issue_recovery_ticket
    from center.pipeline.types import now_ms

    view = api_call(
        lambda: issue_recovery_ticket(
            open_engine(data_dir), party_id, issued_by=f"operator:{operator_name()}", now_ms=now_ms()
        )
    )
    emit(
        as_json,
        view,
        lambda out: out.print(
            f"recovery ticket for {view['member_id']} (shown once, valid for one claim until "
            f"{_utc(view['expires_at_ms'])}):\n  {view['ticket']}\n"
            f"give it to the member only after checking who they are; they run `wallet enroll --rebind "
            f"{view['member_id']} --recovery-code TICKET ...`, then you bind the key (it shows as verified)"
        ),
    )


@app.command("list-keys")
def list_keys_command(
    data_dir: DataDir,
    party: Annotated[
        str | None, typer.Option("--party", help="Only this member's or store's keys (M-... / S-...)")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="active, revoked, pending_bind, rotated or rejected")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_LISTED_KEYS, help="At most this many keys, newest first")
    ] = DEFAULT_LISTED_KEYS,
    as_json: JsonFlag = False,
) -> None:
    """Keys with their status; a pending key shows the identity it claims beside the account's."""
    from center.keys.binding import list_keys

    found = api_call(lambda: list_keys(open_engine(data_dir), party_id=party, status=status, limit=limit))
    emit(as_json, {"keys": found}, lambda out: out.print(keys_table(found)))


def _utc(at_ms: int) -> str:
    return dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _checked_kid(kid: str) -> str:
    if len(kid) != KEY_ID_HEX_DIGITS or any(ch not in "0123456789abcdef" for ch in kid):
        raise CliError(f"{kid[:70]!r} is not a key id: give the 64 lower-case hex digits `list-keys` shows")
    return kid


def keys_table(found: list[dict]) -> Table:
    table = Table(title=f"{len(found)} key(s)")
    for column in ("key id", "account", "status", "algorithm", "claim"):
        table.add_column(column)
    for key in found:
        table.add_row(
            key["kid"],
            f"{key['member_id']} ({key['role']})",
            key["status"],
            key["algorithm"],
            _describe_claim(key["claim"]),
        )
    return table


def _describe_claim(claim: dict | None) -> str:
    if claim is None:
        return ""
    if claim["kind"] == "rotation":
        return f"rotated from {claim['replaces_kid'][:16]}..."
    claimed, registered = claim["claimed"], claim["registered"]
    lines = [f"rebind ({claim['status']})"]
    if claim.get("recovery_verified"):
        lines.append(VERIFIED_LABELS[claim["recovery_verified"]])
    for field in ("name", "address", "birth_date", "bank_account"):
        if claimed[field] or registered[field]:
            mark = "" if claimed[field] == registered[field] else "  <- differs"
            lines.append(f"{field}: {claimed[field]} / registered: {registered[field]}{mark}")
    return "\n".join(lines)
