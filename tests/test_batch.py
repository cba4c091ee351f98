"""The batch path (POST /v1/payments/batch): many individually signed payments in one request,
each applied and answered as if sent alone. Unit level through the app on SQLite and PostgreSQL,
then concurrent batches against real `center serve` processes over HTTPS."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from stress_support import Api, LiveCenter, fund_members, send_concurrently
from stress_support import pay_body as live_pay_body
from support import SoftwareSigner
from test_payments_api import balance, enroll, funded_member, ledger_ok, pay_body, result_of

from center.ledger.audit import verify_chain
from center.pipeline.batch import MAX_BATCH_ITEMS
from center.storage.db import audit_log, messages, payments, transfers
from paywire.envelope import Envelope
from paywire.receipts import check_refusal

BATCH = "/v1/payments/batch"


def post_batch(api, envelopes: list[Envelope]):
    return api.post(BATCH, json={"payments": [envelope.to_json() for envelope in envelopes]})


def count(center, table) -> int:
    with center.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture
def shop(center):
    return enroll(center, "store", name="Corner Shop")[1]


def test_each_item_is_answered_on_its_own(center, api, shop):
    rich, rich_id = funded_member(center, 1_000)
    poor, poor_id = funded_member(center, 50)
    stranger = SoftwareSigner()  # never enrolled
    requests = [rich.envelope("pay", pay_body(shop, 100, f"r-{i}"), aud=center.center_id) for i in range(3)]
    requests.append(poor.envelope("pay", pay_body(shop, 80, "p-1"), aud=center.center_id))  # more than it has
    requests.append(stranger.envelope("pay", pay_body(shop, 10, "s-1"), aud=center.center_id))
    requests.append(
        rich.envelope("pay", pay_body(shop, 5, "wrong-name", name="Someone Else"), aud=center.center_id)
    )

    response = post_batch(api, requests)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(requests)
    for request, answer in zip(requests[:3], results[:3], strict=True):
        assert result_of(center, request, answer)["action"] == "paid"
    assert results[3]["error"]["code"] == "insufficient_funds" and results[3]["status"] == 409
    assert results[4]["error"]["code"] == "unknown_key" and results[4]["status"] == 401
    assert results[5]["error"]["code"] == "payee_name_mismatch" and "receipt" not in results[5]
    assert [
        result_of(center, r, a)["balance_minor"] for r, a in zip(requests[:3], results[:3], strict=True)
    ] == [
        900,
        800,
        700,
    ]
    assert balance(center, rich_id) == 700 and balance(center, poor_id) == 50 and balance(center, shop) == 300
    assert count(center, payments) == 3 and count(center, audit_log) >= 3
    assert ledger_ok(center)


def test_a_resent_batch_changes_nothing_and_answers_the_same(center, api, shop):
    buyer, buyer_id = funded_member(center, 150)
    requests = [buyer.envelope("pay", pay_body(shop, 100, f"o-{i}"), aud=center.center_id) for i in range(2)]
    first = post_batch(api, requests).json()["results"]
    assert "receipt" in first[0] and first[1]["error"]["code"] == "insufficient_funds"
    transfers_before = count(center, transfers)

    again = post_batch(api, list(reversed(requests))).json()["results"]
    assert again == list(reversed(first))  # byte-identical receipt; the refusal is final
    alone = api.post("/v1/payments", json=requests[0].to_json())
    assert alone.status_code == 200 and alone.json()["receipt"] == first[0]["receipt"]
    refused_alone = api.post("/v1/payments", json=requests[1].to_json())
    assert refused_alone.status_code == 409 and refused_alone.json()["error"]["code"] == "insufficient_funds"
    assert count(center, transfers) == transfers_before and balance(center, buyer_id) == 50
    assert ledger_ok(center)


def test_the_same_message_twice_in_one_batch_has_one_effect(center, api, shop):
    buyer, buyer_id = funded_member(center, 1_000)
    request = buyer.envelope("pay", pay_body(shop, 100), aud=center.center_id)
    reuse = buyer.envelope("pay", pay_body(shop, 100, "other"), aud=center.center_id, ctr=buyer.counter)
    results = post_batch(api, [request, request, reuse]).json()["results"]
    assert results[0] == results[1] and "receipt" in results[0]
    assert results[2]["error"]["code"] == "counter_replayed"
    assert balance(center, buyer_id) == 900 and count(center, payments) == 1
    assert ledger_ok(center)


def test_batch_limits(center, api, shop):
    buyer, _ = funded_member(center, 10_000)
    too_many = [
        buyer.envelope("pay", pay_body(shop, 1, f"o-{i}"), aud=center.center_id)
        for i in range(MAX_BATCH_ITEMS + 1)
    ]
    response = post_batch(api, too_many)
    assert response.status_code == 413 and response.json()["error"]["code"] == "batch_too_large"
    empty = api.post(BATCH, json={"payments": []})
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "invalid_request"
    garbled = too_many[0].to_json() | {"sig": "not base64url!"}
    mixed = api.post(BATCH, json={"payments": [garbled, too_many[1].to_json()]}).json()["results"]
    assert mixed[0]["error"]["code"] == "malformed_envelope" and "receipt" in mixed[1]
    topup = buyer.envelope(
        "topup", {"amount_minor": 5, "currency": "JPY", "method": "bank"}, aud=center.center_id
    )
    assert post_batch(api, [topup]).json()["results"][0]["error"]["code"] == "wrong_message_type"
    assert count(center, payments) == 1
    with center.engine.connect() as conn:
        assert verify_chain(conn)[1] is None
        assert conn.execute(select(func.count()).select_from(messages)).scalar_one() >= 1


# --- over HTTPS, concurrently, against real center processes -----------------------------


@pytest.fixture
def live(tmp_path, db_url):
    center = LiveCenter.create(tmp_path, db_url)
    center.process.start(workers=2)
    yield center
    center.close()


def test_concurrent_batches_never_overdraw(live):
    """One buyer whose balance covers exactly half of its payments, spread over batches sent at
    once with single payments mixed in: exactly half succeed, the balance ends at zero."""
    with Api(live) as api:
        _, store_id = api.enroll("store", name="Hot Store")
        [(buyer, buyer_id)] = fund_members(api, 1, 60 * 10)
    requests = [
        buyer.envelope("pay", live_pay_body(store_id, 10, f"o-{i}"), aud=live.center_id, lifetime_s=600)
        for i in range(120)
    ]
    batches = [requests[i : i + 20] for i in range(0, 100, 20)]
    bodies = [json.dumps({"payments": [r.to_json() for r in batch]}).encode() for batch in batches]

    import httpx

    with httpx.Client(base_url=live.url, verify=live.ssl_context(), timeout=120, trust_env=False) as client:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            batch_futures = [
                pool.submit(client.post, BATCH, content=body, headers={"content-type": "application/json"})
                for body in bodies
            ]
            singles, _ = send_concurrently(
                live, [("/v1/payments", r) for r in requests[100:]], connections=10
            )
            batch_answers = [future.result() for future in batch_futures]
    outcomes = []
    for response in batch_answers:
        assert response.status_code == 200, response.text
        outcomes += [
            "paid" if "receipt" in item else item["error"]["code"] for item in response.json()["results"]
        ]
    outcomes += ["paid" if answer.status == 200 else answer.code for answer in singles]
    assert outcomes.count("paid") == 60 and outcomes.count("insufficient_funds") == 60, outcomes
    assert live.balance(buyer_id) == 0 and live.balance(store_id) == 600
    live.ledger_check()
    live.audit_verify()
    # Every receipt from a batch verifies against the pinned center key.
    for batch, response in zip(batches, batch_answers, strict=True):
        for request, item in zip(batch, response.json()["results"], strict=True):
            if "receipt" in item:
                assert live.result_of(request, _answer(item))["action"] == "paid"


def _answer(item: dict):
    from stress_support import Answer

    return Answer(200, json.dumps(item).encode())


# --- group commit: concurrent single payments share a transaction -------------------------


def test_concurrent_single_payments_are_committed_together(center, shop, monkeypatch):
    """Threads paying at once through Center.submit: every answer is its own, the balance covers
    exactly half, and fewer transactions than payments were needed (they were grouped)."""
    import threading

    from center.pipeline import group_commit

    buyer, buyer_id = funded_member(center, 40 * 10)
    requests = [buyer.envelope("pay", pay_body(shop, 10, f"g-{i}"), aud=center.center_id) for i in range(80)]
    batches = []
    original = group_commit.answer_verified

    def counting(center_, verified):
        batches.append(len(verified))
        return original(center_, verified)

    monkeypatch.setattr(group_commit, "answer_verified", counting)
    gate, outcomes = threading.Barrier(len(requests)), [None] * len(requests)

    def pay(index: int) -> None:
        gate.wait()
        try:
            outcomes[index] = result_of(center, requests[index], center.submit(requests[index], "pay"))[
                "action"
            ]
        except Exception as error:
            outcomes[index] = getattr(error, "code", repr(error))

    threads = [threading.Thread(target=pay, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.count("paid") == 40 and outcomes.count("insufficient_funds") == 40, outcomes
    assert sum(batches) == len(requests) and max(batches) > 1 and len(batches) < len(requests)
    assert balance(center, buyer_id) == 0 and balance(center, shop) == 400
    assert count(center, payments) == 40
    assert ledger_ok(center)


# --- the batch books payments exactly as the single path does ------------------------------


def _operations(seed: int, count: int) -> list[tuple]:
    import random

    rng = random.Random(seed)
    kinds = ["store"] * 6 + ["wrong_name", "unknown", "member", "currency", "reuse_counter", "resend"]
    return [(rng.randrange(4), rng.choice([1, 7, 30, 90, 400]), rng.choice(kinds)) for _ in range(count)]


def _materialise(center, operations: list[tuple]) -> tuple[list, list[str]]:
    """Fresh parties, then one envelope per operation: buyers with 0, 60, 300 and 5,000 and a shop."""
    from center.keys.admin import revoke_key

    _, shop_id = enroll(center, "store", name="Corner Shop")
    buyers = [
        funded_member(center, amount) if amount else enroll(center, "member") for amount in (60, 300, 5_000)
    ]
    buyers.append(funded_member(center, 1_000))
    revoke_key(center.engine, buyers[3][0].kid, reason="lost", decided_by="operator:test", now_ms=1)
    envelopes = []
    for buyer_index, amount, kind in operations:
        signer, _ = buyers[buyer_index]
        if kind == "resend" and envelopes:
            envelopes.append(envelopes[-1])
            continue
        payee, name, currency = shop_id, "Corner Shop", "JPY"
        if kind == "wrong_name":
            name = "Someone Else"
        elif kind == "unknown":
            payee = "S-" + "0" * 16
        elif kind == "member":
            payee = buyers[(buyer_index + 1) % 4][1]
        elif kind == "currency":
            currency = "EUR"
        body = {
            "payee": payee,
            "payee_name": name,
            "amount_minor": amount,
            "currency": currency,
            "order_ref": f"o-{len(envelopes)}",
        }
        reuse = kind == "reuse_counter" and signer.counter > 0
        envelopes.append(
            signer.envelope("pay", body, aud=center.center_id, ctr=signer.counter if reuse else None)
        )
    return envelopes, [shop_id] + [member_id for _, member_id in buyers]


def _outcome(center, request, answer: dict) -> tuple:
    if "error" in answer:
        return ("refused", answer["error"]["code"], answer["status"])
    result = result_of(center, request, answer)
    return ("paid", result["amount_minor"], result["balance_minor"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_book_payments_exactly_as_the_single_path(center, seed):
    from center.errors import ApiError
    from center.pipeline.rules import error_answer

    operations = _operations(seed, 60)
    alone_requests, alone_parties = _materialise(center, operations)
    alone = []
    for request in alone_requests:
        try:
            alone.append(
                _outcome(center, request, center.accept_verified(center.verify_request(request, "pay")))
            )
        except ApiError as error:
            alone.append(_outcome(center, request, error_answer(error)))

    batch_requests, batch_parties = _materialise(center, operations)
    together = []
    for start in range(0, len(batch_requests), 25):
        chunk = batch_requests[start : start + 25]
        together += [
            _outcome(center, r, a) for r, a in zip(chunk, center.submit_batch(chunk, "pay"), strict=True)
        ]

    assert together == alone
    assert {outcome[0] for outcome in alone} == {"paid", "refused"}  # the scenario exercises both
    assert [balance(center, party) for party in batch_parties] == [
        balance(center, party) for party in alone_parties
    ]
    assert ledger_ok(center)


def test_a_reused_message_id_in_a_batch_gets_a_refusal_signed_for_those_bytes(center, api, shop):
    # The single path signs `message_id_conflict`; the batch answers it the same way (one rule:
    # center.pipeline.rules), so a wallet can believe it and never mistakes it for a lost answer.
    buyer, buyer_id = funded_member(center, 1_000)
    reused = "reused-message-id-0001"
    first = buyer.envelope("pay", pay_body(shop, 100, "o-1"), aud=center.center_id, msg_id=reused)
    assert "receipt" in post_batch(api, [first]).json()["results"][0]
    other = buyer.envelope("pay", pay_body(shop, 300, "o-2"), aud=center.center_id, msg_id=reused)
    answer = post_batch(api, [other]).json()["results"][0]
    assert answer["error"]["code"] == "message_id_conflict" and answer["status"] == 409
    refused = check_refusal(
        Envelope.from_json(answer["refusal"]),
        center_spki=center.signer.spki,
        center_alg=center.signer.alg,
        request=other,
    )
    assert refused["code"] == "message_id_conflict"
    assert balance(center, buyer_id) == 900 and count(center, payments) == 1
