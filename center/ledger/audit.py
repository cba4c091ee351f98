"""Append-only, hash-chained audit log of every accepted signed message.

entry_hash(n) = SHA-256(prev_hash || canonical JSON of entry n's fields), with
prev_hash(1) = 64 zeros. The head row holds the last seq and hash, so a
removed tail is noticed too. Verification walks the chain and names the first
entry that was changed, removed or reordered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import rfc8785
from sqlalchemy import Connection, bindparam, insert, select, update

from center.storage.db import audit_head, audit_log
from paywire.canonical import jcs_bytes
from paywire.envelope import b64url_encode

GENESIS_HASH = "0" * 64
MAX_ENTRIES_PER_APPEND = 1000
# Entries of actions taken at the center carry no member signature: an operator's decision or a
# payouts run ("none"), a funding webhook authenticated by its HMAC ("hmac-sha256").
LOCAL_ALG = "none"
WEBHOOK_ALG = "hmac-sha256"
UNSIGNED_ALGS = frozenset({LOCAL_ALG, WEBHOOK_ALG})
# audit_log.kid and audit_log.msg_id are String(64): a longer actor name or reference is cut.
MAX_KID_CHARS = 64
MAX_MSG_ID_CHARS = 64
# Built once (see center.ledger.book): every accepted request appends an entry.
_LOCK_HEAD = select(audit_head.c.seq, audit_head.c.entry_hash).where(audit_head.c.id == 1).with_for_update()
_INSERT_ENTRY = insert(audit_log)
_MOVE_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=bindparam("h_seq"), entry_hash=bindparam("h_hash"))
)


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    reason: str


def append(
    conn: Connection,
    *,
    kid: str,
    alg: str,
    payload: bytes,
    signature: bytes,
    msg_type: str,
    msg_id: str,
    action: dict,
    now_ms: int,
) -> int:
    """Add one entry inside the caller's transaction; returns its seq.

    Signed requests are recorded with their exact bytes and signature. Local
    actions (an operator at the console, a funding webhook) are recorded with
    kid 'operator:<who>' / 'webhook:<name>', alg LOCAL_ALG (through append_local) / WEBHOOK_ALG.
    """
    [seq] = append_many(
        conn,
        [
            {
                "kid": kid,
                "alg": alg,
                "payload": payload,
                "signature": signature,
                "msg_type": msg_type,
                "msg_id": msg_id,
                "action": action,
                "now_ms": now_ms,
            }
        ],
    )
    return seq


def append_local(
    conn: Connection, *, actor: str, request: dict, msg_type: str, msg_id: str, action: dict, now_ms: int
) -> int:
    """Record an action taken at the center (alg "none"): no member key signed it.

    `actor` names who acted ("operator:<who>", "operator:payouts"); `request` (what was asked, as
    canonical JSON) stands where a signed message's bytes would be; the signature is empty.
    """
    return append(
        conn,
        kid=actor[:MAX_KID_CHARS],
        alg=LOCAL_ALG,
        payload=rfc8785.dumps(request),
        signature=b"",
        msg_type=msg_type,
        msg_id=msg_id[:MAX_MSG_ID_CHARS],
        action=action,
        now_ms=now_ms,
    )


def append_many(conn: Connection, entries: list[dict]) -> list[int]:
    """Add entries in order inside the caller's transaction (one head lock, one insert); returns their seqs.

    Each entry: kid, alg, payload, signature, msg_type, msg_id, action (a dict), now_ms.
    """
    assert 1 <= len(entries) <= MAX_ENTRIES_PER_APPEND
    head = conn.execute(_LOCK_HEAD).one()
    seq, prev_hash, rows = head.seq, head.entry_hash, []
    for entry in entries:
        seq += 1
        row = {
            "seq": seq,
            "created_at_ms": entry["now_ms"],
            "kid": entry["kid"],
            "alg": entry["alg"],
            "msg_type": entry["msg_type"],
            "msg_id": entry["msg_id"],
            "payload": entry["payload"],
            "signature": entry["signature"],
            "action": jcs_bytes(entry["action"]).decode(),
        }
        entry_hash = chain_hash(prev_hash, row)
        rows.append({"prev_hash": prev_hash, "entry_hash": entry_hash, **row})
        prev_hash = entry_hash
    conn.execute(_INSERT_ENTRY, rows if len(rows) > 1 else rows[0])
    conn.execute(_MOVE_HEAD, {"h_seq": seq, "h_hash": prev_hash})
    return [row["seq"] for row in rows]


def chain_hash(prev_hash: str, row: dict) -> str:
    fields = entry_fields(row, json.loads(row["action"]))
    return hashlib.sha256(bytes.fromhex(prev_hash) + jcs_bytes(fields)).hexdigest()


def entry_fields(row, action: object) -> dict:
    """What an entry's hash covers, as JSON: the same fields in the chain and in an export."""
    return {
        "seq": row["seq"],
        "created_at_ms": row["created_at_ms"],
        "kid": row["kid"],
        "alg": row["alg"],
        "msg_type": row["msg_type"],
        "msg_id": row["msg_id"],
        "payload": b64url_encode(bytes(row["payload"])),
        "signature": b64url_encode(bytes(row["signature"])),
        "action": action,
    }


def verify_chain(conn: Connection, *, batch_rows: int = 1000) -> tuple[int, AuditProblem | None]:
    """Return (entries checked, first problem or None)."""
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    last_seq = 0
    while True:
        rows = (
            conn.execute(
                select(audit_log)
                .where(audit_log.c.seq >= expected_seq)
                .order_by(audit_log.c.seq)
                .limit(batch_rows)
            )
            .mappings()
            .all()
        )
        for row in rows:
            if row["seq"] != expected_seq:
                missing = f"entry {expected_seq} is missing (next is {row['seq']})"
                return checked, AuditProblem(expected_seq, missing)
            if row["prev_hash"] != prev_hash:
                return checked, AuditProblem(row["seq"], "entry does not link to the one before it")
            if chain_hash(prev_hash, dict(row)) != row["entry_hash"]:
                return checked, AuditProblem(row["seq"], "entry content changed since it was written")
            prev_hash, last_seq, checked = row["entry_hash"], row["seq"], checked + 1
            expected_seq += 1
        if len(rows) < batch_rows:
            break
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one()
    if head.seq != last_seq or head.entry_hash != prev_hash:
        removed = f"chain ends at {last_seq} but the head says {head.seq}: entries removed"
        return checked, AuditProblem(last_seq + 1, removed)
    return checked, None
