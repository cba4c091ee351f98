"""Append-only, hash-chained audit log of every accepted signed message, and its Merkle tree.

entry_hash(n) = SHA-256(prev_hash || canonical JSON of entry n's fields), with
prev_hash(1) = 64 zeros. The head row holds the last seq and hash, so a
removed tail is noticed too. Verification walks the chain and names the first
entry that was changed, removed or reordered.

The same canonical bytes are the entry's leaf in the log's Merkle tree (RFC 9162 hashing,
leaf index = seq - 1): each append adds the leaves and every perfect subtree they complete
to log_nodes and moves the frontier in the head row, in the same transaction and under the
same lock (center.ledger.log_tree signs tree heads over it and answers proofs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import rfc8785
from sqlalchemy import Connection, Row, select

from center.ledger import log_tree
from center.ledger.bulk_sql import GroupWrites
from center.ledger.log_tree import HeadRow, frontier_text, parse_frontier, signed_head_values
from center.storage.db import audit_head, audit_log, log_nodes
from paywire import merkle
from paywire.canonical import jcs_bytes
from paywire.log_entry import entry_bytes, entry_fields

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


@dataclass(frozen=True)
class Group:
    """Entries appended together: their seqs, the tree after them (Appended: size, root, frontier,
    the new nodes, and inclusion proofs for the new leaves), the head row as locked before them,
    and the audit_log rows to write."""

    seqs: list[int]
    tree: merkle.Appended
    head: Row
    rows: list[dict] = field(repr=False)


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
    return append_group(conn, entries).seqs


def append_group(conn: Connection, entries: list[dict]) -> Group:
    """append_many, also returning the tree after the entries."""
    group = prepare_group(conn, entries)
    writes = GroupWrites()
    add_group_writes(group, writes)
    writes.flush(conn)
    return group


def prepare_group(conn: Connection, entries: list[dict]) -> Group:
    """Lock the head row and work out the entries' rows, chain hashes, leaves and tree; write nothing
    (add_group_writes does, with the group's tree head when there is one: one statement on PostgreSQL).

    The head row stays locked until the caller's transaction ends: a group's tree head is signed
    under that lock (center.pipeline.rules.seal), so heads follow commit order.
    """
    assert 1 <= len(entries) <= MAX_ENTRIES_PER_APPEND
    head = conn.execute(log_tree.LOCK_HEAD).one()
    seq, prev_hash, rows, leaves = head.seq, head.entry_hash, [], []
    frontier = parse_frontier(head.frontier, head.seq)
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
        # One canonical encoding serves both: the chain hashes it, the tree's leaf is made of it.
        encoded = entry_bytes(entry_fields(row, entry["action"]))
        entry_hash = hashlib.sha256(bytes.fromhex(prev_hash) + encoded).hexdigest()
        leaves.append(merkle.leaf_hash(encoded))
        rows.append({"prev_hash": prev_hash, "entry_hash": entry_hash, **row})
        prev_hash = entry_hash
    tree = merkle.append(head.seq, frontier, leaves)
    return Group([row["seq"] for row in rows], tree, head, rows)


def add_group_writes(group: Group, writes: GroupWrites, signed: HeadRow | None = None) -> None:
    """The group's entries, its new tree nodes and the moved head row (with `signed`, the group's
    tree head, as the newest signed one; log_tree.add_head_writes stores the head itself)."""
    writes.insert(audit_log, group.rows)
    writes.insert(
        log_nodes,
        [{"level": level, "idx": idx, "hash": digest} for (level, idx), digest in group.tree.nodes.items()],
    )
    moved = {
        "seq": group.rows[-1]["seq"],
        "entry_hash": group.rows[-1]["entry_hash"],
        "frontier": frontier_text(group.tree.frontier),
    }
    if signed is not None:
        assert signed.tree_size == group.tree.size
        moved |= signed_head_values(signed)
    writes.update_rows(audit_head, "id", {1: moved})


def chain_hash(prev_hash: str, row: dict) -> str:
    fields = entry_fields(row, json.loads(row["action"]))
    return hashlib.sha256(bytes.fromhex(prev_hash) + entry_bytes(fields)).hexdigest()


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
