"""Look-alike store names (issue 17.2): flagged at enrollment, decided by an operator.

A buyer confirms a payment by the store's name and id. A second store named
exactly like the first, or with a homoglyph of it (Cyrillic 'а' for Latin
'a', fullwidth letters, 'rn' for 'm', '0' for 'O'), would pass a glance at the
name. Each store's name is reduced to its confusable skeleton (UTS #39, from
the `disarm` library: NFKC, the Unicode confusables table, case fold, digits
0/1 as O/l, whitespace collapsed), and the skeleton's hash kept. A new store
whose skeleton an earlier store already has is enrolled but flagged, naming
the earlier store; the wallet warns loudly when paying it and refuses --yes
until an operator clears the flag (`center operator clear-store`).

Flagging, not refusing: a chain's second branch may rightly share a name,
and an operator who knows the stores decides.
"""

from __future__ import annotations

import hashlib

from disarm import skeleton_key
from sqlalchemy import Connection, Engine, insert, select, update

from center.errors import ApiError
from center.ledger import audit
from center.storage.db import parties, store_names

FLAG_NONE, FLAG_FLAGGED, FLAG_CLEARED = "none", "flagged", "cleared"
MAX_LISTED = 1000


def skeleton_sha256(name: str) -> str:
    """The hash of the name's confusable skeleton: equal for names a person could take for each other."""
    # digit_policy="tr39": 0 is O and 1 is l, as in UTS #39; "H0shi" is a look-alike of "Hoshi".
    # disarm folds case after the confusables, and capital I (TR39's I/l/1 class) to l before it:
    # "KISSA" would key as "klssa" and "Kissa" as "kissa". i and l are one letter here, so a name
    # in capitals matches its mixed-case twin; over-flagging costs an operator's look, nothing more.
    return hashlib.sha256(
        skeleton_key(name, digit_policy="tr39").replace("i", "l").encode("utf-8")
    ).hexdigest()


def record_store_name(conn: Connection, store_id: str, name: str, now_ms: int) -> str | None:
    """Inside the enrollment's transaction: keep the new store's skeleton; returns the id of the
    earlier store whose name it matches (the new store is then flagged), or None.

    Two look-alikes enrolling at once: the unique index on the first holder of a skeleton makes
    the later commit fail (PostgreSQL) and the enrollment is retried (center.pipeline.service), now seeing
    the earlier store; SQLite runs one writer at a time."""
    key = skeleton_sha256(name)
    earlier = conn.execute(
        select(store_names.c.store_id).where(
            store_names.c.skeleton_sha256 == key, store_names.c.resembles.is_(None)
        )
    ).scalar()
    conn.execute(
        insert(store_names).values(
            store_id=store_id,
            skeleton_sha256=key,
            resembles=earlier,
            flag=FLAG_NONE if earlier is None else FLAG_FLAGGED,
            created_at_ms=now_ms,
        )
    )
    return earlier


def name_flag(conn: Connection, store_id: str) -> dict:
    """What a buyer's wallet is told beside the name: flagged (and like which store)
    until an operator clears it."""
    row = conn.execute(
        select(store_names.c.flag, store_names.c.resembles).where(store_names.c.store_id == store_id)
    ).first()
    flagged = row is not None and row.flag == FLAG_FLAGGED
    return {"name_flagged": flagged, "resembles": row.resembles if flagged else None}


def list_stores(conn: Connection, *, flagged_only: bool, limit: int = MAX_LISTED) -> list[dict]:
    """Stores with their flag, newest first; each flagged one beside the store it resembles."""
    earlier = parties.alias("earlier")
    query = (
        select(
            parties.c.id,
            parties.c.name,
            parties.c.status,
            parties.c.created_at_ms,
            store_names.c.flag,
            store_names.c.resembles,
            earlier.c.name.label("resembles_name"),
            store_names.c.decided_by,
            store_names.c.decided_at_ms,
        )
        .join(store_names, store_names.c.store_id == parties.c.id)
        .outerjoin(earlier, earlier.c.id == store_names.c.resembles)
        .order_by(parties.c.created_at_ms.desc(), parties.c.id)
        .limit(min(limit, MAX_LISTED))
    )
    if flagged_only:
        query = query.where(store_names.c.flag == FLAG_FLAGGED)
    return [
        {
            "store_id": r.id,
            "name": r.name,
            "status": r.status,
            "created_at_ms": r.created_at_ms,
            "flag": r.flag,
            "resembles": r.resembles,
            "resembles_name": r.resembles_name,
            "decided_by": r.decided_by,
            "decided_at_ms": r.decided_at_ms,
        }
        for r in conn.execute(query)
    ]


def clear_store(engine: Engine, store_id: str, *, decided_by: str, now_ms: int) -> dict:
    """An operator looked and decided the store's name is its own: the flag is lifted, with an audit entry."""
    with engine.begin() as conn:
        row = conn.execute(
            select(store_names.c.flag, store_names.c.resembles)
            .where(store_names.c.store_id == store_id)
            .with_for_update()
        ).first()
        if row is None:
            raise ApiError("unknown_payee", f"no store {store_id} at this center", 404)
        view = {
            "action": "store_name_cleared",
            "store_id": store_id,
            "resembles": row.resembles,
            "repeated": row.flag != FLAG_FLAGGED,
        }
        if row.flag == FLAG_NONE:
            raise ApiError(
                "store_not_flagged", f"store {store_id}'s name was never flagged; nothing to clear", 409
            )
        if view["repeated"]:
            return view
        conn.execute(
            update(store_names)
            .where(store_names.c.store_id == store_id, store_names.c.flag == FLAG_FLAGGED)
            .values(flag=FLAG_CLEARED, decided_by=decided_by[:64], decided_at_ms=now_ms)
        )
        request = {"store_id": store_id, "decided_by": decided_by}
        audit.append_local(
            conn,
            actor=decided_by,
            request=request,
            msg_type="store_name_clear",
            msg_id=store_id,
            action=view,
            now_ms=now_ms,
        )
        return view
