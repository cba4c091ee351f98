"""A Merkle tree over the audit log, RFC 9162 (RFC 6962) hashing, and its proofs.

    leaf_hash = SHA-256(0x00 || entry bytes)     node_hash = SHA-256(0x01 || left || right)

The tree of n leaves splits at k, the largest power of two below n: MTH(D[0:n]) =
node_hash(MTH(D[0:k]), MTH(D[k:n])). Every node that is ever final is a *perfect*
subtree, named by NodeKey (level, index): the 2**level leaves [index << level,
(index + 1) << level). The center stores those (and only those): any other range
[a, b) a proof needs is the right fold of its perfect decomposition, so proofs are
built from stored nodes without touching the entries. The frontier of a tree of
size n is the decomposition of [0, n): one perfect subtree per set bit of n,
largest first; the root is their right fold and appending needs only them.

Pure functions, no I/O. Generation trusts its caller (the center checks sizes
against its own tree first; asserts guard the invariants). Verification trusts
nothing: every shape and size problem is WireError("log_proof_invalid").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from paywire.errors import WireError

NodeKey = tuple[
    int, int
]  # (level, index): the perfect subtree over leaves [index << level, (index+1) << level)

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# 2**40 entries is ~35 years at 1,000 entries per second; it keeps every size a safe JSON integer
# (< 2**53) and bounds every proof: inclusion <= 40 hashes, consistency <= 2 * 40.
MAX_TREE_SIZE = 2**40
MAX_LEVEL = 40
MAX_PROOF_HASHES = (
    64  # more than any honest proof at MAX_TREE_SIZE needs (inclusion <= 40, consistency <= 41)
)
# One call appends at most this many leaves: the center appends one commit group (<= 1000 entries),
# a migration or a bench appends in chunks; the returned node dict stays a few MB.
MAX_APPEND_LEAVES = 1 << 16

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _check_size(size: int) -> None:
    assert type(size) is int and 0 <= size <= MAX_TREE_SIZE, f"tree size {size!r} out of range"


def range_keys(start: int, end: int) -> list[NodeKey]:
    """The perfect subtrees that make up leaves [start, end), left to right, each as large as possible."""
    assert 0 <= start <= end <= MAX_TREE_SIZE
    keys = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else MAX_LEVEL  # alignment of start
        while start + (1 << level) > end:
            level -= 1
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def frontier_keys(size: int) -> list[NodeKey]:
    """The perfect subtrees of [0, size), largest (leftmost) first: one per set bit of size."""
    _check_size(size)
    return range_keys(0, size)


def root_from_frontier(frontier_hashes: Sequence[bytes]) -> bytes:
    """Right fold H(p1, H(p2, ... pj)): the root of a tree given its frontier (EMPTY_ROOT if none)."""
    if not frontier_hashes:
        return EMPTY_ROOT
    result = frontier_hashes[-1]
    for left in reversed(frontier_hashes[:-1]):
        result = node_hash(left, result)
    return result


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The root of the tree with these leaves (memory: one hash per level, not per node)."""
    assert len(leaf_hashes) <= MAX_TREE_SIZE
    stack: list[tuple[int, bytes]] = []  # (level, hash) of the frontier built so far
    for leaf in leaf_hashes:
        level, value = 0, leaf
        while stack and stack[-1][0] == level:
            value = node_hash(stack.pop()[1], value)
            level += 1
        stack.append((level, value))
    return root_from_frontier([value for _level, value in stack])


def _fold(keys: list[NodeKey], nodes: Mapping[NodeKey, bytes]) -> bytes:
    """The hash of the range these perfect subtrees make up (right fold, as for the root)."""
    return root_from_frontier([nodes[key] for key in keys])


def _largest_power_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)  # n >= 2


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The sibling ranges of leaf `index` (RFC 9162 PATH), deepest first."""
    assert type(index) is int and 0 <= index < size
    _check_size(size)
    low, high, siblings = 0, size, []
    while high - low > 1:
        split = low + _largest_power_below(high - low)
        if index < split:
            siblings.append((split, high))
            high = split
        else:
            siblings.append((low, split))
            low = split
    siblings.reverse()
    return siblings


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The ranges of RFC 9162 PROOF(old_size, D[new_size]), in proof order."""
    _check_size(new_size)
    assert type(old_size) is int and 0 < old_size < new_size
    low, high, complete, siblings = 0, new_size, True, []
    terminal: list[tuple[int, int]] = []
    while True:
        if old_size - low == high - low:  # SUBPROOF(m, D[m], b): the old tree's own subtree if b is false
            if not complete:
                terminal.append((low, high))
            break
        split = low + _largest_power_below(high - low)
        if old_size <= split:
            siblings.append((split, high))
            high = split
        else:
            siblings.append((low, split))
            low = split
            complete = False
    return terminal + siblings[::-1]


def _keys_of(ranges: list[tuple[int, int]]) -> list[NodeKey]:
    keys: list[NodeKey] = []
    for start, end in ranges:
        keys.extend(range_keys(start, end))
    return keys


def inclusion_keys(index: int, size: int) -> list[NodeKey]:
    """The stored perfect nodes an inclusion proof of leaf `index` in a tree of `size` is built from."""
    return _keys_of(_inclusion_ranges(index, size))


def inclusion_proof(index: int, size: int, nodes: Mapping[NodeKey, bytes]) -> list[bytes]:
    return [_fold(range_keys(start, end), nodes) for start, end in _inclusion_ranges(index, size)]


def consistency_keys(old_size: int, new_size: int) -> list[NodeKey]:
    """The stored perfect nodes a consistency proof between two sizes (0 < old < new) is built from."""
    return _keys_of(_consistency_ranges(old_size, new_size))


def consistency_proof(old_size: int, new_size: int, nodes: Mapping[NodeKey, bytes]) -> list[bytes]:
    """RFC 9162 consistency proof; old_size == new_size gives [] (nothing to prove)."""
    if old_size == new_size:
        _check_size(new_size)
        return []
    return [_fold(range_keys(start, end), nodes) for start, end in _consistency_ranges(old_size, new_size)]


# --------------------------------------------------------------------------
# Verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2): refuses, never asserts


def _refuse(why: str) -> WireError:
    return WireError("log_proof_invalid", why)


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise _refuse(f"{what} must be {HASH_BYTES} bytes")
    return value


def _check_proof(proof: object) -> list[bytes]:
    if not isinstance(proof, list | tuple) or len(proof) > MAX_PROOF_HASHES:
        raise _refuse(f"a proof is a list of at most {MAX_PROOF_HASHES} hashes")
    return [_check_hash(item, "each proof hash") for item in proof]


def _check_tree_size(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TREE_SIZE:
        raise _refuse(f"{what} must be an integer in [0, {MAX_TREE_SIZE}]")
    return value


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Leaf hash `leaf` is leaf number `index` of the tree of `size` leaves whose root is `root`."""
    leaf, root, proof = _check_hash(leaf, "leaf hash"), _check_hash(root, "root hash"), _check_proof(proof)
    index, size = _check_tree_size(index, "leaf index"), _check_tree_size(size, "tree size")
    if index >= size:
        raise _refuse("leaf index is not inside the tree")
    fn, sn, result = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            raise _refuse("inclusion proof is longer than the path")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while not fn & 1 and fn:  # skip the levels where this node has no right sibling
                fn, sn = fn >> 1, sn >> 1
        else:
            result = node_hash(result, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise _refuse("inclusion proof is shorter than the path")
    if result != root:
        raise _refuse("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """The tree of `new_size` leaves (root new_root) extends the tree of `old_size` (root old_root).

    old_size 0 is refused: an empty tree proves nothing, and the wallet never keeps one.
    """
    proof = _check_proof(proof)
    old_root, new_root = _check_hash(old_root, "old root"), _check_hash(new_root, "new root")
    old_size, new_size = _check_tree_size(old_size, "old size"), _check_tree_size(new_size, "new size")
    if old_size == 0 or old_size > new_size:
        raise _refuse("consistency needs 0 < old size <= new size")
    if old_size == new_size:
        if proof or old_root != new_root:
            raise _refuse("two heads of one size must have one root and an empty proof")
        return
    if not proof:
        raise _refuse("consistency proof is empty")
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        proof = [old_root, *proof]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    old_result = new_result = proof[0]
    for item in proof[1:]:
        if sn == 0:
            raise _refuse("consistency proof is longer than the path")
        if fn & 1 or fn == sn:
            old_result, new_result = node_hash(item, old_result), node_hash(item, new_result)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            new_result = node_hash(new_result, item)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise _refuse("consistency proof is shorter than the path")
    if old_result != old_root or new_result != new_root:
        raise _refuse("consistency proof does not lead to both roots")


# --------------------------------------------------------------------------
# Appending


@dataclass(frozen=True)
class Appended:
    """The tree after an append: its size, root and frontier, and every perfect node the append
    completed (level-0 leaf hashes included), keyed by NodeKey, for the center to store."""

    size: int
    root: bytes
    frontier: tuple[bytes, ...]
    nodes: dict[NodeKey, bytes]
    old_size: int = 0
    old_frontier: tuple[bytes, ...] = field(default=(), repr=False)

    def inclusion_proof(self, index: int) -> list[bytes]:
        """Proof for a leaf this append added, at this tree's size: the old frontier and the new
        nodes hold every node it needs (a left sibling inside the old tree is a frontier node)."""
        assert self.old_size <= index < self.size
        known = dict(zip(frontier_keys(self.old_size), self.old_frontier, strict=True))
        return inclusion_proof(index, self.size, _Overlay(self.nodes, known))


class _Overlay(Mapping):
    """Two node maps read as one, without copying the (possibly large) new-node dict."""

    def __init__(self, first: Mapping[NodeKey, bytes], second: Mapping[NodeKey, bytes]):
        self._first, self._second = first, second

    def __getitem__(self, key: NodeKey) -> bytes:
        found = self._first.get(key)
        return found if found is not None else self._second[key]

    def __iter__(self):
        yield from self._first
        yield from (key for key in self._second if key not in self._first)

    def __len__(self) -> int:
        return len(set(self._first) | set(self._second))


def append(size: int, frontier: Sequence[bytes], leaf_hashes: Sequence[bytes]) -> Appended:
    """Append leaves to the tree of `size` leaves whose frontier hashes are `frontier`."""
    _check_size(size)
    assert len(leaf_hashes) <= MAX_APPEND_LEAVES and size + len(leaf_hashes) <= MAX_TREE_SIZE
    keys = frontier_keys(size)
    assert len(keys) == len(frontier), "the frontier does not match the tree size"
    stack = [(level, index, value) for (level, index), value in zip(keys, frontier, strict=True)]
    nodes: dict[NodeKey, bytes] = {}
    for position, leaf in enumerate(leaf_hashes, start=size):
        assert len(leaf) == HASH_BYTES
        level, index, value = 0, position, leaf
        nodes[(0, position)] = leaf
        while stack and stack[-1][0] == level:
            value = node_hash(stack.pop()[2], value)
            level, index = level + 1, index >> 1
            nodes[(level, index)] = value
        stack.append((level, index, value))
    new_frontier = tuple(value for _level, _index, value in stack)
    return Appended(
        size=size + len(leaf_hashes),
        root=root_from_frontier(new_frontier),
        frontier=new_frontier,
        nodes=nodes,
        old_size=size,
        old_frontier=tuple(frontier),
    )
