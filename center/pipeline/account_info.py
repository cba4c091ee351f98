"""The `account_info` handler: a member's or store's signed question "whose key is this, and how
far has the center seen it count?".

Read-only: no ledger effect. It goes through the same pipeline as every signed request
(center.pipeline.service): verified, counter advanced, audited and answered with a signed
receipt like `balance`. The answer's `highest_counter` is the key's `last_ctr` read inside this
request's transaction, after this request's own counter was accepted: the highest counter the
center has accepted from this key, this request included. A wallet that finds it above the last
counter it signed itself learns that the key signed something it did not (token_wallet.account_info).

Operators and auditors are refused (`wrong_role`): their key's account is what the operator
action `whoami` answers (center.pipeline.operator_actions).
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from center.errors import Refusal
from center.pipeline.types import CenterContext, Outcome, Signer
from center.storage.db import keys
from paywire.messages import Header

ACCOUNT_ROLES = ("member", "store")
# Built once, like the other statements on the request path.
_KEY_FACTS = select(keys.c.status, keys.c.last_ctr).where(keys.c.kid == bindparam("k_kid"))


def account_info(
    center: CenterContext, conn: Connection, signer: Signer, header: Header, body: dict, now_ms: int
) -> Outcome:
    if signer.role not in ACCOUNT_ROLES:
        raise Refusal(
            "wrong_role",
            f"a {signer.role} has no member or store account; an operator's or "
            "auditor's key is answered by the operator action whoami "
            "(`wallet operator attach`)",
        )
    key = conn.execute(_KEY_FACTS, {"k_kid": header.kid}).one()
    return Outcome(
        {
            "action": "account_info",
            "party_id": signer.party_id,
            "role": signer.role,
            "key_status": key.status,
            "highest_counter": key.last_ctr,
        }
    )
