"""Concurrency against real center processes (`center serve --workers N`) over
pinned HTTPS: one buyer racing its own balance, many buyers on one hot store,
enrollments and payments resent concurrently. PostgreSQL with 3 workers, and
the embedded SQLite default with 2.

Every signed request is signed before the concurrent phase; the concurrent
phase only sends bytes (asyncio + httpx, dozens of connections at once).
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from stress_support import (
    STORE_NAME,
    Api,
    LiveCenter,
    enrollment,
    fund_members,
    pay_body,
    payment_pairing_problems,
    replay_party_in_commit_order,
    send_concurrently,
)
from support import SoftwareSigner, create_pg_database, drop_pg_database

from center.ledger.book import party_account
from center.storage.db import accounts, keys, parties, payments

SEED = random.randrange(2**32)


@pytest.fixture
def pg_url(postgres_available):
    if not postgres_available:
        pytest.skip("PostgreSQL is not running (the README's test command starts one)")
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture
def start_center(tmp_path):
    """Factory: start_center(db_url, workers) -> a started LiveCenter, stopped after the test."""
    started = []

    def start(db_url: str, workers: int) -> LiveCenter:
        center = LiveCenter.create(tmp_path, db_url)
        center.process.start(workers=workers)
        started.append(center)
        return center

    yield start
    for center in started:
        center.close()


@pytest.fixture
def pg_center(pg_url, start_center) -> LiveCenter:
    return start_center(pg_url, 3)


def report(record_property, name: str, value) -> None:
    record_property(name, value)
    print(f"[stress] {name} = {value}")


# --- (a) one buyer, twice as many payments as the balance covers -----------------------------


@pytest.mark.parametrize(
    "backend, workers, attempts, covered",
    [
        pytest.param("postgres", 3, 1000, 500, marks=pytest.mark.postgres, id="postgres-3-workers-1000"),
        pytest.param("sqlite", 2, 200, 100, id="sqlite-2-workers-200"),
    ],
)
def test_one_buyer_cannot_overspend_under_concurrent_payments(
    request, start_center, tmp_path, record_property, backend, workers, attempts, covered
):
    db_url = (
        request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'center.db'}"
    )
    center = start_center(db_url, workers)
    amount = 100
    rng = random.Random(SEED)
    with Api(center) as api:
        _, store_id = api.enroll("store", name=STORE_NAME)
        buyer, buyer_id = api.enroll("member")
        api.confirm_by_operator(api.topup(buyer, covered * amount))
    assert center.balance(buyer_id) == covered * amount

    # Pre-signed: distinct msg_ids, counters 3..attempts+2 (1 and 2 went to enroll and top-up),
    # sent in shuffled order: they arrive out of order, all within the center's counter window.
    signed = [
        buyer.envelope("pay", pay_body(store_id, amount, f"A-{i}"), aud=center.center_id)
        for i in range(attempts)
    ]
    assert len({e.payload for e in signed}) == attempts
    order = list(range(attempts))
    rng.shuffle(order)
    answers, wall_s = send_concurrently(center, [("/v1/payments", signed[i]) for i in order], connections=48)
    by_request = dict(zip(order, answers, strict=True))

    statuses = Counter(a.status for a in answers)
    assert statuses == {200: covered, 409: attempts - covered}, (statuses, SEED)
    refused = Counter(a.code for a in answers if a.status != 200)
    assert refused == {"insufficient_funds": attempts - covered}, refused
    results = [center.result_of(signed[i], a) for i, a in by_request.items() if a.status == 200]
    assert {r["action"] for r in results} == {"paid"} and {r["amount_minor"] for r in results} == {amount}
    # Each accepted payment saw a different balance: they were applied one after another.
    assert sorted(r["balance_minor"] for r in results) == [amount * k for k in range(covered)]

    assert center.balance(buyer_id) == 0
    assert center.balance(store_id) == covered * amount
    assert center.count(payments) == covered
    assert len({r["payment_id"] for r in results}) == covered
    assert payment_pairing_problems(center) == []
    replay = replay_party_in_commit_order(center, buyer_id)
    assert replay == {"transfers": covered + 1, "lowest": 0, "final": 0}, replay
    center.ledger_check()
    center.audit_verify()
    # The balance floor is structural too: the database itself refuses a negative member balance.
    with pytest.raises(IntegrityError), center.engine().begin() as conn:
        conn.execute(
            update(accounts).where(accounts.c.id == party_account(buyer_id)).values(balance_minor=-1)
        )

    report(record_property, f"{backend}_one_buyer_requests_per_s", round(attempts / wall_s))
    report(
        record_property,
        f"{backend}_one_buyer_p50_ms",
        round(1000 * sorted(a.elapsed_s for a in answers)[attempts // 2], 1),
    )


# --- (b) one hot store ----------------------------------------------------------------------------


def test_many_buyers_paying_one_hot_store(pg_center, record_property):
    center = pg_center
    buyers_count, per_buyer, funding = 50, 10, 10_000
    rng = random.Random(SEED)
    with Api(center) as api:
        _, store_id = api.enroll("store", name=STORE_NAME)
        buyers = fund_members(api, buyers_count, funding)
    signed, spent = [], Counter()
    for signer, member_id in buyers:
        for k in range(per_buyer):
            amount = rng.randint(1, 1000)
            spent[member_id] += amount
            signed.append(
                (
                    signer.envelope(
                        "pay", pay_body(store_id, amount, f"H-{member_id}-{k}"), aud=center.center_id
                    ),
                    member_id,
                )
            )
    rng.shuffle(signed)
    answers, wall_s = send_concurrently(center, [("/v1/payments", e) for e, _ in signed], connections=48)

    assert Counter(a.status for a in answers) == {200: len(signed)}, Counter(a.code for a in answers)
    for (request, _), answer in zip(signed, answers, strict=True):
        result = center.result_of(request, answer)
        assert result["action"] == "paid" and result["store_id"] == store_id
    assert center.balance(store_id) == sum(spent.values())
    for _, member_id in buyers:
        assert center.balance(member_id) == funding - spent[member_id]
    assert center.count(payments) == len(signed)
    assert payment_pairing_problems(center) == []
    center.ledger_check()
    center.audit_verify()
    report(record_property, "postgres_hot_store_payments_per_s", round(len(signed) / wall_s))


# --- (c) enrollments racing ------------------------------------------------------------------------


def test_the_same_enrollment_sent_concurrently_creates_one_member(pg_center):
    """20 copies of one signed enrollment at once, for 10 keys (200 requests interleaved), up to
    8 rounds (bounded to ~20 s): one member per key, and every copy answered with that member's
    one receipt. The race it looks for is narrow; each round is another chance to hit it."""
    center = pg_center
    copies, per_round, rounds = 20, 10, 8
    failures, enrolled = Counter(), 0
    deadline = time.monotonic() + 20
    for round_ in range(rounds):
        if time.monotonic() > deadline:
            break
        signers = [SoftwareSigner() for _ in range(per_round)]
        requests = [
            enrollment(center, s, "member", name=f"Racer {round_}-{i}") for i, s in enumerate(signers)
        ]
        batch = [(i, requests[i]) for i in range(per_round) for _ in range(copies)]
        random.Random(SEED + round_).shuffle(batch)
        answers, _ = send_concurrently(center, [("/v1/enroll", r) for _, r in batch], connections=48)
        failures.update((a.status, a.code) for a in answers if a.status != 200)
        enrolled += per_round
        for i, request in enumerate(requests):
            assert center.count(keys, keys.c.kid == signers[i].kid) == 1
            answered = [a for (j, _), a in zip(batch, answers, strict=True) if j == i and a.status == 200]
            assert answered, "no copy of an enrollment was accepted"
            assert len({a.body for a in answered}) == 1, "different receipts for one enrollment"
            member_id = center.result_of(request, answered[0])["member_id"]
            assert center.count(parties, parties.c.id == member_id) == 1
        assert center.count(parties) == enrolled, "a copy of an enrollment created a second member"
        if failures:
            break
    assert not failures, (
        f"copies of an enrollment were refused instead of answered with its receipt: {failures}"
    )


def test_different_enrollments_concurrently_all_succeed(pg_center):
    center = pg_center
    signers = [SoftwareSigner() for _ in range(50)]
    requests = [
        enrollment(center, s, "member" if i % 5 else "store", name=f"Party {i}")
        for i, s in enumerate(signers)
    ]
    answers, _ = send_concurrently(center, [("/v1/enroll", r) for r in requests], connections=48)
    assert Counter(a.status for a in answers) == {200: 50}, Counter(a.code for a in answers)
    ids = [center.result_of(r, a)["member_id"] for r, a in zip(requests, answers, strict=True)]
    assert len(set(ids)) == 50
    assert center.count(parties) == 50 and center.count(keys) == 50
    center.ledger_check()


# --- the same signed payment sent concurrently --------------------------------------------------


def test_the_same_payment_sent_concurrently_is_applied_once_with_one_receipt(pg_center):
    """A wallet or terminal that resends while the first attempt is still in flight
    (a timeout, a second sync): every copy must get the first receipt, never a refusal."""
    center = pg_center
    copies, distinct, amount = 20, 5, 700
    with Api(center) as api:
        _, store_id = api.enroll("store", name=STORE_NAME)
        buyer, buyer_id = api.enroll("member")
        api.confirm_by_operator(api.topup(buyer, 10_000))
    requests = [
        buyer.envelope("pay", pay_body(store_id, amount, f"R-{i}"), aud=center.center_id)
        for i in range(distinct)
    ]
    batch = [(i, requests[i]) for i in range(distinct) for _ in range(copies)]
    random.Random(SEED).shuffle(batch)
    answers, _ = send_concurrently(center, [("/v1/payments", r) for _, r in batch], connections=48)

    assert center.count(payments) == distinct, "a resent payment was applied twice"
    assert center.balance(buyer_id) == 10_000 - distinct * amount
    failures = Counter((a.status, a.code) for a in answers if a.status != 200)
    assert not failures, (
        f"copies of an accepted payment were refused instead of answered with its receipt: {failures}"
    )
    for i, request in enumerate(requests):
        assert len({a.body for (j, _), a in zip(batch, answers, strict=True) if j == i}) == 1
        center.result_of(request, first_answer(answers, batch, i))
    center.ledger_check()


def first_answer(answers, batch, index):
    """The first answer to request `index` of a batch of copies."""
    return next(a for (j, _), a in zip(batch, answers, strict=True) if j == index)
