"""Building payouts through the real domain API: enroll, top up, pay, claim.

Plain helpers, used by tests/test_payouts.py with the `center` fixture or with
an in-process Center over a `center init` data directory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from receipt_support import receipt_result
from support import SoftwareSigner

from center.pipeline.service import Center

_order_numbers = itertools.count(1)


def result_of(response: dict) -> dict:
    """The `result` the center's receipt states (its audit entry's action)."""
    return receipt_result(response)


@dataclass
class Party:
    signer: SoftwareSigner
    party_id: str
    name: str
    bank_account: str | None = None


def enroll(center: Center, role: str, **fields) -> Party:
    signer = SoftwareSigner()
    body = signer.enroll_body(role, **fields)
    result = result_of(center.enroll(signer.envelope("enroll", body, aud=center.center_id)))
    return Party(signer, result["member_id"], body["name"], body.get("bank_account"))


def top_up(center: Center, member: Party, amount_minor: int) -> None:
    body = {"amount_minor": amount_minor, "currency": center.currency, "method": "bank"}
    envelope = member.signer.envelope("topup", body, aud=center.center_id)
    topup_id = result_of(center.submit(envelope, "topup"))["topup_id"]
    center.decide_topup(topup_id, "confirm", decided_by="operator:test")


def pay(center: Center, member: Party, store: Party, amount_minor: int) -> None:
    body = {
        "payee": store.party_id,
        "payee_name": store.name,
        "amount_minor": amount_minor,
        "currency": center.currency,
        "order_ref": f"order-{next(_order_numbers)}",
    }
    center.submit(member.signer.envelope("pay", body, aud=center.center_id), "pay")


def claim_payout(center: Center, store: Party) -> dict:
    body = {"currency": center.currency}
    return result_of(center.submit(store.signer.envelope("payout", body, aud=center.center_id), "payout"))


def store_with_payout(
    center: Center,
    amount_minor: int,
    *,
    name: str = "Corner Shop",
    bank_account: str = "JP-0001-1234567",
    member: Party | None = None,
) -> tuple[Party, dict]:
    """A store paid `amount_minor` by a (new or given) member, which then claims its payout."""
    store = enroll(center, "store", name=name, bank_account=bank_account)
    if member is None:
        member = enroll(center, "member", name="Hanako Yamada")
        top_up(center, member, amount_minor)
    pay(center, member, store, amount_minor)
    return store, claim_payout(center, store)
