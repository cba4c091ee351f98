"""Operator actions: signed requests from an operator's or auditor's token key.

They arrive as `operator_action` messages ({"action", "args"}, checked on the
wire by paywire.bodies.OPERATOR_ACTION_ARGS) at POST /v1/operator/actions,
and go through the same pipeline as a member's payment (Center.submit): the
pinned key verifies the exact bytes, audience, freshness, message id and
counter are checked, the effect and the audit entry holding the signed bytes
commit in one transaction, and the center signs the receipt.

ACTIONS is the registry: the roles allowed to perform each action and what
it does inside that transaction. A top-up decision names the top-up's member,
amount and currency as the operator's wallet fetched (`show_topup`) and showed
them; the center decides only when they are the top-up's own. The console's
session never decides anything: it shows the command to run. To add an action, add its argument check to
OPERATOR_ACTION_ARGS and its entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from center.errors import ApiError, Refusal
from center.keys.admin import revoke_key_in
from center.keys.binding import bind_key_in, reject_key_in
from center.keys.operators import OPERATOR_ROLES
from center.ledger.funding import decide_topup_in
from center.pipeline.types import CenterContext, Outcome, Signer
from center.storage.db import parties, topups
from paywire.bodies import OPERATOR_ACTION_ARGS
from paywire.messages import Header

OPERATOR = frozenset({"operator"})
ANY_OPERATOR_ROLE = frozenset(OPERATOR_ROLES)


@dataclass(frozen=True)
class ActionContext:
    center: CenterContext
    signer: Signer
    header: Header
    now_ms: int

    @property
    def decided_by(self) -> str:
        return f"operator:{self.signer.party_id}"


@dataclass(frozen=True)
class OperatorAction:
    roles: frozenset[str]
    run: Callable[[Connection, ActionContext, dict], dict]


def _confirm_topup(conn: Connection, ctx: ActionContext, args: dict) -> dict:
    _require_same_topup(conn, ctx, args)
    return decide_topup_in(conn, args["topup_id"], "confirm", decided_by=ctx.decided_by, now_ms=ctx.now_ms)


def _decline_topup(conn: Connection, ctx: ActionContext, args: dict) -> dict:
    _require_same_topup(conn, ctx, args)
    return decide_topup_in(conn, args["topup_id"], "decline", decided_by=ctx.decided_by, now_ms=ctx.now_ms)


def _require_same_topup(conn: Connection, ctx: ActionContext, args: dict) -> None:
    """The signed decision names the top-up the operator was shown (`show_topup`): its member,
    amount and currency must be this top-up's, or nothing is decided."""
    topup = conn.execute(
        select(topups.c.member_id, topups.c.amount_minor)
        .where(topups.c.id == args["topup_id"])
        .with_for_update()
    ).first()
    if topup is None:
        raise ApiError("unknown_topup", f"no top-up {args['topup_id']}")
    signed = (args["member_id"], args["amount_minor"], args["currency"])
    actual = (topup.member_id, topup.amount_minor, ctx.center.currency)
    if signed != actual:
        raise Refusal(
            "topup_details_mismatch",
            f"top-up {args['topup_id']} is {actual[1]} minor units of {actual[2]} for {actual[0]}, "
            f"not {signed[1]} of {signed[2]} for {signed[0]}: nothing was decided",
            409,
        )


def _show_topup(conn: Connection, ctx: ActionContext, args: dict) -> dict:
    """An operator-signed read of one top-up: what `wallet operator confirm-topup|decline-topup` shows
    before it signs the decision. Signed, so only operators and auditors get it, and audited (a
    member's payment details, like a console read)."""
    row = conn.execute(
        select(topups, parties.c.name.label("member_name"))
        .join(parties, parties.c.id == topups.c.member_id)
        .where(topups.c.id == args["topup_id"])
    ).first()
    if row is None:
        raise ApiError("unknown_topup", f"no top-up {args['topup_id']}")
    return {
        "action": "topup_shown",
        "topup_id": row.id,
        "member_id": row.member_id,
        "member_name": row.member_name,
        "amount_minor": row.amount_minor,
        "currency": ctx.center.currency,
        "method": row.method,
        "status": row.status,
        "created_at_ms": row.created_at_ms,
        "decided_at_ms": row.decided_at_ms,
        "decided_by": row.decided_by,
    }


def _revoke_key(conn: Connection, ctx: ActionContext, args: dict) -> dict:
    return revoke_key_in(conn, args["kid"], reason=args["reason"])


def _bind_key(conn: Connection, ctx: ActionContext, args: dict) -> dict:
    return bind_key_in(conn, args["kid"], decided_by=ctx.decided_by, now_ms=ctx.now_ms)


def _reject_key(conn: Connection, ctx: ActionContext, args: dict) -> dict:
    return reject_key_in(
        conn, args["kid"], reason=args["reason"], decided_by=ctx.decided_by, now_ms=ctx.now_ms
    )


def _whoami(conn: Connection, ctx: ActionContext, args: dict) -> dict:
    """A no-op that tells a wallet which operator account its key belongs to."""
    name = conn.execute(select(parties.c.name).where(parties.c.id == ctx.signer.party_id)).scalar_one()
    return {"action": "operator_identified", "name": name}


ACTIONS: dict[str, OperatorAction] = {
    "confirm_topup": OperatorAction(OPERATOR, _confirm_topup),
    "decline_topup": OperatorAction(OPERATOR, _decline_topup),
    "revoke_key": OperatorAction(OPERATOR, _revoke_key),
    "bind_key": OperatorAction(OPERATOR, _bind_key),
    "reject_key": OperatorAction(OPERATOR, _reject_key),
    "whoami": OperatorAction(ANY_OPERATOR_ROLE, _whoami),
    "show_topup": OperatorAction(ANY_OPERATOR_ROLE, _show_topup),
}
assert set(ACTIONS) == set(OPERATOR_ACTION_ARGS), "every wire action needs a registry entry, and back"


def require_operator_key(signer: Signer) -> None:
    """Operator endpoints take operator and auditor keys only; a member's or store's key is refused."""
    if signer.role not in OPERATOR_ROLES:
        raise Refusal(
            "not_an_operator", f"this key belongs to a {signer.role}, not to an operator or auditor"
        )


def perform(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    """The `operator_action` handler (center.pipeline.handlers.HANDLERS), inside the request's transaction."""
    require_operator_key(signer)
    name = body["action"]
    action = ACTIONS[name]  # the wire check admits only registered actions
    if signer.role not in action.roles:
        raise Refusal(
            "operator_role_required",
            f"{name} needs the role {' or '.join(sorted(action.roles))}; this key's role is {signer.role}",
        )
    result = action.run(conn, ActionContext(center, signer, header, now_ms), body["args"])
    assert "operator_id" not in result and "operator_action" not in result
    return Outcome(result | {"operator_action": name, "operator_id": signer.party_id, "role": signer.role})
