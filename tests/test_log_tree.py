"""The audit log's Merkle tree in the database (center.ledger.log_tree), on SQLite and PostgreSQL.

After payments (single path, batch path) and entries appended without a group (an operator's
decision), every signed tree head verifies with the center's key, names the head before it, and
its root is the root of the entries' leaves recomputed from audit_log; every stored node is the
hash of the leaves it covers; the proofs log_tree answers verify. The migration builds the same
tree over a log written before it. Groups committed from two connections at once get heads in
commit order, each naming the one before.
"""

from __future__ import annotations

import json
import threading

import pytest
from alembic import command
from receipt_support import checked_by_center, receipt_seq
from sqlalchemy import select, update
from support import SoftwareSigner
from test_batch import post_batch
from test_payments_api import enroll, funded_member, pay_body

from center.errors import ApiError
from center.keys.identity import CenterSigner
from center.ledger import log_tree
from center.ledger.audit import chain_hash, verify_chain
from center.pipeline.service import Center
from center.storage.db import (
    alembic_config,
    audit_head,
    audit_log,
    current_revision,
    log_nodes,
    make_engine,
    migrate,
    tree_heads,
)
from paywire import merkle
from paywire.errors import WireError
from paywire.log_entry import entry_fields, entry_leaf_hash
from paywire.receipts import check_receipt
from paywire.tree_head import GENESIS_HEAD_SHA256, check_tree_head

# --- what the tree must be, recomputed from the entries alone ------------------------------


def entry_leaves(conn) -> list[bytes]:
    rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings().all()
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    return [entry_leaf_hash(entry_fields(row, json.loads(row["action"]))) for row in rows]


def assert_tree_matches_entries(center) -> list:
    """Every head: signed by the center, linked, root = the entries' root; every node right.
    Returns the heads (oldest first)."""
    with center.engine.connect() as conn:
        leaves = entry_leaves(conn)
        heads = conn.execute(select(tree_heads).order_by(tree_heads.c.tree_size)).all()
        nodes = conn.execute(select(log_nodes)).all()
        head_row = conn.execute(select(audit_head)).one()
    assert head_row.seq == len(leaves)
    frontier = log_tree.parse_frontier(head_row.frontier, head_row.seq)
    assert merkle.root_from_frontier(frontier) == merkle.root_of(leaves)
    # Every node stored is the hash of exactly the leaves it covers; every leaf is stored.
    for node in nodes:
        covered = leaves[node.idx << node.level : (node.idx + 1) << node.level]
        assert len(covered) == 1 << node.level, (node.level, node.idx)
        assert bytes(node.hash) == merkle.root_of(covered), (node.level, node.idx)
    assert sum(1 for node in nodes if node.level == 0) == len(leaves)
    previous, signer = None, center.signer
    for row in heads:
        head = check_tree_head(
            json.loads(row.envelope),
            center_spki=signer.spki,
            center_alg=signer.alg,
            center_id=center.center_id,
        )
        assert (head.tree_size, head.root_hash) == (row.tree_size, bytes(row.root_hash))
        assert head.head_sha256 == row.head_sha256
        assert head.root_hash == merkle.root_of(leaves[: head.tree_size])
        assert head.prev_head_sha256 == (GENESIS_HEAD_SHA256 if previous is None else previous.head_sha256)
        assert previous is None or head.timestamp_ms >= previous.timestamp_ms
        previous = head
    return heads


def assert_proofs_verify(center, heads) -> None:
    with center.engine.connect() as conn:
        leaves = entry_leaves(conn)
        old = None
        for head in heads:
            size, root = head.tree_size, bytes(head.root_hash)
            for index in range(size):
                proof = log_tree.inclusion_proof(conn, index, size)
                merkle.verify_inclusion(leaves[index], index, size, proof, root)
            if old is not None:
                proof = log_tree.consistency_proof(conn, old.tree_size, size)
                merkle.verify_consistency(old.tree_size, size, proof, bytes(old.root_hash), root)
            old = head


# --- the tree after traffic ------------------------------------------------------------------


def test_every_head_signs_the_stored_tree_and_every_proof_verifies(center, api):
    shop = enroll(center, "store", name="Corner Shop")[1]
    payer, _payer_id = funded_member(center, 5_000)  # enroll, top-up, operator's decision (no group)
    answers = []
    for order in ("a-1", "a-2", "a-3"):
        request = payer.envelope("pay", pay_body(shop, 100, order), aud=center.center_id)
        answer = center.submit(request, "pay")
        assert checked_by_center(answer, request, center)["action"] == "paid"
        answers.append(answer)
    batch = [payer.envelope("pay", pay_body(shop, 10, f"b-{i}"), aud=center.center_id) for i in range(5)]
    response = post_batch(api, batch)
    assert response.status_code == 200
    results = response.json()["results"]
    for request, answer in zip(batch, results, strict=True):
        assert checked_by_center(answer, request, center)["action"] == "paid"
    # The batch is one group: one head, the same for every item.
    assert len({json.dumps(answer["receipt"]["tree_head"]) for answer in results}) == 1
    assert [receipt_seq(a) for a in results] == list(
        range(receipt_seq(results[0]), receipt_seq(results[0]) + 5)
    )

    heads = assert_tree_matches_entries(center)
    # enroll store, enroll payer, top-up, 3 payments, one batch: a head each; the decision rides along.
    assert len(heads) == 7
    assert_proofs_verify(center, heads)
    with center.engine.connect() as conn:
        assert verify_chain(conn)[1] is None


def test_entries_without_a_group_are_covered_by_a_head_signed_on_demand(center):
    _payer, _payer_id = funded_member(center, 1_000)
    with center.engine.begin() as conn:
        head = log_tree.sign_pending(conn, center.signer.sign_tree_head)
        size = conn.execute(select(audit_head.c.seq)).scalar_one()
    assert head.tree_size == size == 3  # the operator's decision (entry 3) needed its own head
    with center.engine.begin() as conn:
        again = log_tree.sign_pending(conn, center.signer.sign_tree_head)
    assert again.head_sha256 == head.head_sha256  # nothing new: no new signature
    heads = assert_tree_matches_entries(center)
    assert [h.tree_size for h in heads] == [1, 2, 3]
    assert_proofs_verify(center, heads)


def test_a_receipt_proves_only_its_own_entry(center):
    shop = enroll(center, "store", name="Corner Shop")[1]
    payer, _ = funded_member(center, 1_000)
    request = payer.envelope("pay", pay_body(shop, 100, "x-1"), aud=center.center_id)
    answer = center.submit(request, "pay")
    signer = center.signer
    check = {"center_spki": signer.spki, "center_alg": signer.alg}
    assert check_receipt(answer["receipt"], request=request, **check)["log"]["tree_size"] == receipt_seq(
        answer
    )
    # Another request's bytes, a changed result, a wrong index or a flipped proof hash: refused.
    other = payer.envelope("pay", pay_body(shop, 100, "x-1"), aud=center.center_id)
    forged_entry = json.loads(json.dumps(answer["receipt"]))
    forged_entry["entry"]["action"]["amount_minor"] = 1
    moved = json.loads(json.dumps(answer["receipt"]))
    moved["entry"]["seq"] -= 1
    flipped = json.loads(json.dumps(answer["receipt"]))
    first = flipped["proof"][0]
    flipped["proof"][0] = ("B" if first[0] != "B" else "C") + first[1:]
    for receipt, sent in (
        (answer["receipt"], other),
        (forged_entry, request),
        (moved, request),
        (flipped, request),
    ):
        with pytest.raises(WireError):
            check_receipt(receipt, request=sent, **check)


def test_proofs_are_not_given_beyond_the_newest_signed_head(center):
    funded_member(center, 1_000)  # 3 entries, the newest head covers 2
    with center.engine.connect() as conn:
        assert log_tree.signed_size(conn) == 2
        for call in (
            lambda: log_tree.inclusion_proof(conn, 0, 3),
            lambda: log_tree.inclusion_proof(conn, 2, 2),
            lambda: log_tree.inclusion_proof(conn, -1, 2),
            lambda: log_tree.consistency_proof(conn, 1, 3),
            lambda: log_tree.consistency_proof(conn, 2, 1),
            lambda: log_tree.consistency_proof(conn, 0, 2),
        ):
            with pytest.raises(ApiError) as caught:
                call()
            assert caught.value.code == "invalid_request"
        assert log_tree.consistency_proof(conn, 2, 2) == []


# --- the migration over a log written before it ----------------------------------------------

OLD_ENTRIES = 2100  # more than the migration's chunk (2000): the frontier carries over a chunk


def write_old_chain(engine, count: int) -> None:
    """Entries as the code before revision 0012 wrote them: chain hashes, no tree."""
    with engine.begin() as conn:
        prev_hash, rows = "0" * 64, []
        for seq in range(1, count + 1):
            row = {
                "seq": seq,
                "created_at_ms": 1_700_000_000_000 + seq,
                "kid": f"operator:test-{seq % 7}",
                "alg": "none",
                "msg_type": "operator_action",
                "msg_id": f"m-{seq}",
                "payload": json.dumps({"n": seq}).encode(),
                "signature": b"",
                "action": json.dumps({"n": seq, "what": "ok"}, separators=(",", ":"), sort_keys=True),
            }
            entry_hash = chain_hash(prev_hash, row)
            rows.append({"prev_hash": prev_hash, "entry_hash": entry_hash, **row})
            prev_hash = entry_hash
        conn.execute(audit_log.insert(), rows)
        conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=count, entry_hash=prev_hash))


def test_the_migration_builds_the_tree_over_the_old_chain(db_url, center_token, center_token_signer):
    engine = make_engine(db_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0011")
    write_old_chain(engine, OLD_ENTRIES)
    migrate(engine)
    _token, key, _pin = center_token
    center = Center(
        engine=engine, signer=CenterSigner(center_token_signer, key, "center-test"), currency="JPY"
    )
    try:
        with engine.connect() as conn:
            assert conn.execute(select(tree_heads)).first() is None  # no token in the migration
            leaves = entry_leaves(conn)
            head_row = conn.execute(select(audit_head)).one()
        assert len(leaves) == OLD_ENTRIES and head_row.signed_size == 0
        assert merkle.root_from_frontier(log_tree.parse_frontier(head_row.frontier, OLD_ENTRIES)) == (
            merkle.root_of(leaves)
        )
        # The first group after the upgrade signs a head covering the old entries too.
        signer = SoftwareSigner()
        request = signer.envelope("enroll", signer.enroll_body("member"), aud=center.center_id)
        answer = center.enroll(request)
        checked_by_center(answer, request, center)
        assert receipt_seq(answer) == OLD_ENTRIES + 1
        heads = assert_tree_matches_entries(center)
        assert [h.tree_size for h in heads] == [OLD_ENTRIES + 1]
        with engine.connect() as conn:
            for index in (0, 1, 999, 2047, 2048, OLD_ENTRIES - 1):
                proof = log_tree.inclusion_proof(conn, index, OLD_ENTRIES + 1)
                merkle.verify_inclusion(
                    leaves[index], index, OLD_ENTRIES + 1, proof, bytes(heads[0].root_hash)
                )
            assert verify_chain(conn)[1] is None
    finally:
        engine.dispose()


def test_the_migration_refuses_a_log_with_a_missing_entry(db_url):
    """A gap would shift every later leaf's index: the upgrade stops, and the database stays at 0011."""
    engine = make_engine(db_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0011")
    write_old_chain(engine, 5)
    with engine.begin() as conn:  # an attacker (or a damaged disk) removes entry 3
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER audit_log_no_delete")
        else:
            conn.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        conn.execute(audit_log.delete().where(audit_log.c.seq == 3))
    try:
        with pytest.raises(RuntimeError, match="audit entry 3 is missing"):
            migrate(engine)
        assert current_revision(engine) == "0011"
    finally:
        engine.dispose()


# --- groups from two connections at once ------------------------------------------------------


def test_groups_committed_concurrently_get_heads_in_commit_order(center):
    shop = enroll(center, "store", name="Corner Shop")[1]
    payers = [funded_member(center, 10_000)[0] for _ in range(2)]
    failures: list[BaseException] = []

    def pay_many(payer: SoftwareSigner, tag: str) -> None:
        try:
            for i in range(15):
                request = payer.envelope("pay", pay_body(shop, 10, f"{tag}-{i}"), aud=center.center_id)
                checked_by_center(center.submit(request, "pay"), request, center)
        except BaseException as error:  # reported below, in the test's thread
            failures.append(error)

    threads = [threading.Thread(target=pay_many, args=(p, f"t{n}")) for n, p in enumerate(payers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    heads = assert_tree_matches_entries(center)  # linked, each over exactly the entries before it
    with center.engine.connect() as conn:
        signed = conn.execute(select(audit_head)).one()
    assert (signed.signed_size, signed.head_sha256, signed.head_timestamp_ms) == (
        heads[-1].tree_size,
        heads[-1].head_sha256,
        heads[-1].timestamp_ms,
    )
    assert heads[-1].tree_size == 1 + 2 * 3 + 30  # the shop, two funded payers, 30 payments
