"""paywire.merkle: RFC 9162 proofs against the transparency-dev vectors, and properties of append.

The vectors (../shared/vectors/merkle, Apache-2.0, data only) are the 8-leaf RFC 6962 reference
tree and its prefixes: every happy path must verify, every mutation must be refused. The
properties check the generator against an independent recursive reference (RFC 9162 MTH, PATH
and SUBPROOF written as in the RFC, over the leaves) and the verifier against the generator.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paywire import merkle
from paywire.errors import WireError

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "merkle"
PROPERTY = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def _b64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _proof(items: list[str] | None) -> list[bytes]:
    return [_b64(item) for item in items or []]


def _vector_files(kind: str) -> list[Path]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert len(files) > 20, f"vectors missing under {VECTORS / kind}"
    return files


@pytest.mark.parametrize("path", _vector_files("inclusion"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_inclusion_vectors(path: Path):
    case = json.loads(path.read_text())
    args = (
        _b64(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        _proof(case["proof"]),
        _b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(WireError) as caught:
            merkle.verify_inclusion(*args)
        assert caught.value.code == "log_proof_invalid"
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", _vector_files("consistency"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_consistency_vectors(path: Path):
    case = json.loads(path.read_text())
    args = (case["size1"], case["size2"], _proof(case["proof"]), _b64(case["root1"]), _b64(case["root2"]))
    if not case["wantErr"] and any(len(root) != merkle.HASH_BYTES for root in args[3:]):
        # One reference case (sizes equal one, roots "don't care 2") accepts any equal byte strings as
        # roots; we are stricter on purpose: a root is a SHA-256 hash, 32 bytes, or it is refused.
        with pytest.raises(WireError, match="must be 32 bytes"):
            merkle.verify_consistency(*args)
        return
    if case["wantErr"]:
        with pytest.raises(WireError) as caught:
            merkle.verify_consistency(*args)
        assert caught.value.code == "log_proof_invalid"
    else:
        merkle.verify_consistency(*args)


def test_vectors_have_happy_paths_and_mutations():
    """The parametrised tests above prove nothing if every file says wantErr (or none does)."""
    cases = [json.loads(p.read_text()) for p in _vector_files("inclusion") + _vector_files("consistency")]
    happy = sum(not case["wantErr"] for case in cases)
    assert happy >= 8 and len(cases) - happy >= 100


# --------------------------------------------------------------------------
# An independent reference: RFC 9162 section 2.1 written recursively over the leaf hashes


def _mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def _leaves(count: int, salt: int = 0) -> list[bytes]:
    return [merkle.leaf_hash(f"entry {salt} {i}".encode()) for i in range(count)]


def _all_nodes(leaves: list[bytes]) -> dict:
    return merkle.append(0, [], leaves).nodes


sizes = st.integers(min_value=1, max_value=300)


@PROPERTY
@given(sizes)
def test_root_matches_the_rfc_definition(size: int):
    leaves = _leaves(size)
    built = merkle.append(0, [], leaves)
    assert merkle.root_of(leaves) == built.root == _mth(leaves)
    assert [built.nodes[key] for key in merkle.frontier_keys(size)] == list(built.frontier)


@PROPERTY
@given(st.data())
def test_inclusion_proofs_match_the_rfc_and_verify(data):
    size = data.draw(sizes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    leaves = _leaves(size)
    nodes = _all_nodes(leaves)
    proof = merkle.inclusion_proof(index, size, nodes)
    assert proof == _path(index, leaves)
    assert set(merkle.inclusion_keys(index, size)) <= set(nodes)
    root = _mth(leaves)
    merkle.verify_inclusion(leaves[index], index, size, proof, root)
    # The same proof says nothing about any other leaf or index, nor about the next tree. (It can
    # fit the *same root* at another size; a signed head binds size and root together.)
    bigger_root = _mth([*leaves, merkle.leaf_hash(b"next")])
    for leaf, at, in_size, in_root in [
        (leaves[(index + 1) % size], index, size, root),
        (leaves[index], index + 1, size, root),
        (leaves[index], index, size + 1, bigger_root),
    ]:
        if (leaf, at, in_size) != (leaves[index], index, size):
            with pytest.raises(WireError):
                merkle.verify_inclusion(leaf, at, in_size, proof, in_root)


@PROPERTY
@given(st.data())
def test_consistency_proofs_match_the_rfc_and_verify(data):
    new_size = data.draw(st.integers(min_value=2, max_value=300))
    old_size = data.draw(st.integers(min_value=1, max_value=new_size - 1))
    leaves = _leaves(new_size)
    nodes = _all_nodes(leaves)
    proof = merkle.consistency_proof(old_size, new_size, nodes)
    assert proof == _subproof(old_size, leaves, True)
    assert set(merkle.consistency_keys(old_size, new_size)) <= set(nodes)
    old_root, new_root = _mth(leaves[:old_size]), _mth(leaves)
    merkle.verify_consistency(old_size, new_size, proof, old_root, new_root)
    # A rewritten old entry: the old root no longer fits the new tree.
    forged = list(leaves)
    forged[data.draw(st.integers(min_value=0, max_value=old_size - 1))] = merkle.leaf_hash(b"rewritten")
    with pytest.raises(WireError):
        merkle.verify_consistency(old_size, new_size, proof, _mth(forged[:old_size]), new_root)
    with pytest.raises(WireError):
        merkle.verify_consistency(old_size, new_size, proof, old_root, _mth(forged))


@PROPERTY
@given(st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=8))
def test_append_in_chunks_equals_one_append(chunks: list[int]):
    leaves = _leaves(sum(chunks), salt=7)
    whole = merkle.append(0, [], leaves)
    size, frontier, nodes = 0, (), {}
    for count in chunks:
        step = merkle.append(size, frontier, leaves[size : size + count])
        assert set(step.nodes).isdisjoint(nodes), "a node is completed exactly once"
        nodes |= step.nodes
        for index in range(size, step.size):
            assert step.inclusion_proof(index) == merkle.inclusion_proof(index, step.size, whole.nodes)
            merkle.verify_inclusion(leaves[index], index, step.size, step.inclusion_proof(index), step.root)
        assert step.root == _mth(leaves[: step.size])
        size, frontier = step.size, step.frontier
    assert nodes == whole.nodes and frontier == whole.frontier and size == len(leaves)


def test_empty_tree_and_single_leaf():
    assert merkle.root_of([]) == merkle.EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert merkle.append(0, [], []).root == merkle.EMPTY_ROOT
    leaf = merkle.leaf_hash(b"")
    assert merkle.root_of([leaf]) == leaf
    merkle.verify_inclusion(leaf, 0, 1, [], leaf)


def test_hash_prefixes_keep_leaves_and_nodes_apart():
    """A node's bytes as a leaf entry give a different hash (the second-preimage defence of RFC 6962)."""
    left, right = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.leaf_hash(left + right) != merkle.node_hash(left, right)


def test_frontier_keys():
    assert merkle.frontier_keys(0) == []
    assert merkle.frontier_keys(1) == [(0, 0)]
    assert merkle.frontier_keys(6) == [(2, 0), (1, 2)]
    assert merkle.frontier_keys(7) == [(2, 0), (1, 2), (0, 6)]
    assert merkle.frontier_keys(2**40) == [(40, 0)]
    assert merkle.range_keys(5, 13) == [(0, 5), (1, 3), (2, 2), (0, 12)]


@pytest.mark.parametrize(
    "bad",
    [
        {"leaf": b"\x00" * 31},
        {"root": b"\x00" * 33},
        {"proof": [b"\x00" * 32] * (merkle.MAX_PROOF_HASHES + 1)},
        {"proof": ["00" * 32]},
        {"proof": "not a list"},
        {"index": True},
        {"index": -1},
        {"size": merkle.MAX_TREE_SIZE + 1},
        {"size": 2.0},
    ],
)
def test_inclusion_refuses_bad_shapes_as_wire_errors(bad: dict):
    leaves = _leaves(2)
    args = {"leaf": leaves[0], "index": 0, "size": 2, "proof": [leaves[1]], "root": _mth(leaves)}
    merkle.verify_inclusion(**args)
    with pytest.raises(WireError) as caught:
        merkle.verify_inclusion(**(args | bad))
    assert caught.value.code == "log_proof_invalid"


def test_large_tree_proof_length_is_logarithmic():
    """At the size limit an inclusion proof has 40 hashes at most (sizes only: no tree is built)."""
    assert len(merkle.inclusion_keys(2**40 - 1, 2**40)) == 40
    assert len(merkle._consistency_ranges(2**39 + 1, 2**40)) <= 41


@PROPERTY
@given(st.data())
def test_any_flipped_bit_in_a_proof_is_refused(data):
    new_size = data.draw(st.integers(min_value=3, max_value=200))
    old_size = data.draw(st.integers(min_value=1, max_value=new_size - 1))
    index = data.draw(st.integers(min_value=0, max_value=new_size - 1))
    leaves = _leaves(new_size, salt=3)
    nodes = _all_nodes(leaves)
    old_root, new_root = _mth(leaves[:old_size]), _mth(leaves)
    for kind, proof in [
        ("inclusion", merkle.inclusion_proof(index, new_size, nodes)),
        ("consistency", merkle.consistency_proof(old_size, new_size, nodes)),
    ]:
        if not proof:
            continue
        at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=255))
        flipped = bytearray(proof[at])
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad = [*proof[:at], bytes(flipped), *proof[at + 1 :]]
        with pytest.raises(WireError):
            if kind == "inclusion":
                merkle.verify_inclusion(leaves[index], index, new_size, bad, new_root)
            else:
                merkle.verify_consistency(old_size, new_size, bad, old_root, new_root)
