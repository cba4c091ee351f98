"""The checks `center audit verify` and `center audit verify-export` share over the log's Merkle tree.

Both hold the tree as levels: levels[L] is one bytes object of the 32-byte hashes of the perfect
subtrees of 2**L leaves, in leaf order (level 0: the leaf hashes). From them every tree head's root
is recomputed (paywire.merkle.frontier_keys names the subtrees a size is made of) and compared with
what the center signed. What a passing check_heads proves: every tree head is signed by the center
key given, they chain (each names the one before it, the first names none), and the entries as
they are now hash to the root each head signed: entries changed after a head was signed fail it,
even when every chain hash, leaf, node and the frontier were recomputed to match (whoever did that
would need the center's token key to sign new heads).

Memory: the levels hold ~64 bytes per entry (64 MB at 1,000,000 entries); MAX_TREE_ENTRIES bounds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from paywire import merkle
from paywire.center_cert import read_center_certificate
from paywire.errors import WireError
from paywire.tree_head import GENESIS_HEAD_SHA256, TreeHead, check_tree_head

HASH_BYTES = 32
# 8M entries: ~512 MB of levels. Above that, verification would need to stream the levels.
MAX_TREE_ENTRIES = 8_000_000


class TreeProblem(Exception):
    """The first problem found in the tree or its heads; `seq` is the first entry it concerns (or None)."""

    def __init__(self, seq: int | None, reason: str):
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


@dataclass(frozen=True)
class CenterKey:
    """Who signs tree heads: the center's token key (its receipt key in the center certificate)."""

    center_id: str
    spki: bytes
    alg: str

    @classmethod
    def from_certificate(cls, center_id: str, cert_pem: bytes) -> CenterKey:
        """The receipt key the center's certificate names (ValueError when it names none)."""
        identity = read_center_certificate(cert_pem)
        return cls(center_id=center_id, spki=identity.receipt_spki, alg=identity.receipt_alg)


@dataclass(frozen=True)
class HeadsChecked:
    count: int
    newest_size: int  # 0 when there is no head


def check_tree_size(size: int) -> None:
    if not 0 <= size <= MAX_TREE_ENTRIES:
        raise TreeProblem(
            None, f"the log has {size} entries; verification holds at most {MAX_TREE_ENTRIES} in memory"
        )


def hash_at(level: bytes, index: int) -> bytes:
    return level[index * HASH_BYTES : (index + 1) * HASH_BYTES]


def count_hashes(level: bytes) -> int:
    return len(level) // HASH_BYTES


def parent_level(children: bytes) -> bytes:
    """The next level up: node_hash of each pair of children (an odd last child has no parent yet)."""
    node_hash = merkle.node_hash
    pairs = count_hashes(children) // 2
    return b"".join(
        node_hash(children[i * 64 : i * 64 + 32], children[i * 64 + 32 : i * 64 + 64]) for i in range(pairs)
    )


def levels_from_leaves(leaves: bytes) -> list[bytes]:
    """Every level of the tree over these leaf hashes, level 0 first, up to the last non-empty one."""
    check_tree_size(count_hashes(leaves))
    levels = [leaves]
    while count_hashes(levels[-1]) >= 2:
        levels.append(parent_level(levels[-1]))
    return levels


def first_difference(left: bytes, right: bytes) -> int:
    """The index of the first hash that differs between two levels (or the shorter one's length)."""
    for index in range(min(count_hashes(left), count_hashes(right))):
        if hash_at(left, index) != hash_at(right, index):
            return index
    return min(count_hashes(left), count_hashes(right))


def root_at(levels: list[bytes], size: int) -> bytes:
    """The root of the first `size` leaves, from the perfect subtrees it is made of."""
    frontier = [hash_at(levels[level], index) for level, index in merkle.frontier_keys(size)]
    return merkle.root_from_frontier(frontier)


def frontier_at(levels: list[bytes], size: int) -> list[bytes]:
    return [hash_at(levels[level], index) for level, index in merkle.frontier_keys(size)]


def check_heads(
    heads: Iterable[tuple[str, dict, Callable[[TreeHead], str | None] | None]],
    levels: list[bytes],
    size: int,
    key: CenterKey,
) -> HeadsChecked:
    """Check tree heads given in size order against the tree of `size` entries; raise TreeProblem.

    Each item: (where the head is, for messages; the signed envelope as JSON; an optional extra check
    of the verified head returning a problem text or None, e.g. that its database row agrees).
    """
    previous: TreeHead | None = None
    count = 0
    for where, document, extra_check in heads:
        head = _verified(where, document, key, previous)
        if head.tree_size > size:
            raise TreeProblem(
                size + 1,
                f"tree head at size {head.tree_size} is beyond the log's {size} entries: "
                "entries were removed after it was signed",
            )
        if root_at(levels, head.tree_size) != head.root_hash:
            first = previous.tree_size + 1 if previous is not None else 1
            raise TreeProblem(
                first,
                f"tree head at size {head.tree_size} does not match the entries: history was rewritten "
                f"after it was signed (an entry from {first} to {head.tree_size} was changed)",
            )
        problem = extra_check(head) if extra_check is not None else None
        if problem is not None:
            raise TreeProblem(None, f"tree head at size {head.tree_size}: {problem}")
        previous, count = head, count + 1
    return HeadsChecked(count=count, newest_size=previous.tree_size if previous is not None else 0)


def _verified(where: str, document: dict, key: CenterKey, previous: TreeHead | None) -> TreeHead:
    try:
        head = check_tree_head(document, center_spki=key.spki, center_alg=key.alg, center_id=key.center_id)
    except WireError as error:
        raise TreeProblem(None, f"{where} is not a tree head signed by the center: {error.message}") from None
    except (ValueError, KeyError, TypeError) as error:  # a body that passed the signature but not its shape
        raise TreeProblem(None, f"{where} is malformed: {error.__class__.__name__}") from None
    if previous is None:
        if head.prev_head_sha256 != GENESIS_HEAD_SHA256:
            raise TreeProblem(
                None,
                f"tree head at size {head.tree_size} is the first but names a head before it: "
                "earlier tree heads were removed",
            )
        return head
    if head.tree_size <= previous.tree_size:
        raise TreeProblem(
            None, f"tree head at size {head.tree_size} follows the one at {previous.tree_size}: out of order"
        )
    if head.prev_head_sha256 != previous.head_sha256:
        raise TreeProblem(
            previous.tree_size + 1,
            f"tree head at size {head.tree_size} does not name the head before it (size "
            f"{previous.tree_size}): a tree head was removed, replaced or inserted",
        )
    if head.timestamp_ms < previous.timestamp_ms:
        raise TreeProblem(
            None, f"tree head at size {head.tree_size} is dated before the head at {previous.tree_size}"
        )
    return head
