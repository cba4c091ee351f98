"""Paying the same order twice by accident (issue 16): a buyer's second payment of an order reference to
the same store is refused (duplicate_order, naming the first payment) unless the request says it is
meant ("repeat": true). On SQLite and PostgreSQL, through the group commit (the hot path), a posted
batch and the single path; the unique index is the backstop when a read misses a concurrent commit;
migration 0014 upgrades a database that already holds repeated orders."""

from __future__ import annotations

import importlib
import re

import pytest
from alembic import command
from sqlalchemy import func, insert, inspect, select
from sqlalchemy.exc import IntegrityError
from test_batch import post_batch
from test_payments_api import balance, enroll, funded_member, ledger_ok, pay_body, refused, result_of, submit

from center.errors import ApiError
from center.pipeline import money
from center.storage.db import alembic_config, migrate, payments, transfers
from paywire.bodies import check_pay
from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.receipts import check_refusal

SHOP = "Corner Shop"
PAYMENT_ID = re.compile(r"P-[0-9a-f]{16}")


@pytest.fixture
def shop(center):
    return enroll(center, "store", name=SHOP)[1]


def count(center, table, *where) -> int:
    with center.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def repeats(center) -> dict[str, bool]:
    """payment id -> its repeat flag."""
    with center.engine.connect() as conn:
        return dict(conn.execute(select(payments.c.id, payments.c.repeat)).all())


def again(body: dict) -> dict:
    return body | {"repeat": True}


def signed_refusal(center, request: Envelope, error: dict | ApiError) -> dict:
    """The center-signed refusal of `request`, checked: {"code", "message", "status"}."""
    refusal = error.refusal if isinstance(error, ApiError) else error["refusal"]
    return check_refusal(
        Envelope.from_json(refusal),
        center_spki=center.signer.spki,
        center_alg=center.signer.alg,
        request=request,
    )


def submit_refused(center, request: Envelope) -> ApiError:
    with pytest.raises(ApiError) as caught:
        center.submit(request, "pay")
    return caught.value


def test_a_second_payment_of_an_order_is_refused_naming_the_first_and_moves_nothing(center, shop):
    buyer, buyer_id = funded_member(center, 1_000)
    first = submit(center, buyer, "pay", pay_body(shop, 300, "A-17"))
    transfers_before = count(center, transfers)

    request = buyer.envelope("pay", pay_body(shop, 300, "A-17"), aud=center.center_id)
    error = submit_refused(center, request)
    assert (error.code, error.status) == ("duplicate_order", 409)
    assert PAYMENT_ID.findall(error.message) == [first["payment_id"]]
    assert "'A-17'" in error.message and shop in error.message and "repeat" in error.message
    assert signed_refusal(center, request, error) == {
        "code": "duplicate_order",
        "message": error.message,
        "status": 409,
    }
    assert (balance(center, buyer_id), balance(center, shop)) == (700, 300)
    assert count(center, payments) == 1 and count(center, transfers) == transfers_before

    # The refusal is final for these bytes: a resend gets it again, word for word, and pays nothing.
    resent = submit_refused(center, request)
    assert (resent.code, resent.message, resent.refusal) == (error.code, error.message, error.refusal)
    assert (balance(center, buyer_id), count(center, payments)) == (700, 1)
    assert ledger_ok(center)


def test_a_repeat_the_request_means_is_paid_and_later_accidents_still_name_the_first(center, shop):
    buyer, buyer_id = funded_member(center, 1_000)
    first = submit(center, buyer, "pay", pay_body(shop, 100, "A-17"))
    second = submit(center, buyer, "pay", again(pay_body(shop, 100, "A-17")))
    assert second["action"] == "paid" and second["payment_id"] != first["payment_id"]
    assert repeats(center) == {first["payment_id"]: False, second["payment_id"]: True}

    error = refused(center, buyer, "pay", pay_body(shop, 100, "A-17"))
    assert error.code == "duplicate_order" and PAYMENT_ID.findall(error.message) == [first["payment_id"]]
    third = submit(center, buyer, "pay", again(pay_body(shop, 100, "A-17")))
    assert repeats(center)[third["payment_id"]] is True
    assert (balance(center, buyer_id), balance(center, shop)) == (700, 300)
    assert ledger_ok(center)


def test_repeat_on_an_order_never_paid_is_its_first_payment(center, shop):
    # The flag says "I mean it", not "this is a repeat": the payment still guards its order.
    buyer, buyer_id = funded_member(center, 1_000)
    first = submit(center, buyer, "pay", again(pay_body(shop, 100, "B-1")))
    assert repeats(center) == {first["payment_id"]: False}
    error = refused(center, buyer, "pay", pay_body(shop, 100, "B-1"))
    assert error.code == "duplicate_order" and first["payment_id"] in error.message
    assert balance(center, buyer_id) == 900


def test_another_store_buyer_or_order_reference_is_not_a_repeat(center, shop):
    other_shop = enroll(center, "store", name="Other Shop")[1]
    buyer, buyer_id = funded_member(center, 1_000)
    neighbour, neighbour_id = funded_member(center, 1_000)
    submit(center, buyer, "pay", pay_body(shop, 100, "A-17"))
    assert (
        submit(center, buyer, "pay", pay_body(other_shop, 100, "A-17", name="Other Shop"))["action"] == "paid"
    )
    assert submit(center, neighbour, "pay", pay_body(shop, 100, "A-17"))["action"] == "paid"
    assert submit(center, buyer, "pay", pay_body(shop, 100, "A-18"))["action"] == "paid"
    assert (
        submit(center, buyer, "pay", pay_body(shop, 100, "a-17"))["action"] == "paid"
    )  # references are exact
    assert (balance(center, buyer_id), balance(center, neighbour_id)) == (600, 900)
    assert set(repeats(center).values()) == {False}


def test_a_refused_payment_does_not_claim_its_order(center, shop):
    # Only a payment that was booked is an order's first: one refused for funds leaves it free.
    buyer, buyer_id = funded_member(center, 100)
    assert refused(center, buyer, "pay", pay_body(shop, 500, "C-1")).code == "insufficient_funds"
    assert submit(center, buyer, "pay", pay_body(shop, 100, "C-1"))["action"] == "paid"
    assert balance(center, buyer_id) == 0


def test_the_same_order_twice_in_one_batch_pays_once(center, api, shop):
    buyer, buyer_id = funded_member(center, 1_000)
    requests = [
        buyer.envelope("pay", pay_body(shop, 100, "D-1"), aud=center.center_id),
        buyer.envelope("pay", pay_body(shop, 100, "D-1"), aud=center.center_id),  # the accident
        buyer.envelope("pay", again(pay_body(shop, 100, "D-1")), aud=center.center_id),  # meant
        buyer.envelope("pay", pay_body(shop, 100, "D-2"), aud=center.center_id),
    ]
    results = post_batch(api, requests).json()["results"]
    first = result_of(center, requests[0], results[0])
    assert results[1]["error"]["code"] == "duplicate_order" and results[1]["status"] == 409
    assert PAYMENT_ID.findall(results[1]["error"]["message"]) == [first["payment_id"]]
    assert signed_refusal(center, requests[1], results[1])["code"] == "duplicate_order"
    meant = result_of(center, requests[2], results[2])
    assert result_of(center, requests[3], results[3])["action"] == "paid"
    assert repeats(center)[meant["payment_id"]] is True and repeats(center)[first["payment_id"]] is False
    assert (balance(center, buyer_id), count(center, payments)) == (700, 3)

    # The batch recorded the refusal: the same bytes, alone or in another batch, get it again.
    alone = api.post("/v1/payments", json=requests[1].to_json())
    assert alone.status_code == 409 and alone.json()["error"] == results[1]["error"]
    assert post_batch(api, requests).json()["results"] == results
    assert (balance(center, buyer_id), count(center, payments)) == (700, 3)
    assert ledger_ok(center)


def test_a_batch_refuses_an_order_paid_before_it(center, api, shop):
    buyer, buyer_id = funded_member(center, 1_000)
    first = submit(center, buyer, "pay", pay_body(shop, 100, "E-1"))
    requests = [buyer.envelope("pay", pay_body(shop, 100, f"E-{n}"), aud=center.center_id) for n in (2, 1, 3)]
    results = post_batch(api, requests).json()["results"]
    assert (
        results[1]["error"]["code"] == "duplicate_order"
        and first["payment_id"] in results[1]["error"]["message"]
    )
    assert ["receipt" in result for result in results] == [True, False, True]
    assert balance(center, buyer_id) == 700


def test_the_single_path_refuses_the_same_way(center, shop):
    # The path a payment takes when its batch cannot commit as one (center.pipeline.accept).
    buyer, buyer_id = funded_member(center, 1_000)
    first = submit(center, buyer, "pay", pay_body(shop, 100, "F-1"))
    request = buyer.envelope("pay", pay_body(shop, 100, "F-1"), aud=center.center_id)
    with pytest.raises(ApiError) as caught:
        center.accept_verified(center.verify_request(request, "pay"))
    assert caught.value.code == "duplicate_order" and first["payment_id"] in caught.value.message
    assert signed_refusal(center, request, caught.value)["code"] == "duplicate_order"
    assert submit_refused(center, request).message == caught.value.message  # recorded: the resend agrees
    meant = buyer.envelope("pay", again(pay_body(shop, 100, "F-1")), aud=center.center_id)
    paid = result_of(center, meant, center.accept_verified(center.verify_request(meant, "pay")))
    assert repeats(center)[paid["payment_id"]] is True
    assert balance(center, buyer_id) == 800 and ledger_ok(center)


def test_the_unique_index_refuses_what_a_stale_read_let_through(center, shop, monkeypatch):
    # A batch reads the orders' first payments once; should that read miss one (a concurrent commit
    # it could not see), the index refuses the row, the batch rolls back and the payment is answered
    # alone: refused all the same, the other payments of the batch paid.
    buyer, buyer_id = funded_member(center, 1_000)
    first = submit(center, buyer, "pay", pay_body(shop, 100, "G-1"))
    monkeypatch.setattr(money, "first_payments", lambda conn, orders: {})
    requests = [buyer.envelope("pay", pay_body(shop, 100, f"G-{n}"), aud=center.center_id) for n in (1, 2)]
    results = center.submit_batch(requests, "pay")
    assert (
        results[0]["error"]["code"] == "duplicate_order"
        and first["payment_id"] in results[0]["error"]["message"]
    )
    assert result_of(center, requests[1], results[1])["action"] == "paid"
    assert balance(center, buyer_id) == 800 and count(center, payments) == 2

    row = {
        "id": "P-00000000000000aa",
        "buyer_id": buyer_id,
        "store_id": shop,
        "amount_minor": 1,
        "refunded_minor": 0,
        "order_ref": "G-1",
        "created_at_ms": 0,
    }
    with pytest.raises(IntegrityError), center.engine.begin() as conn:
        conn.execute(insert(payments).values(row))  # repeat defaults to false: a second first payment
    with center.engine.begin() as conn:
        conn.execute(insert(payments).values(row | {"repeat": True}))


@pytest.mark.parametrize("value", [False, None, 1, "true", [True]])
def test_repeat_is_true_or_absent(value):
    body = pay_body("S-0123456789abcdef", 100)
    check_pay(body)
    check_pay(again(body))
    with pytest.raises(WireError) as caught:
        check_pay(body | {"repeat": value})
    assert caught.value.code == "malformed_payload"


def test_migration_0014_keeps_orders_already_paid_twice(center, shop):
    buyer, buyer_id = funded_member(center, 1_000)
    paid = [submit(center, buyer, "pay", pay_body(shop, 100, ref))["payment_id"] for ref in ("H-1", "H-2")]
    config = alembic_config()
    with center.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0013")
        assert "repeat" not in {column["name"] for column in inspect(conn).get_columns("payments")}
        # Written before orders were guarded: H-1 three times, H-2 twice, by the same buyer.
        columns = [column for column in payments.c if column.name not in ("seq", "repeat")]
        old = dict(conn.execute(select(*columns).where(payments.c.id == paid[0])).mappings().one())
        for n, ref in enumerate(("H-1", "H-1", "H-2")):
            conn.execute(insert(payments).values(old | {"id": f"P-{n:016x}", "order_ref": ref}))
    migrate(center.engine)

    flags = repeats(center)
    assert flags == {
        paid[0]: False,
        paid[1]: False,
        "P-0000000000000000": True,
        "P-0000000000000001": True,
        "P-0000000000000002": True,
    }
    indexes = {index["name"]: index for index in inspect(center.engine).get_indexes("payments")}
    assert indexes["ux_payments_first_of_order"]["unique"]
    assert refused(center, buyer, "pay", pay_body(shop, 100, "H-1")).message.count(paid[0]) == 1
    migration = importlib.import_module("center.storage.migrations.versions.0014_payment_repeat")
    with center.engine.begin() as conn:
        assert migration.mark_repeats(conn) == 0  # nothing left to mark: the index holds
    assert balance(center, buyer_id) == 800
