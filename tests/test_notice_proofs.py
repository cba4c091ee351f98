"""A store's notices carry their payments' inclusion proofs (paywire.notice_proof), in process
(TestClient, SQLite and PostgreSQL, the center's SoftHSM key).

The fetch's answer: one signed tree head and per notice the buyer's full PAY entry with its proof;
every payment written by a commit group names its entry (payments.audit_seq), and migration 0013
links the ones written before. The store's wallet (token_wallet.wallet) records a notice only when
its proof holds; attacks refused: an entry changed, a proof for another payment, a head signed by
another key, proofs left out. `wallet audit check` (token_wallet.log_audit) then covers notices
like receipts and names a notice whose payment was rewritten.
"""

from __future__ import annotations

import copy
import importlib

import pytest
from sqlalchemy import select, update
from support import SoftwareSigner
from test_log_endpoints import submitted, wallet_audit
from test_payments_api import enroll, funded_member, pay_body
from test_wallet_audit_check import rewrite_entry

from center.storage.db import audit_log, payments
from hostkit.sealing import MINIMUM_KDF
from paywire.envelope import Envelope, b64url_encode, seal
from paywire.errors import WireError
from paywire.log_entry import entry_leaf_hash
from paywire.messages import parse_payload
from paywire.notice_proof import check_notices_log
from paywire.tree_head import build_tree_head_payload, check_tree_head
from token_wallet.vault import Vault
from token_wallet.wallet import Wallet

STORE_NAME = "Corner Shop"


@pytest.fixture
def shop(center):
    """A store, a funded member and three payments to the store; returns (store signer, store id)."""
    store, store_id = enroll(center, "store", name=STORE_NAME)
    member, _member_id = funded_member(center)
    for n in range(3):
        submitted(center, member, "pay", pay_body(store_id, 100 + n, f"order-{n}"))
    return store, store_id


def fetch(api, center, store) -> dict:
    request = store.envelope("notices", {"after": 0, "limit": 10}, aud=center.center_id)
    response = api.post("/v1/notices", json=request.to_json())
    assert response.status_code == 200, response.text
    return response.json()


def store_wallet(tmp_path, center, store_id: str) -> Wallet:
    doc = {
        "member_id": store_id,
        "center": {
            "center_id": center.center_id,
            "receipt_spki": b64url_encode(center.signer.spki),
            "receipt_alg": center.signer.alg,
        },
        "receipts": [],
        "notices": [],
        "history": [],
    }
    return Wallet(Vault.create(tmp_path / "store.vault", "password A", doc, kdf=MINIMUM_KDF))


def test_each_notice_proves_its_payment_in_the_signed_log(center, api, shop):
    store, store_id = shop
    answer = fetch(api, center, store)
    log = answer["notices_log"]
    assert len(answer["notices"]) == len(log["items"]) == 3
    notices = [parse_payload(Envelope.from_json(document).payload)[1] for document in answer["notices"]]
    checked = check_notices_log(
        log,
        notices,
        center_spki=center.signer.spki,
        center_alg=center.signer.alg,
        center_id=center.center_id,
        store_id=store_id,
    )
    head = check_tree_head(
        log["tree_head"],
        center_spki=center.signer.spki,
        center_alg=center.signer.alg,
        center_id=center.center_id,
    )
    with center.engine.connect() as conn:
        links = dict(conn.execute(select(payments.c.id, payments.c.audit_seq)).all())
        entries = {row.seq: row for row in conn.execute(select(audit_log.c.seq, audit_log.c.msg_type))}
    for notice, item, record in zip(notices, log["items"], checked, strict=True):
        seq = links[notice["payment_id"]]
        assert item["entry"]["seq"] == seq and entries[seq].msg_type == "pay"
        assert item["entry"]["action"]["payment_id"] == notice["payment_id"]
        assert record["index"] == seq - 1 and record["tree_size"] == head.tree_size >= seq
        assert record["leaf_hash"] == entry_leaf_hash(item["entry"]).hex()
    # No notices: no proofs.
    later = store.envelope(
        "notices", {"after": max(n["notice_seq"] for n in notices), "limit": 10}, aud=center.center_id
    )
    assert "notices_log" not in center.submit(later, "notices")


def test_migration_0013_links_payments_written_before(center, shop):
    with center.engine.begin() as conn:
        before = dict(conn.execute(select(payments.c.id, payments.c.audit_seq)).all())
        assert len(before) == 3 and None not in before.values()
        conn.execute(update(payments).values(audit_seq=None))
        migration = importlib.import_module("center.storage.migrations.versions.0013_payment_audit_seq")
        assert migration.backfill(conn) == 3
        assert dict(conn.execute(select(payments.c.id, payments.c.audit_seq)).all()) == before


def test_the_store_wallet_records_only_notices_whose_proof_holds(tmp_path, center, api, shop):
    store, store_id = shop
    answer = fetch(api, center, store)
    wallet = store_wallet(tmp_path, center, store_id)
    good = wallet._verified_extras("notices", answer)
    assert all(set(item["log"]) == {"index", "leaf_hash", "tree_size", "root_hash"} for item in good)
    assert [item["log"]["index"] for item in good] == [i["index"] for i in answer["notices_log"]["items"]]

    def refused(change) -> str:
        forged = copy.deepcopy(answer)
        change(forged)
        with pytest.raises(WireError) as caught:
            wallet._verified_extras("notices", forged)
        return caught.value.code

    items = lambda forged: forged["notices_log"]["items"]  # noqa: E731
    # The entry changed: its time (the leaf changes, the proof no longer leads to the root) ...
    assert refused(lambda f: items(f)[0]["entry"].update(created_at_ms=1)) == "log_proof_invalid"
    # ... or its amount, in the recorded result and in the buyer's request alike.
    assert refused(lambda f: items(f)[0]["entry"]["action"].update(amount_minor=1)) == "log_proof_invalid"
    # A proof for another payment: the entries swapped, or one entry with another's proof.
    assert refused(lambda f: items(f).reverse()) == "log_proof_invalid"
    assert refused(lambda f: items(f)[0].update(proof=items(f)[1]["proof"])) == "log_proof_invalid"
    # Another payment's entry moved to this notice's index.
    assert refused(lambda f: items(f)[0].update(entry=items(f)[1]["entry"], index=items(f)[1]["index"])) == (
        "log_proof_invalid"
    )
    # The proofs left out, one proof missing, one null.
    assert refused(lambda f: f.pop("notices_log")) == "log_proof_invalid"
    assert refused(lambda f: items(f).pop()) == "log_proof_invalid"
    assert refused(lambda f: items(f).__setitem__(2, None)) == "log_proof_invalid"
    # A head signed by another key over the same size and root (the proofs still lead to it).
    head = check_tree_head(
        answer["notices_log"]["tree_head"],
        center_spki=center.signer.spki,
        center_alg=center.signer.alg,
        center_id=center.center_id,
    )
    impostor = SoftwareSigner()
    forged_head = seal(
        build_tree_head_payload(
            center_kid=impostor.kid,
            center_id=center.center_id,
            tree_size=head.tree_size,
            root_hash=head.root_hash,
            timestamp_ms=head.timestamp_ms,
            prev_head_sha256=head.prev_head_sha256,
        ),
        alg=impostor.algorithm,
        kid=impostor.kid,
        sign=impostor.sign,
    ).to_json()
    assert refused(lambda f: f["notices_log"].update(tree_head=forged_head)) == "kid_mismatch"
    # ... and the same under the center's key id: the signature does not verify.
    posing = seal(
        build_tree_head_payload(
            center_kid=center.signer.kid,
            center_id=center.center_id,
            tree_size=head.tree_size,
            root_hash=head.root_hash,
            timestamp_ms=head.timestamp_ms,
            prev_head_sha256=head.prev_head_sha256,
        ),
        alg=impostor.algorithm,
        kid=center.signer.kid,
        sign=impostor.sign,
    ).to_json()
    assert refused(lambda f: f["notices_log"].update(tree_head=posing)) == "bad_signature"
    # Another root at that size under the center's own key: the proofs no longer lead to it.
    other_root = center.signer.sign_tree_head(
        tree_size=head.tree_size,
        root_hash=b"\x07" * 32,
        timestamp_ms=head.timestamp_ms,
        prev_head_sha256=head.prev_head_sha256,
    ).to_json()
    assert refused(lambda f: f["notices_log"].update(tree_head=other_root)) == "log_proof_invalid"
    # An answer stored before the log was a tree (its receipt a signed envelope) has no proofs.
    old = {k: v for k, v in answer.items() if k != "notices_log"}
    assert "log" not in wallet._verified_extras("notices", old, old_form=True)[0]
    assert wallet.doc["notices"] == []


def test_wallet_audit_check_covers_notices_and_names_a_rewritten_payment(tmp_path, center, api, shop):
    store, store_id = shop
    wallet = store_wallet(tmp_path, center, store_id)
    wallet.doc["notices"] = wallet._verified_extras("notices", fetch(api, center, store))
    report = wallet_audit(center, api, store, wallet.doc).run()
    assert (report.ok, report.receipts_checked, report.receipts_total) == (True, 3, 3), report.problem
    assert wallet.doc["log_checked"]["notices"] == {"next": 3, "proved": 3, "old_form": 0}

    # The same notices as a wallet that has not checked them yet.
    unchecked = {**wallet.doc, "notices": copy.deepcopy(wallet.doc["notices"])}
    unchecked.pop("log_checked")
    unchecked.pop("log_head")
    seq = rewrite_entry(center.engine, "pay", lambda action: action | {"amount_minor": 1})
    first = next(i for i in unchecked["notices"] if i["log"]["index"] == seq - 1)
    enroll(center, "member")  # a commit group: the center signs a head over the rewritten tree
    report = wallet_audit(center, api, store, unchecked).run()
    assert not report.ok
    assert report.problem == (
        f"notice of payment {first['notice']['payment_id']} (index {seq - 1}) is not in the center's log "
        f"at size {report.tree_size}: the center rewrote its history"
    ), report.problem


def test_a_payment_answered_alone_is_proved_too(center, api, shop):
    """The single path (a batch's fallback) links its payment to its entry as the group path does."""
    store, store_id = shop
    member, _member_id = funded_member(center)
    request = member.envelope("pay", pay_body(store_id, 7, "alone"), aud=center.center_id)
    center.accept_verified(center.verify_request(request, "pay"))
    answer = fetch(api, center, store)
    assert len(answer["notices"]) == 4 and all(item is not None for item in answer["notices_log"]["items"])
