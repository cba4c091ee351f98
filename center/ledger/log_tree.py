"""The audit log's Merkle tree as stored: nodes, the frontier, signed tree heads, and proofs.

center.ledger.audit appends the leaves and every completed perfect subtree (log_nodes) and moves
the frontier (audit_head.frontier) with each entry; this module signs tree heads over it and
answers proofs from the stored nodes (paywire.merkle says which nodes a proof needs: one query
fetches them). Heads are signed while audit_head is locked, so they follow the database's commit
order whichever process or node commits; each names the head before it (prev_head_sha256).
Proofs are only given up to the newest signed head: a size no head vouches for proves nothing.
The ledger cannot import the center's keys: the signing is a callable (CenterSigner.sign_tree_head).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select, tuple_

from center.errors import ApiError
from center.ledger.bulk_sql import GroupWrites
from center.storage.db import audit_head, log_nodes, tree_heads
from paywire import merkle
from paywire.envelope import Envelope
from paywire.tree_head import GENESIS_HEAD_SHA256, head_sha256

# (tree_size, root_hash, timestamp_ms, prev_head_sha256) -> the signed tree head envelope.
SignHead = Callable[..., Envelope]
# The largest tree the log holds (paywire.merkle's bound: sizes stay safe JSON integers).
MAX_TREE_SIZE = merkle.MAX_TREE_SIZE

_LATEST_HEAD = select(tree_heads).order_by(tree_heads.c.tree_size.desc()).limit(1)
_HEAD_AT = select(tree_heads).where(tree_heads.c.tree_size == bindparam("h_size"))
# The one lock on the log's head row, with everything a group or a pending head needs to know before
# it writes: the chain's and the tree's ends and the newest signed head (center.ledger.audit too).
LOCK_HEAD = (
    select(
        audit_head.c.seq,
        audit_head.c.entry_hash,
        audit_head.c.frontier,
        audit_head.c.signed_size,
        audit_head.c.head_sha256,
        audit_head.c.head_timestamp_ms,
    )
    .where(audit_head.c.id == 1)
    .with_for_update()
)


@dataclass(frozen=True)
class HeadRow:
    """A tree head just stored, with a tree_heads row's fields (no second read to return it)."""

    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    prev_head_sha256: str
    head_sha256: str
    envelope: str

    def row(self) -> dict:
        return dataclasses.asdict(self)


def frontier_text(frontier: Iterable[bytes]) -> str:
    """audit_head.frontier: the frontier's hashes in hex, largest subtree first, joined by ","."""
    return ",".join(digest.hex() for digest in frontier)


def parse_frontier(text: str, size: int) -> tuple[bytes, ...]:
    """The frontier of a tree of `size` leaves from audit_head.frontier; its length is checked."""
    frontier = tuple(bytes.fromhex(part) for part in text.split(",")) if text else ()
    if len(frontier) != len(merkle.frontier_keys(size)) or any(len(d) != 32 for d in frontier):
        raise RuntimeError(f"audit_head.frontier does not fit a tree of {size} entries")
    return frontier


def latest_head(conn: Connection):
    """The newest signed tree head row (tree_size, root_hash, timestamp_ms, prev_head_sha256,
    head_sha256, envelope), or None before the first."""
    return conn.execute(_LATEST_HEAD).first()


def head_at(conn: Connection, tree_size: int):
    """The signed tree head row of exactly this size, or None (not every size has a head)."""
    return conn.execute(_HEAD_AT, {"h_size": tree_size}).first()


def head_document(row) -> dict:
    """A tree head row's signed envelope, as the JSON object receipts and the API carry."""
    return json.loads(row.envelope)


def signed_size(conn: Connection) -> int:
    """The newest signed head's size (0 before the first)."""
    row = latest_head(conn)
    return 0 if row is None else row.tree_size


def inclusion_proof(conn: Connection, index: int, size: int) -> list[bytes]:
    """The proof that leaf `index` is in the tree of `size` leaves (size at most the newest head's)."""
    _check_size(conn, size)
    if not 0 <= index < size:
        raise ApiError("invalid_request", f"leaf index {index} is not below the tree size {size}")
    keys = merkle.inclusion_keys(index, size)
    return merkle.inclusion_proof(index, size, _nodes(conn, keys))


def consistency_proof(conn: Connection, old_size: int, new_size: int) -> list[bytes]:
    """The proof that the tree of `old_size` leaves is a prefix of the one of `new_size`."""
    _check_size(conn, new_size)
    # An empty tree proves nothing (merkle.verify_consistency refuses it too).
    if not 1 <= old_size <= new_size:
        raise ApiError("invalid_request", f"the old size {old_size} is not between 1 and {new_size}")
    if old_size == new_size:
        return []
    keys = merkle.consistency_keys(old_size, new_size)
    return merkle.consistency_proof(old_size, new_size, _nodes(conn, keys))


def _check_size(conn: Connection, size: int) -> None:
    limit = signed_size(conn)
    if not 0 <= size <= limit:
        raise ApiError("invalid_request", f"tree size {size} is beyond the newest signed tree head ({limit})")


def _nodes(conn: Connection, keys: list[merkle.NodeKey]) -> dict[merkle.NodeKey, bytes]:
    """The stored hashes of these nodes, in one query; every one must be there."""
    if not keys:
        return {}
    wanted = list(dict.fromkeys(keys))
    rows = conn.execute(
        select(log_nodes.c.level, log_nodes.c.idx, log_nodes.c.hash).where(
            tuple_(log_nodes.c.level, log_nodes.c.idx).in_(wanted)
        )
    ).all()
    found = {(row.level, row.idx): bytes(row.hash) for row in rows}
    missing = [key for key in wanted if key not in found]
    if missing:
        raise RuntimeError(f"log_nodes lacks {len(missing)} node(s) of a proof, first {missing[0]}")
    return found


def next_head(locked, *, tree_size: int, root_hash: bytes, sign_head: SignHead, now_ms: int) -> HeadRow:
    """Sign the head of `tree_size` leaves after the newest one, as the locked audit_head row names it
    (head_sha256, head_timestamp_ms: the genesis value and 0 before the first). Writes nothing:
    add_head_writes stores it. Its time never goes back from the previous head's (nodes' clocks may
    differ a little)."""
    assert locked.signed_size <= tree_size <= MAX_TREE_SIZE and len(root_hash) == 32, "tree heads only grow"
    timestamp_ms = max(now_ms, locked.head_timestamp_ms)
    envelope = sign_head(
        tree_size=tree_size,
        root_hash=root_hash,
        timestamp_ms=timestamp_ms,
        prev_head_sha256=locked.head_sha256,
    )
    return HeadRow(
        tree_size=tree_size,
        root_hash=root_hash,
        timestamp_ms=timestamp_ms,
        prev_head_sha256=locked.head_sha256,
        head_sha256=head_sha256(envelope),
        envelope=json.dumps(envelope.to_json(), separators=(",", ":")),
    )


def signed_head_values(head: HeadRow) -> dict:
    """audit_head's columns naming `head` as the newest signed one."""
    return {
        "signed_size": head.tree_size,
        "head_sha256": head.head_sha256,
        "head_timestamp_ms": head.timestamp_ms,
    }


def add_head_writes(head: HeadRow, writes: GroupWrites) -> None:
    """Store the head (the caller moves audit_head with signed_head_values, in the same writes)."""
    writes.insert(tree_heads, [head.row()])


def sign_pending(conn: Connection, sign_head: SignHead, *, now_ms: int | None = None):
    """A signed head covering every entry appended so far (operator actions, payouts and webhooks
    append without one); signs a new one only when entries wait. Returns the head row."""
    locked = conn.execute(LOCK_HEAD).one()
    if locked.signed_size == locked.seq and locked.head_sha256 != GENESIS_HEAD_SHA256:
        return latest_head(conn)
    head = next_head(
        locked,
        tree_size=locked.seq,
        root_hash=merkle.root_from_frontier(parse_frontier(locked.frontier, locked.seq)),
        sign_head=sign_head,
        now_ms=time.time_ns() // 1_000_000 if now_ms is None else now_ms,
    )
    writes = GroupWrites()
    add_head_writes(head, writes)
    writes.update_rows(audit_head, "id", {1: signed_head_values(head)})
    writes.flush(conn)
    return head
