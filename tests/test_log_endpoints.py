"""The log's read endpoints (GET /v1/log/sth, /consistency, /inclusion), in process (TestClient,
SQLite and PostgreSQL, the center's SoftHSM key).

Answers: every proof verifies with paywire.merkle against the signed heads, every receipt's leaf
is in the newest tree, and /sth first signs over entries appended without a head. Refusals: no
query, not an envelope, an unknown key, a bad signature, an expired or long-lived query, another
path or query, another center, another message type, a revoked key, sizes no head vouches for.
A query changes nothing: not audited, no counter used, a replay answers the same.
The wallet's check (token_wallet.log_audit) against it: it goes on where its query limit stopped
it, names a rewritten entry's receipt, refuses a head signed by another key and a second root at
a size it kept (the end-to-end runs are tests/test_wallet_audit_check.py).
"""

from __future__ import annotations

import time

import pytest
from receipt_support import checked_by_center
from sqlalchemy import func, select
from support import SoftwareSigner
from test_payments_api import enroll, funded_member, pay_body
from test_wallet_audit_check import rewrite_entry

from center.keys.admin import revoke_key
from center.ledger import log_tree
from center.storage.db import audit_head, audit_log, keys
from paywire import log_api, merkle
from paywire.envelope import Envelope, b64url_decode, seal
from paywire.errors import WireError
from paywire.messages import BALANCE, LOG_QUERY, parse_payload
from paywire.receipts import check_receipt, receipt_leaf
from paywire.tree_head import build_tree_head_payload, check_tree_head
from token_wallet.log_audit import (
    QUERY_HEADER,
    LogAudit,
    canonical_query,
    query_header_value,
    receipt_log_record,
)

STORE_NAME = "Corner Shop"


def query(center, signer: SoftwareSigner, path: str, params: dict, **kw) -> dict:
    """The headers of a GET authorized by a LOG_QUERY for `path` and `params`."""
    kw.setdefault("lifetime_s", 120)
    envelope = signer.envelope(
        LOG_QUERY, {"path": path, "query": canonical_query(params)}, aud=center.center_id, **kw
    )
    return {QUERY_HEADER: query_header_value(envelope)}


def get(api, center, signer, path: str, params: dict, headers: dict | None = None):
    headers = headers if headers is not None else query(center, signer, path, params)
    return api.get(path, params=params, headers=headers)


def head_of(center, document: dict):
    signer = center.signer
    return check_tree_head(
        document, center_spki=signer.spki, center_alg=signer.alg, center_id=center.center_id
    )


def hashes(proof: list[str]) -> list[bytes]:
    return [b64url_decode(item, "proof", 32) for item in proof]


def submitted(center, signer, msg_type: str, body: dict) -> tuple[Envelope, dict]:
    request = signer.envelope(msg_type, body, aud=center.center_id)
    answer = center.submit(request, msg_type)
    checked_by_center(answer, request, center)  # a receipt that verifies, at its own head
    return request, answer


def log_counts(center) -> tuple[int, int]:
    with center.engine.connect() as conn:
        entries = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
        seq = conn.execute(select(audit_head.c.seq)).scalar_one()
    return entries, seq


def signed_size(center) -> int:
    with center.engine.connect() as conn:
        return log_tree.signed_size(conn)


def unsigned_size(center, below: int) -> int:
    with center.engine.connect() as conn:
        return next(size for size in range(1, below) if log_tree.head_at(conn, size) is None)


def last_counter(center, kid: str) -> int:
    with center.engine.connect() as conn:
        return conn.execute(select(keys.c.last_ctr).where(keys.c.kid == kid)).scalar_one()


@pytest.fixture
def paid(center):
    """A store, a funded member and three payments (their requests and answers)."""
    store, store_id = enroll(center, "store", name=STORE_NAME)
    member, _member_id = funded_member(center)
    answers = [submitted(center, member, "pay", pay_body(store_id, 100 + n, f"order-{n}")) for n in range(3)]
    return member, store, answers


def test_answers_verify_against_signed_heads(center, api, paid):
    member, store, answers = paid
    # The top-up decision appended an entry with no head of its own: /sth signs one over it first.
    _request, topup = submitted(
        center, member, "topup", {"amount_minor": 500, "currency": "JPY", "method": "bank"}
    )
    center.decide_topup(
        topup["receipt"]["entry"]["action"]["topup_id"], "confirm", decided_by="operator:test"
    )
    assert signed_size(center) < log_counts(center)[1]
    response = get(api, center, store, log_api.STH_PATH, {})
    assert response.status_code == 200, response.text
    latest = head_of(center, response.json()["tree_head"])
    entries, seq = log_counts(center)
    assert latest.tree_size == entries == seq  # everything appended so far is under a signed head

    for request, answer in answers:
        receipt = answer["receipt"]
        index, leaf = receipt_leaf(receipt, request)
        own = head_of(center, receipt["tree_head"])
        shown = get(api, center, member, log_api.INCLUSION_PATH, {"index": index, "size": latest.tree_size})
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert (body["index"], body["size"]) == (index, latest.tree_size)
        assert head_of(center, body["tree_head"]) == latest
        merkle.verify_inclusion(leaf, index, latest.tree_size, hashes(body["proof"]), latest.root_hash)
        # The receipt's own head is a prefix of the newest.
        proved = get(
            api, center, member, log_api.CONSISTENCY_PATH, {"from": own.tree_size, "to": latest.tree_size}
        )
        assert proved.status_code == 200, proved.text
        body = proved.json()
        assert (body["from"], body["to"]) == (own.tree_size, latest.tree_size)
        merkle.verify_consistency(
            own.tree_size, latest.tree_size, hashes(body["proof"]), own.root_hash, latest.root_hash
        )
        # The proof does not fit another leaf, nor the receipt's root at the newest size.
        with pytest.raises(WireError) as refused:
            merkle.verify_inclusion(
                merkle.leaf_hash(b"not it"),
                index,
                latest.tree_size,
                hashes(shown.json()["proof"]),
                latest.root_hash,
            )
        assert refused.value.code == "log_proof_invalid"


def test_a_query_changes_nothing_and_a_replay_answers_the_same(center, api, paid):
    member, _store, _answers = paid
    headers = query(center, member, log_api.STH_PATH, {})
    first = get(api, center, member, log_api.STH_PATH, {}, headers)
    counts, counter = log_counts(center), last_counter(center, member.kid)
    again = get(api, center, member, log_api.STH_PATH, {}, headers)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert log_counts(center) == counts and last_counter(center, member.kid) == counter
    assert head_of(center, first.json()["tree_head"]).tree_size == counts[0]
    # The query carried the key's next counter (SoftwareSigner counts up): it is still free.
    assert member.counter == counter + 1
    request = member.envelope(BALANCE, {}, aud=center.center_id, ctr=counter + 1)
    checked_by_center(center.submit(request, BALANCE), request, center)


def refusal(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_refusals(center, api, paid):
    member, store, _answers = paid
    sth = log_api.STH_PATH
    size = head_of(center, get(api, center, member, sth, {}).json()["tree_head"]).tree_size
    assert refusal(api.get(sth)) == (401, "log_query_required")
    assert refusal(api.get(sth, headers={QUERY_HEADER: "not-an-envelope"}))[1] == "malformed_envelope"
    stranger = SoftwareSigner()
    assert refusal(get(api, center, stranger, sth, {})) == (401, "unknown_key")
    # Someone else's key id on a query signed by the stranger: the signature does not verify.
    forged = stranger.envelope(
        LOG_QUERY, {"path": sth, "query": ""}, aud=center.center_id, kid=member.kid, lifetime_s=120
    )
    assert refusal(get(api, center, member, sth, {}, {QUERY_HEADER: query_header_value(forged)})) == (
        401,
        "bad_signature",
    )
    old = query(center, member, sth, {}, now_s=int(time.time()) - 1000)
    assert refusal(get(api, center, member, sth, {}, old)) == (403, "expired")
    long_lived = query(center, member, sth, {}, lifetime_s=3600)
    assert refusal(get(api, center, member, sth, {}, long_lived)) == (403, "log_query_lifetime")
    elsewhere = member.envelope(LOG_QUERY, {"path": sth, "query": ""}, aud="another-center", lifetime_s=120)
    assert refusal(get(api, center, member, sth, {}, {QUERY_HEADER: query_header_value(elsewhere)})) == (
        403,
        "wrong_audience",
    )
    balance = member.envelope(BALANCE, {}, aud=center.center_id, lifetime_s=120)
    assert refusal(get(api, center, member, sth, {}, {QUERY_HEADER: query_header_value(balance)}))[1] == (
        "wrong_message_type"
    )
    # Another path, other arguments: the query authorizes one read only.
    incl = log_api.INCLUSION_PATH
    for_sth = query(center, member, sth, {})
    assert refusal(api.get(incl, params={"index": 0, "size": size}, headers=for_sth)) == (
        403,
        "log_query_mismatch",
    )
    for_first = query(center, member, incl, {"index": 0, "size": size})
    assert refusal(api.get(incl, params={"index": 1, "size": size}, headers=for_first)) == (
        403,
        "log_query_mismatch",
    )
    # Sizes no signed head vouches for.
    cons = log_api.CONSISTENCY_PATH
    assert refusal(get(api, center, member, cons, {"from": 1, "to": size + 1})) == (400, "log_size_invalid")
    assert refusal(get(api, center, member, cons, {"from": 0, "to": size})) == (400, "log_size_invalid")
    assert refusal(get(api, center, member, cons, {"from": size, "to": size - 1})) == (
        400,
        "log_size_invalid",
    )
    assert refusal(get(api, center, member, incl, {"index": size, "size": size})) == (400, "log_size_invalid")
    unsigned = unsigned_size(center, size)  # the top-up decision appended an entry without a head
    assert refusal(get(api, center, member, incl, {"index": 0, "size": unsigned})) == (
        400,
        "log_size_invalid",
    )
    assert get(api, center, member, cons, {"from": size, "to": size}).json()["proof"] == []
    # A revoked key reads nothing more.
    revoke_key(
        center.engine, member.kid, reason="card lost", decided_by="operator:test", now_ms=center.clock_ms()
    )
    assert refusal(get(api, center, member, sth, {})) == (403, "key_revoked")
    assert get(api, center, store, sth, {}).status_code == 200


# --- the wallet's check (token_wallet.log_audit) against the in-process center ------------------


def wallet_document(center, answers: list[tuple[Envelope, dict]]) -> dict:
    """What a wallet keeps of these answers: each receipt with its log record (token_wallet.wallet)."""
    receipts = []
    for request, answer in answers:
        checked = checked_receipt(answer, request, center)
        msg_type = parse_payload(request.payload)[0].type
        receipts.append(
            {
                "msg_id": parse_payload(request.payload)[0].msg_id,
                "type": msg_type,
                "receipt": answer["receipt"],
                "log": receipt_log_record(checked, answer["receipt"], request),
            }
        )
    return {"center": {"center_id": center.center_id}, "receipts": receipts, "history": []}


def checked_receipt(answer: dict, request: Envelope, center) -> dict:
    signer = center.signer
    return check_receipt(
        answer["receipt"],
        center_spki=signer.spki,
        center_alg=signer.alg,
        request=request,
        center_id=center.center_id,
    )


def wallet_audit(center, api, signer, doc: dict, max_queries: int = 100) -> LogAudit:
    def fetch(path: str, params: dict) -> dict:
        response = get(api, center, signer, path, params)
        assert response.status_code == 200, response.text
        return response.json()

    return LogAudit(doc, fetch, center_key=(center.signer.spki, center.signer.alg), max_queries=max_queries)


def test_the_wallet_check_goes_on_where_it_stopped_and_names_a_rewritten_receipt(center, api, paid):
    member, _store, answers = paid
    doc = wallet_document(center, answers)
    report = wallet_audit(center, api, member, doc, max_queries=3).run()  # the head, then 2 proofs
    assert (report.ok, report.receipts_checked, report.remaining, report.receipts_total) == (True, 1, 2, 3)
    assert doc["log_head"]["tree_size"] == report.tree_size == report.kept_tree_size
    report = wallet_audit(center, api, member, doc).run()
    assert (report.ok, report.receipts_checked, report.remaining) == (True, 3, 0)
    assert "receipts checked: 3 of 3" in report.summary()

    # A wallet that kept no head yet. Before any head over the rewritten tree, the payment's leaf
    # still proves into the old root (its proof holds only other nodes), but its receipt's head is
    # no prefix of what the stored nodes now make.
    fresh = wallet_document(center, answers)
    seq = rewrite_entry(center.engine, "pay", lambda action: action | {"amount_minor": 1})
    index, payment_id = seq - 1, answers[0][1]["receipt"]["entry"]["action"]["payment_id"]
    assert fresh["receipts"][0]["log"]["index"] == index
    report = wallet_audit(center, api, member, fresh).run()
    receipt_size = fresh["receipts"][0]["log"]["tree_size"]
    assert report.problem == (
        f"the center's tree head at size {report.tree_size} is not consistent with the head of the receipt "
        f"for payment {payment_id} at size {receipt_size}: the center rewrote or forked its history"
    )
    # Once the center signs a head over the rewritten tree, the receipt's own entry is not in it.
    submitted(center, member, "balance", {})
    report = wallet_audit(center, api, member, fresh).run()
    assert report.to_json() == {
        "ok": False,
        "tree_size": report.tree_size,
        "root_hash": report.root_hash,
        "kept_tree_size": None,
        "receipts_checked": 0,
        "receipts_total": 3,
        "problem": f"receipt for payment {payment_id} (index {index}) is not in the center's log at size "
        f"{report.tree_size}: the center rewrote its history",
    }
    assert "log_head" not in fresh and "log_checked" not in fresh  # nothing marked checked
    assert fresh["history"][-1]["details"]["problem"] == report.problem
    # The wallet that kept a head: its head is no prefix of the new one.
    report = wallet_audit(center, api, member, doc).run()
    assert not report.ok and "is not consistent with the head this wallet kept" in report.problem


def test_the_wallet_refuses_a_head_of_another_key_and_a_second_root_at_its_size(center, api, paid):
    member, _store, answers = paid
    doc = wallet_document(center, answers)
    assert wallet_audit(center, api, member, doc).run().ok
    kept = doc["log_head"]
    impostor = SoftwareSigner()  # holds the center's TLS key, say, but not its token key

    def answer_with(head_document: dict) -> LogAudit:
        def fetch(path: str, params: dict) -> dict:
            return {"tree_head": head_document}

        return LogAudit(doc, fetch, center_key=(center.signer.spki, center.signer.alg), max_queries=3)

    forged = seal(
        build_tree_head_payload(
            center_kid=impostor.kid,
            center_id=center.center_id,
            tree_size=kept["tree_size"] + 5,
            root_hash=b"\x07" * 32,
            timestamp_ms=center.clock_ms(),
            prev_head_sha256=kept["head_sha256"],
        ),
        alg=impostor.algorithm,
        kid=impostor.kid,
        sign=impostor.sign,
    ).to_json()
    report = answer_with(forged).run()
    assert not report.ok and report.problem.startswith("the center's newest tree head does not verify")
    # The center's own key over another root at the size the wallet kept: a fork.
    fork = center.signer.sign_tree_head(
        tree_size=kept["tree_size"],
        root_hash=b"\x07" * 32,
        timestamp_ms=center.clock_ms(),
        prev_head_sha256=kept["head_sha256"],
    ).to_json()
    report = answer_with(fork).run()
    assert report.problem == (
        f"the head this wallet kept (size {kept['tree_size']}) and a tree head the center shows now have "
        "different roots at the same size: the center forked its history"
    )
    assert doc["log_head"] == kept and [h["outcome"] for h in doc["history"]] == ["alarm", "alarm"]
