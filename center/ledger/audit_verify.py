"""`center audit verify`: the hash chain, the Merkle tree and every signed tree head, over one snapshot.

Checks, naming the first problem: (1) the hash chain (center.ledger.audit: each entry links to the
one before and hashes to its entry_hash; the head row ends it, so a cut tail shows); (2) every leaf,
recomputed from its entry, equals the stored one (log_nodes level 0); (3) every stored node is the
hash of its two children, none is missing, none extra; (4) audit_head.frontier is the tree's
frontier; (5) every tree head verifies with the center's key, names the head before it, and its
root recomputes from the entries (center.ledger.audit_tree_check); (6) audit_head.signed_size is the
newest head's size (a removed newest head shows). Entries after the newest head are reported as
`unsigned_entries`: information, not a failure (the next commit group's head covers them).

Reads a snapshot (center.ledger.audit_snapshot): payments go on meanwhile. Speed: entries are
re-encoded in helper processes (both cores), seq ranges of RANGE_ENTRIES, while this process checks
the stored tree; logs below PARALLEL_MIN_ENTRIES are checked in this process alone.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

from sqlalchemy import Engine

from center.ledger.audit import GENESIS_HASH
from center.ledger.audit_snapshot import Snapshot, read_snapshot
from center.ledger.audit_tree_check import (
    CenterKey,
    TreeProblem,
    check_heads,
    check_tree_size,
    count_hashes,
    first_difference,
    frontier_at,
    parent_level,
)
from center.storage.db import make_engine
from paywire import merkle
from paywire.log_entry import entry_bytes, entry_fields

RANGE_ENTRIES = 50_000
PARALLEL_MIN_ENTRIES = 20_000
WORKERS = 2
_RANGE_QUERY = (
    "SELECT seq, prev_hash, entry_hash, created_at_ms, kid, alg, msg_type, msg_id, payload, signature, "
    "action FROM audit_log WHERE seq >= ? AND seq <= ? ORDER BY seq"
)


@dataclass
class VerifyReport:
    ok: bool = True
    entries: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    tree_size: int = 0
    heads_checked: int = 0
    unsigned_entries: int = 0

    def fail(self, seq: int | None, reason: str) -> VerifyReport:
        self.ok, self.first_bad_seq, self.problem = False, seq, reason
        # Entries before the first bad one are intact (for a tree or head problem: all before it).
        self.entries = self.tree_size if seq is None else max(0, min(seq - 1, self.tree_size))
        return self

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "tree_size": self.tree_size,
            "heads_checked": self.heads_checked,
            "unsigned_entries": self.unsigned_entries,
        }


@dataclass
class _Range:
    """What one seq range of the chain gave: its leaves and ends, and its first problem."""

    first_seq: int
    leaves: bytes = b""
    first_prev_hash: str | None = None
    last_entry_hash: str | None = None
    problem: tuple[int, str] | None = None
    missing_from: int | None = None  # no entry from this seq to the range's end


def verify_log(
    engine: Engine, key: CenterKey, *, workers: int = WORKERS, range_entries: int = RANGE_ENTRIES
) -> VerifyReport:
    """Verify the audit log, its tree and its tree heads over one snapshot; never blocks writers."""
    assert 1 <= workers <= 64 and 1 <= range_entries <= 1_000_000
    report = VerifyReport()
    with read_snapshot(engine, share=True) as snapshot:
        seq, entry_hash, frontier_text, signed_size = snapshot.one(
            "SELECT seq, entry_hash, frontier, signed_size FROM audit_head WHERE id = 1"
        )
        report.tree_size = seq
        try:
            check_tree_size(seq)
            ranges = [
                (first, min(first + range_entries - 1, seq)) for first in range(1, seq + 1, range_entries)
            ]
            if workers > 1 and seq >= PARALLEL_MIN_ENTRIES:
                url = engine.url.render_as_string(hide_password=False)
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                    pending = [pool.submit(_check_range_in, url, snapshot.snapshot_id, *r) for r in ranges]
                    levels = _levels_or_problem(snapshot, seq)  # meanwhile, here
                    results = [future.result() for future in pending]
            else:
                results = [_check_range(snapshot, *r) for r in ranges]
                levels = _levels_or_problem(snapshot, seq)
            _check_chain(snapshot, results, seq, entry_hash)
            if isinstance(levels, TreeProblem):  # named after the chain's problems: those name entries
                raise levels
            _check_leaves(results, levels)
            _check_nodes(levels)
            _check_frontier(levels, seq, frontier_text)
            heads = check_heads(_head_rows(snapshot), levels, seq, key)
        except TreeProblem as problem:
            return report.fail(problem.seq, problem.reason)
    report.heads_checked = heads.count
    report.unsigned_entries = seq - heads.newest_size
    if signed_size != heads.newest_size:
        return report.fail(
            None,
            f"audit_head says a tree head was signed at size {signed_size}, but the newest one is at "
            f"{heads.newest_size}: tree heads were removed (or the head row edited)",
        )
    report.entries = seq
    return report


# --- the chain and the leaves, one seq range at a time (in a helper process for big logs) ------------


def _check_range_in(url: str, snapshot_id: str | None, first: int, last: int) -> _Range:
    engine = make_engine(url, pool_size=1)
    try:
        with read_snapshot(engine, join=snapshot_id) as snapshot:
            return _check_range(snapshot, first, last)
    finally:
        engine.dispose()


def _check_range(snapshot: Snapshot, first: int, last: int) -> _Range:
    """Re-encode entries first..last: each must hash to its entry_hash and link to the one before."""
    result = _Range(first_seq=first)
    leaves, leaf_hash, sha256 = [], merkle.leaf_hash, hashlib.sha256
    expected, prev_hash = first, None
    rows = snapshot.rows(_RANGE_QUERY, (first, last))
    for (
        seq,
        row_prev,
        row_hash,
        created_at_ms,
        kid,
        alg,
        msg_type,
        msg_id,
        payload,
        signature,
        action,
    ) in rows:
        if seq != expected:
            result.problem = (expected, f"entry {expected} is missing (next is {seq})")
            break
        if prev_hash is None:
            result.first_prev_hash = row_prev
        elif row_prev != prev_hash:
            result.problem = (seq, "entry does not link to the one before it")
            break
        row = {
            "seq": seq,
            "created_at_ms": created_at_ms,
            "kid": kid,
            "alg": alg,
            "msg_type": msg_type,
            "msg_id": msg_id,
            "payload": payload,
            "signature": signature,
        }
        try:
            encoded = entry_bytes(entry_fields(row, json.loads(action)))
        except ValueError:
            result.problem = (seq, "entry content changed since it was written (its action is not JSON)")
            break
        if sha256(bytes.fromhex(row_prev) + encoded).hexdigest() != row_hash:
            result.problem = (seq, "entry content changed since it was written")
            break
        leaves.append(leaf_hash(encoded))
        prev_hash, expected = row_hash, seq + 1
    else:
        if expected <= last:
            result.missing_from = expected
    result.leaves, result.last_entry_hash = b"".join(leaves), prev_hash
    return result


def _check_chain(snapshot: Snapshot, results: list[_Range], size: int, head_hash: str) -> None:
    prev_hash = GENESIS_HASH
    for result in results:
        if result.first_prev_hash is not None and result.first_prev_hash != prev_hash:
            raise TreeProblem(result.first_seq, "entry does not link to the one before it")
        if result.problem is not None:
            raise TreeProblem(*result.problem)
        if result.missing_from is not None:
            raise TreeProblem(result.missing_from, _missing(snapshot, result.missing_from, size))
        prev_hash = result.last_entry_hash or prev_hash
    beyond = snapshot.one("SELECT MIN(seq) FROM audit_log WHERE seq > ?", (size,))
    if beyond is not None and beyond[0] is not None:
        raise TreeProblem(size + 1, f"entries continue past the head ({size}): the head row was moved back")
    if prev_hash != head_hash:
        raise TreeProblem(size or None, "the last entry's hash is not the head's")


def _missing(snapshot: Snapshot, seq: int, size: int) -> str:
    after = snapshot.one("SELECT MIN(seq) FROM audit_log WHERE seq > ? AND seq <= ?", (seq, size))
    if after is None or after[0] is None:
        return f"chain ends at {seq - 1} but the head says {size}: entries removed"
    return f"entry {seq} is missing (next is {after[0]})"


def _check_leaves(results: list[_Range], levels: list[bytes]) -> None:
    leaves = b"".join(result.leaves for result in results)
    if leaves != levels[0]:
        index = first_difference(leaves, levels[0])
        raise TreeProblem(index + 1, f"the stored leaf of entry {index + 1} (log_nodes) is not its entry's")


# --- the stored tree ---------------------------------------------------------------------------------


def _levels_or_problem(snapshot: Snapshot, size: int) -> list[bytes] | TreeProblem:
    try:
        return _stored_levels(snapshot, size)
    except TreeProblem as problem:
        return problem


def _stored_levels(snapshot: Snapshot, size: int) -> list[bytes]:
    """log_nodes as levels, each exactly size >> level hashes, in order: a gap or an extra node fails."""
    levels: list[bytearray] = [bytearray()]
    expected = _node_keys(size)
    want = next(expected, None)
    for level, index, digest in snapshot.rows("SELECT level, idx, hash FROM log_nodes ORDER BY level, idx"):
        if want is None or (level, index) < want:
            raise TreeProblem(None, f"log_nodes holds node ({level}, {index}), which a tree of {size} lacks")
        if (level, index) > want:
            raise TreeProblem((want[1] << want[0]) + 1, f"log_nodes lacks node {want}")
        if len(digest) != 32:
            raise TreeProblem((index << level) + 1, f"log_nodes node ({level}, {index}) is not 32 bytes")
        if len(levels) == level:
            levels.append(bytearray())
        levels[level] += digest
        want = next(expected, None)
    if want is not None:
        raise TreeProblem((want[1] << want[0]) + 1, f"log_nodes lacks node {want}")
    return [bytes(level) for level in levels]


def _node_keys(size: int):
    """(level, index) of every perfect subtree of a tree of `size` leaves, in (level, index) order."""
    level = 0
    while size >> level:
        for index in range(size >> level):
            yield level, index
        level += 1


def _check_nodes(levels: list[bytes]) -> None:
    for level in range(1, len(levels)):
        computed = parent_level(levels[level - 1])
        if computed != levels[level]:
            index = first_difference(computed, levels[level])
            raise TreeProblem(
                (index << level) + 1, f"log_nodes node ({level}, {index}) is not the hash of its children"
            )
        assert count_hashes(computed) == count_hashes(levels[level])


def _check_frontier(levels: list[bytes], size: int, text: str) -> None:
    if text != ",".join(digest.hex() for digest in frontier_at(levels, size)):
        raise TreeProblem(None, "audit_head.frontier is not the frontier of the stored tree")


def _head_rows(snapshot: Snapshot):
    rows = snapshot.rows(
        "SELECT tree_size, root_hash, timestamp_ms, prev_head_sha256, head_sha256, envelope "
        "FROM tree_heads ORDER BY tree_size"
    )
    for tree_size, root_hash, timestamp_ms, prev_sha256, head_sha256, envelope in rows:
        try:
            document = json.loads(envelope)
        except ValueError:
            raise TreeProblem(None, f"the tree head stored at size {tree_size} is not JSON") from None
        stored = (tree_size, bytes(root_hash), timestamp_ms, prev_sha256, head_sha256)

        def agrees(head, stored=stored) -> str | None:
            signed = (
                head.tree_size,
                head.root_hash,
                head.timestamp_ms,
                head.prev_head_sha256,
                head.head_sha256,
            )
            return None if signed == stored else "its tree_heads row differs from the envelope it stores"

        yield f"the tree head stored at size {tree_size}", document, agrees
