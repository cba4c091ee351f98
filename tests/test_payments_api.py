"""The money path at the domain/API level, on SQLite and PostgreSQL: top-ups,
payments, refunds, payouts, notices, replay defence, webhook, ledger check."""

from __future__ import annotations

import json
import threading
import time

import pytest
from receipt_support import checked_by_center
from sqlalchemy import func, select, text
from support import SoftwareSigner

from center.errors import ApiError
from center.ledger.book import check_ledger, party_account
from center.ledger.funding import webhook_signature
from center.storage.db import accounts, payments, transfers
from paywire.envelope import Envelope
from paywire.messages import COUNTER_WINDOW, parse_payload
from paywire.verify import verify_envelope

STORE_NAME = "Corner Shop"


def result_of(center, request: Envelope, response: dict) -> dict:
    return checked_by_center(response, request, center)


def enroll(center, role: str, **fields) -> tuple[SoftwareSigner, str]:
    signer = SoftwareSigner()
    request = signer.envelope("enroll", signer.enroll_body(role, **fields), aud=center.center_id)
    return signer, result_of(center, request, center.enroll(request))["member_id"]


def submit(center, signer: SoftwareSigner, msg_type: str, body: dict, **kw) -> dict:
    request = signer.envelope(msg_type, body, aud=center.center_id, **kw)
    return result_of(center, request, center.submit(request, msg_type))


def refused(center, signer, msg_type, body, **kw) -> ApiError:
    with pytest.raises(ApiError) as caught:
        submit(center, signer, msg_type, body, **kw)
    return caught.value


def funded_member(center, amount_minor: int = 10_000) -> tuple[SoftwareSigner, str]:
    signer, member_id = enroll(center, "member")
    topup = submit(
        center, signer, "topup", {"amount_minor": amount_minor, "currency": "JPY", "method": "bank"}
    )
    center.decide_topup(topup["topup_id"], "confirm", decided_by="operator:test")
    return signer, member_id


def pay_body(store_id: str, amount_minor: int, order: str = "order-1", name: str = STORE_NAME) -> dict:
    return {
        "payee": store_id,
        "payee_name": name,
        "amount_minor": amount_minor,
        "currency": "JPY",
        "order_ref": order,
    }


def balance(center, party_id: str) -> int:
    with center.engine.connect() as conn:
        return conn.execute(
            select(accounts.c.balance_minor).where(accounts.c.id == party_account(party_id))
        ).scalar_one()


def ledger_ok(center) -> bool:
    with center.engine.connect() as conn:
        report = check_ledger(conn)
    assert report.problems == []
    return report.ok


@pytest.fixture
def store(center):
    return enroll(center, "store", name=STORE_NAME)


def test_topup_is_credited_only_when_confirmed(center):
    signer, member_id = enroll(center, "member")
    pending = submit(center, signer, "topup", {"amount_minor": 5000, "currency": "JPY", "method": "credit"})
    assert pending["status"] == "pending" and balance(center, member_id) == 0
    assert submit(center, signer, "balance", {})["topups"][0]["status"] == "pending"
    center.decide_topup(pending["topup_id"], "confirm", decided_by="operator:test")
    assert balance(center, member_id) == 5000
    again = center.decide_topup(pending["topup_id"], "confirm", decided_by="operator:test")
    assert again["repeated"] is True and balance(center, member_id) == 5000
    with pytest.raises(ApiError) as caught:
        center.decide_topup(pending["topup_id"], "decline", decided_by="operator:test")
    assert caught.value.code == "topup_not_pending"
    assert ledger_ok(center)


def test_declined_topup_credits_nothing(center):
    signer, member_id = enroll(center, "member")
    pending = submit(center, signer, "topup", {"amount_minor": 5000, "currency": "JPY", "method": "cash"})
    assert (
        center.decide_topup(pending["topup_id"], "decline", decided_by="operator:test")["status"]
        == "declined"
    )
    assert balance(center, member_id) == 0
    with pytest.raises(ApiError):
        center.decide_topup(pending["topup_id"], "confirm", decided_by="operator:test")
    assert balance(center, member_id) == 0


def test_payment_moves_money_and_receipt_tells_balance(center, store):
    buyer, buyer_id = funded_member(center, 10_000)
    _, store_id = store
    paid = submit(center, buyer, "pay", pay_body(store_id, 3_500))
    assert paid["balance_minor"] == 6_500 and paid["amount_minor"] == 3_500
    assert (balance(center, buyer_id), balance(center, store_id)) == (6_500, 3_500)
    assert ledger_ok(center)


def test_paying_more_than_balance_changes_nothing_and_stays_refused(center, store):
    buyer, buyer_id = funded_member(center, 1_000)
    _, store_id = store
    request = buyer.envelope("pay", pay_body(store_id, 1_001), aud=center.center_id)
    for _ in range(2):  # the resend gets the same final refusal
        with pytest.raises(ApiError) as caught:
            center.submit(request, "pay")
        assert (caught.value.code, caught.value.status) == ("insufficient_funds", 409)
    assert balance(center, buyer_id) == 1_000 and balance(center, store_id) == 0
    # A later top-up does not revive the refused payment.
    topup = submit(center, buyer, "topup", {"amount_minor": 5000, "currency": "JPY", "method": "bank"})
    center.decide_topup(topup["topup_id"], "confirm", decided_by="operator:test")
    with pytest.raises(ApiError) as caught:
        center.submit(request, "pay")
    assert caught.value.code == "insufficient_funds"
    assert balance(center, store_id) == 0
    assert ledger_ok(center)


def test_resent_payment_is_applied_once_with_the_same_receipt(center, store):
    buyer, buyer_id = funded_member(center, 10_000)
    _, store_id = store
    request = buyer.envelope("pay", pay_body(store_id, 2_000), aud=center.center_id)
    first, second = center.submit(request, "pay"), center.submit(request, "pay")
    assert first == second
    assert balance(center, buyer_id) == 8_000
    with center.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(payments)).scalar_one() == 1


def test_every_flipped_byte_is_refused(center, store):
    buyer, buyer_id = funded_member(center, 10_000)
    _, store_id = store
    request = buyer.envelope("pay", pay_body(store_id, 100), aud=center.center_id)
    for position in range(0, len(request.payload), 7):
        changed = bytearray(request.payload)
        changed[position] ^= 0x01
        with pytest.raises(ApiError):
            center.submit(Envelope(bytes(changed), request.alg, request.kid, request.sig), "pay")
    for position in range(len(request.sig)):
        changed = bytearray(request.sig)
        changed[position] ^= 0x01
        with pytest.raises(ApiError):
            center.submit(Envelope(request.payload, request.alg, request.kid, bytes(changed)), "pay")
    assert balance(center, buyer_id) == 10_000


def test_counter_must_rise_and_message_ids_are_single_use(center, store):
    buyer, _ = funded_member(center, 10_000)
    _, store_id = store
    submit(center, buyer, "pay", pay_body(store_id, 100), ctr=10)
    assert refused(center, buyer, "pay", pay_body(store_id, 100), ctr=10).code == "counter_replayed"
    # Arrived out of order but unused and inside the window: accepted once.
    submit(center, buyer, "pay", pay_body(store_id, 100, "late"), ctr=9)
    assert (
        refused(center, buyer, "pay", pay_body(store_id, 100, "late-again"), ctr=9).code == "counter_replayed"
    )
    submit(center, buyer, "pay", pay_body(store_id, 100, "far"), ctr=20 + COUNTER_WINDOW)
    too_old = refused(center, buyer, "pay", pay_body(store_id, 100, "old"), ctr=11)
    assert (too_old.code, too_old.status) == ("counter_replayed", 409)
    submit(center, buyer, "pay", pay_body(store_id, 100, "o-2"), ctr=21 + COUNTER_WINDOW, msg_id="x" * 32)
    conflict = refused(
        center, buyer, "pay", pay_body(store_id, 999, "o-3"), ctr=22 + COUNTER_WINDOW, msg_id="x" * 32
    )
    assert (conflict.code, conflict.status) == ("message_id_conflict", 409)


def test_expired_and_misaddressed_payments_are_refused(center, store):
    buyer, _ = funded_member(center)
    _, store_id = store
    expired = buyer.envelope(
        "pay", pay_body(store_id, 100), aud=center.center_id, now_s=int(time.time()) - 7200, lifetime_s=3600
    )
    with pytest.raises(ApiError) as caught:
        center.submit(expired, "pay")
    assert caught.value.code == "expired"
    other = buyer.envelope("pay", pay_body(store_id, 100), aud="center-elsewhere")
    with pytest.raises(ApiError) as caught:
        center.submit(other, "pay")
    assert caught.value.code == "wrong_audience"


def test_payment_rules(center, store):
    buyer, _ = funded_member(center)
    seller, store_id = store
    assert (
        refused(center, buyer, "pay", pay_body(store_id, 100, name="Evil Shop")).code == "payee_name_mismatch"
    )
    assert refused(center, buyer, "pay", pay_body("S-0000000000000000", 100)).code == "unknown_payee"
    assert (
        refused(center, buyer, "pay", pay_body(store_id, 100) | {"currency": "EUR"}).code
        == "currency_mismatch"
    )
    assert refused(center, seller, "pay", pay_body(store_id, 100)).code == "wrong_role"
    assert refused(center, buyer, "payout", {"currency": "JPY"}).code == "wrong_role"


def test_unknown_key_is_refused(center):
    stranger = SoftwareSigner()
    with pytest.raises(ApiError) as caught:
        center.submit(stranger.envelope("balance", {}, aud=center.center_id), "balance")
    assert (caught.value.code, caught.value.status) == ("unknown_key", 401)


def test_refunds_never_exceed_the_payment(center, store):
    buyer, buyer_id = funded_member(center, 10_000)
    seller, store_id = store
    paid = submit(center, buyer, "pay", pay_body(store_id, 3_000))
    part = submit(
        center, seller, "refund", {"payment_id": paid["payment_id"], "amount_minor": 1_000, "currency": "JPY"}
    )
    assert part["refunded_minor"] == 1_000 and balance(center, buyer_id) == 8_000
    too_much = refused(
        center, seller, "refund", {"payment_id": paid["payment_id"], "amount_minor": 2_001, "currency": "JPY"}
    )
    assert too_much.code == "refund_exceeds_payment"
    rest = submit(
        center, seller, "refund", {"payment_id": paid["payment_id"], "amount_minor": None, "currency": "JPY"}
    )
    assert (
        rest["amount_minor"] == 2_000
        and balance(center, buyer_id) == 10_000
        and balance(center, store_id) == 0
    )
    assert (
        refused(
            center,
            seller,
            "refund",
            {"payment_id": paid["payment_id"], "amount_minor": None, "currency": "JPY"},
        ).code
        == "refund_exceeds_payment"
    )
    other_store, _ = enroll(center, "store", name="Other")
    assert (
        refused(
            center,
            other_store,
            "refund",
            {"payment_id": paid["payment_id"], "amount_minor": 1, "currency": "JPY"},
        ).code
        == "not_your_payment"
    )
    buyer_history = submit(center, buyer, "balance", {})
    assert sorted(r["amount_minor"] for r in buyer_history["refunds"]) == [1_000, 2_000]
    assert ledger_ok(center)


def test_payout_moves_store_balance_to_pending(center, store):
    buyer, _ = funded_member(center, 10_000)
    seller, store_id = store
    submit(center, buyer, "pay", pay_body(store_id, 4_000))
    payout = submit(center, seller, "payout", {"currency": "JPY"})
    assert payout["amount_minor"] == 4_000 and payout["balance_minor"] == 0 and payout["status"] == "pending"
    assert balance(center, store_id) == 0
    with center.engine.connect() as conn:
        pending = conn.execute(
            select(accounts.c.balance_minor).where(accounts.c.id == "payouts:pending")
        ).scalar_one()
    assert pending == 4_000
    assert refused(center, seller, "payout", {"currency": "JPY"}).code == "nothing_to_pay_out"
    assert ledger_ok(center)


def test_store_notices_are_signed_by_the_center(center, store):
    buyer, buyer_id = funded_member(center, 10_000)
    seller, store_id = store
    for index in range(3):
        submit(center, buyer, "pay", pay_body(store_id, 100 + index, f"o-{index}"))
    request = seller.envelope("notices", {"after": 0, "limit": 2}, aud=center.center_id)
    response = center.submit(request, "notices")
    result = result_of(center, request, response)
    assert result["count"] == 2 and len(response["notices"]) == 2
    bodies = []
    for document in response["notices"]:
        header, body = verify_envelope(
            Envelope.from_json(document), spki_der=center.signer.spki, algorithm="ES256"
        )
        assert header.type == "notice" and header.aud == store_id and body["buyer_id"] == buyer_id
        bodies.append(body)
    assert [b["amount_minor"] for b in bodies] == [100, 101]
    rest = seller.envelope("notices", {"after": result["last_seq"], "limit": 100}, aud=center.center_id)
    assert [
        parse_payload(Envelope.from_json(d).payload)[1]["order_ref"]
        for d in center.submit(rest, "notices")["notices"]
    ] == ["o-2"]
    assert refused(center, buyer, "notices", {"after": 0, "limit": 10}).code == "wrong_role"


def test_funding_webhook_with_hmac(center):
    center.webhook_secret = b"test-webhook-secret"
    signer, member_id = enroll(center, "member")
    topup = submit(center, signer, "topup", {"amount_minor": 7_000, "currency": "JPY", "method": "credit"})
    call = json.dumps(
        {"topup_id": topup["topup_id"], "decision": "confirm", "amount_minor": 7_000, "reference": "auth-123"}
    ).encode()
    now = str(int(time.time()))
    with pytest.raises(ApiError) as caught:
        center.funding_webhook(now, "0" * 64, call)
    assert caught.value.code == "bad_webhook_signature"
    stale = str(int(time.time()) - 3600)
    with pytest.raises(ApiError) as caught:
        center.funding_webhook(stale, webhook_signature(center.webhook_secret, stale, call), call)
    assert caught.value.code == "bad_webhook_signature"
    wrong_amount = call.replace(b"7000", b"7001")
    with pytest.raises(ApiError) as caught:
        center.funding_webhook(now, webhook_signature(center.webhook_secret, now, wrong_amount), wrong_amount)
    assert caught.value.code == "amount_mismatch"
    assert balance(center, member_id) == 0
    signature = webhook_signature(center.webhook_secret, now, call)
    assert center.funding_webhook(now, signature, call)["status"] == "confirmed"
    assert center.funding_webhook(now, signature, call)["repeated"] is True  # delivered twice: credited once
    assert balance(center, member_id) == 7_000
    assert ledger_ok(center)


def test_webhook_over_http(api, center):
    center.webhook_secret = b"s3cret"
    signer, member_id = enroll(center, "member")
    topup = submit(center, signer, "topup", {"amount_minor": 500, "currency": "JPY", "method": "bank"})
    call = json.dumps(
        {"topup_id": topup["topup_id"], "decision": "confirm", "amount_minor": 500, "reference": "r"}
    ).encode()
    now = str(int(time.time()))
    bad = api.post(
        "/v1/funding/webhook",
        content=call,
        headers={"x-tokenpay-timestamp": now, "x-tokenpay-signature": "sha256=" + "0" * 64},
    )
    assert (bad.status_code, bad.json()["error"]["code"]) == (401, "bad_webhook_signature")
    good = api.post(
        "/v1/funding/webhook",
        content=call,
        headers={
            "x-tokenpay-timestamp": now,
            "x-tokenpay-signature": "sha256=" + webhook_signature(b"s3cret", now, call),
        },
    )
    assert good.status_code == 200 and good.json()["status"] == "confirmed"
    assert balance(center, member_id) == 500


def test_concurrent_payments_never_overdraw(center, store):
    buyer, buyer_id = funded_member(center, 1_000)
    _, store_id = store
    requests = [
        buyer.envelope("pay", pay_body(store_id, 100, f"c-{i}"), aud=center.center_id, ctr=100 + i)
        for i in range(20)
    ]
    outcomes: list[str] = []

    def attempt(request):
        try:
            center.submit(request, "pay")
            outcomes.append("paid")
        except ApiError as error:
            outcomes.append(error.code)

    threads = [threading.Thread(target=attempt, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Counters may arrive out of order (inside the window): exactly what the balance covers is paid.
    assert sorted(set(outcomes)) == ["insufficient_funds", "paid"]
    assert outcomes.count("paid") == 10
    assert balance(center, buyer_id) == 0
    assert balance(center, store_id) == 1_000
    assert ledger_ok(center)


def test_ledger_check_finds_a_tampered_balance(center, store):
    _buyer, buyer_id = funded_member(center, 1_000)
    with center.engine.begin() as conn:
        conn.execute(
            text("UPDATE accounts SET balance_minor = balance_minor + 1 WHERE id = :id"),
            {"id": party_account(buyer_id)},
        )
    with center.engine.connect() as conn:
        report = check_ledger(conn)
    assert not report.ok
    assert any(party_account(buyer_id) in p for p in report.problems)
    assert any("sum to 1" in p for p in report.problems)


def test_transfers_are_append_only(center, store):
    funded_member(center, 1_000)
    for statement in ("UPDATE transfers SET amount_minor = 1", "DELETE FROM transfers"):
        with pytest.raises(Exception, match="append-only"), center.engine.begin() as conn:
            conn.execute(text(statement))
    with center.engine.connect() as conn:
        assert conn.execute(select(func.sum(transfers.c.amount_minor))).scalar_one() == 1_000


def test_revoked_key_is_refused_and_history_stays(center, store):
    from center.keys.admin import revoke_key

    buyer, buyer_id = funded_member(center, 1_000)
    _, store_id = store
    paid_request = buyer.envelope("pay", pay_body(store_id, 100), aud=center.center_id)
    first = center.submit(paid_request, "pay")
    view = revoke_key(center.engine, buyer.kid, reason="card lost", decided_by="operator:test", now_ms=1)
    assert view["member_id"] == buyer_id and view["repeated"] is False
    error = refused(center, buyer, "pay", pay_body(store_id, 100, "after"))
    assert (error.code, error.status) == ("key_revoked", 403)
    # Even a resend of an accepted message is refused once the key is revoked; the payment stays in the books.
    with pytest.raises(ApiError) as caught:
        center.submit(paid_request, "pay")
    assert caught.value.code == "key_revoked"
    assert balance(center, buyer_id) == 900 and balance(center, store_id) == 100
    assert first["receipt"]
    with center.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(payments)).scalar_one() == 1
    assert revoke_key(center.engine, buyer.kid, reason="again", decided_by="operator:test", now_ms=2)[
        "repeated"
    ]
    assert ledger_ok(center)
