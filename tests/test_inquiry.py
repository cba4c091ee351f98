"""The console's read-only inquiries (center/inquiry.py) on SQLite and PostgreSQL.

The data (tests/inquiry_support.py) is made through center.pipeline.service with signed
requests on a controlled clock spread over three UTC days, so every sum below is
known exactly and a wrong day boundary, a wrong sign or a wrong join changes it.
"""

from __future__ import annotations

import pytest
from inquiry_support import DAY0_MS, DAY_MS
from sqlalchemy import insert

from center.console import inquiry, statistics
from center.console.bounds import Page, Window, day_window
from center.errors import ApiError
from center.ledger.book import check_ledger
from center.storage.db import parties


def test_search_by_name_id_and_key_is_case_insensitive_and_shows_no_personal_data(world):
    with world.center.engine.connect() as conn:
        for text in ("hanako", "HANAKO", "yamada", " ako Ya "):
            found = inquiry.search_parties(conn, text)["rows"]
            assert [row["party_id"] for row in found] == [world.ids["hanako"]], text
        assert set(found[0]) == {
            "party_id",
            "role",
            "name",
            "status",
            "created_at_ms",
            "balance_minor",
            "kids",
        }
        assert found[0]["balance_minor"] == 7_900 and found[0]["kids"] == [world.signers["hanako"].kid]
        by_id = inquiry.search_parties(conn, world.ids["taro"][:7].upper())["rows"]
        assert [row["name"] for row in by_id] == ["Taro Suzuki"]
        by_kid = inquiry.search_parties(conn, world.signers["books"].kid[:12])["rows"]
        assert [row["party_id"] for row in by_kid] == [world.ids["books"]]
        stores = inquiry.search_parties(conn, "o", role="store")["rows"]
        assert [row["name"] for row in stores] == ["Book Nook", "Corner Shop"]
        everyone = inquiry.search_parties(conn, "")["rows"]
        assert [row["name"] for row in everyone] == [
            "100% Cotton_Club",
            "Book Nook",
            "Corner Shop",
            "Hanako Yamada",
            "Taro Suzuki",
        ]


def test_search_wildcards_are_plain_characters(world):
    with world.center.engine.connect() as conn:
        for text in ("%", "_", "0% c", "n_c"):
            found = inquiry.search_parties(conn, text)["rows"]
            assert [row["name"] for row in found] == ["100% Cotton_Club"], text
        assert inquiry.search_parties(conn, "\\")["rows"] == []


def test_search_limits_and_operators_are_not_listed(world):
    with world.center.engine.begin() as conn:
        conn.execute(
            insert(parties).values(
                id="O-0123456789abcdef",
                role="operator",
                name="Hanako Operator",
                address="",
                status="active",
                created_at_ms=world.clock(),
            )
        )
    with world.center.engine.connect() as conn:
        assert [row["name"] for row in inquiry.search_parties(conn, "hanako")["rows"]] == ["Hanako Yamada"]
        with pytest.raises(ApiError) as caught:
            inquiry.search_parties(conn, "x" * 101)
        assert caught.value.code == "invalid_request"
        assert len(inquiry.search_parties(conn, "x" * 100)["rows"]) == 0
        for text in ("\x00", "a\x00b", "\x1b[2J", "a\u2028b"):
            with pytest.raises(ApiError) as caught:
                inquiry.search_parties(conn, text)
            assert caught.value.code == "invalid_request", repr(text)
        with pytest.raises(ApiError):
            inquiry.search_parties(conn, "a", role="operator")
        page = inquiry.search_parties(conn, "", page=Page(2, 2))
        assert [row["name"] for row in page["rows"]] == ["Corner Shop", "Hanako Yamada"] and page[
            "has_more"
        ] is True
        last = inquiry.search_parties(conn, "", page=Page(2, 4))
        assert [row["name"] for row in last["rows"]] == ["Taro Suzuki"] and last["has_more"] is False
    for limit, offset in ((0, 0), (201, 0), (50, -1), (50, 10_001)):
        with pytest.raises(ApiError) as caught:
            Page.of(limit, offset)
        assert caught.value.code == "invalid_request"


def test_statement_has_exact_running_balance(world):
    with world.center.engine.connect() as conn:
        full = inquiry.statement(conn, world.ids["hanako"])
    rows = full["rows"]
    assert [(r["kind"], r["debit_minor"], r["credit_minor"], r["balance_minor"]) for r in rows] == [
        ("topup", 0, 10_000, 10_000),
        ("payment", 1_200, 0, 8_800),
        ("payment", 800, 0, 8_000),
        ("payment", 300, 0, 7_700),
        ("refund", 0, 200, 7_900),
    ]
    assert [r["ref"] for r in rows] == [
        world.ids["topup_h1"],
        world.ids["pay_h1"],
        world.ids["pay_h2"],
        world.ids["pay_h3"],
        world.ids["refund"],
    ]
    assert [r["counterparty_name"] for r in rows] == [
        "",
        "Corner Shop",
        "Book Nook",
        "Corner Shop",
        "Corner Shop",
    ]
    assert rows[0]["counterparty"] == "funding:bank"
    assert full["opening_balance_minor"] == 0 and full["closing_balance_minor"] == 7_900
    assert full["party"]["balance_minor"] == 7_900 and full["party"]["name"] == "Hanako Yamada"
    assert "birth_date" not in full["party"] and "address" not in full["party"]


def test_statement_pages_and_windows_carry_the_balance(world):
    with world.center.engine.connect() as conn:
        page = inquiry.statement(conn, world.ids["hanako"], page=Page(2, 2))
        assert page["opening_balance_minor"] == 8_800
        assert [r["balance_minor"] for r in page["rows"]] == [8_000, 7_700] and page["has_more"] is True
        later = inquiry.statement(conn, world.ids["hanako"], window=day_window("2026-11-21", "2026-11-22"))
        assert later["opening_balance_minor"] == 8_000
        assert [(r["debit_minor"], r["credit_minor"], r["balance_minor"]) for r in later["rows"]] == [
            (300, 0, 7_700),
            (0, 200, 7_900),
        ]
        day1_page = inquiry.statement(
            conn, world.ids["hanako"], window=day_window("2026-11-21", None), page=Page(1, 1)
        )
        assert day1_page["opening_balance_minor"] == 7_700 and day1_page["rows"][0]["balance_minor"] == 7_900
        store = inquiry.statement(conn, world.ids["corner"])
        assert [r["balance_minor"] for r in store["rows"]] == [1_200, 3_200, 3_500, 3_300, 0]
        assert store["rows"][-1]["counterparty"] == "payouts:pending"
        for bad in ("M-0000000000000000", "O-0123456789abcdef"):
            with pytest.raises(ApiError) as caught:
                inquiry.statement(conn, bad)
            assert caught.value.code in ("unknown_party", "invalid_request")
        with pytest.raises(ApiError) as caught:
            inquiry.statement(conn, "M-0000000000000000")
        assert (caught.value.code, caught.value.status) == ("unknown_party", 404)


def test_day_window_rules():
    window = day_window("2026-11-21", "2026-11-21")
    assert (window.from_ms, window.to_ms) == (DAY0_MS + DAY_MS, DAY0_MS + 2 * DAY_MS)
    assert day_window(None, None) == Window()
    for start, end in (
        ("2026-11-22", "2026-11-21"),
        ("2026-13-01", None),
        ("21-11-2026", None),
        (None, "yesterday"),
        ("2026-11-21T00:00", None),
    ):
        with pytest.raises(ApiError) as caught:
            day_window(start, end)
        assert caught.value.code == "invalid_request"


def test_payments_filters(world):
    ids = world.ids
    with world.center.engine.connect() as conn:
        corner = inquiry.list_payments(conn, store_id=ids["corner"])["rows"]
        assert [(r["payment_id"], r["amount_minor"], r["buyer_name"]) for r in corner] == [
            (ids["pay_h3"], 300, "Hanako Yamada"),
            (ids["pay_t1"], 2_000, "Taro Suzuki"),
            (ids["pay_h1"], 1_200, "Hanako Yamada"),
        ]
        assert corner[2]["refunded_minor"] == 200 and corner[2]["order_ref"] == "o-1"
        assert [r["payment_id"] for r in inquiry.list_payments(conn, buyer_id=ids["taro"])["rows"]] == [
            ids["pay_t1"]
        ]
        day0 = inquiry.list_payments(conn, window=day_window("2026-11-20", "2026-11-20"))["rows"]
        assert sum(r["amount_minor"] for r in day0) == 2_000 and len(day0) == 2
        both = inquiry.list_payments(
            conn, store_id=ids["corner"], buyer_id=ids["hanako"], window=day_window("2026-11-21", None)
        )["rows"]
        assert [r["payment_id"] for r in both] == [ids["pay_h3"]]
        first = inquiry.list_payments(conn, page=Page(1, 0))
        assert first["has_more"] is True and first["rows"][0]["payment_id"] == ids["pay_h3"]
        for bad in ({"store_id": ids["hanako"]}, {"buyer_id": ids["corner"]}, {"store_id": "S-1' OR 1=1"}):
            with pytest.raises(ApiError) as caught:
                inquiry.list_payments(conn, **bad)
            assert caught.value.code == "invalid_request"


def test_topups_pending_first(world):
    ids = world.ids
    with world.center.engine.connect() as conn:
        rows = inquiry.list_topups(conn)["rows"]
        assert [(r["topup_id"], r["status"]) for r in rows] == [
            (ids["topup_h2"], "pending"),
            (ids["topup_t2"], "declined"),
            (ids["topup_t1"], "confirmed"),
            (ids["topup_h1"], "confirmed"),
        ]
        assert rows[0]["member_name"] == "Hanako Yamada" and rows[0]["amount_minor"] == 3_000
        assert rows[1]["decided_by"] == "operator:test" and rows[0]["decided_by"] == ""
        confirmed = inquiry.list_topups(conn, status="confirmed")["rows"]
        assert sum(r["amount_minor"] for r in confirmed) == 15_000
        taro = inquiry.list_topups(conn, member_id=ids["taro"])["rows"]
        assert [r["method"] for r in taro] == ["postal", "credit"]
        with pytest.raises(ApiError):
            inquiry.list_topups(conn, status="lost")


def test_refunds_and_payouts(world):
    ids = world.ids
    with world.center.engine.connect() as conn:
        refunds = inquiry.list_refunds(conn)["rows"]
        assert [
            (
                r["refund_id"],
                r["payment_id"],
                r["amount_minor"],
                r["paid_minor"],
                r["store_name"],
                r["buyer_name"],
            )
            for r in refunds
        ] == [(ids["refund"], ids["pay_h1"], 200, 1_200, "Corner Shop", "Hanako Yamada")]
        assert inquiry.list_refunds(conn, store_id=ids["books"])["rows"] == []
        assert len(inquiry.list_refunds(conn, buyer_id=ids["hanako"])["rows"]) == 1
        payouts = inquiry.list_payouts(conn)["rows"]
        assert [(r["payout_id"], r["amount_minor"], r["status"], r["bank_account"]) for r in payouts] == [
            (ids["payout"], 3_300, "pending", "JP-0001-1234567")
        ]
        assert inquiry.list_payouts(conn, status="settled")["rows"] == []
        assert inquiry.list_payouts(conn, store_id=ids["books"])["rows"] == []


def test_statistics_exact_per_day(world):
    with world.center.engine.connect() as conn:
        stats = statistics.statistics(conn, days=3, now_ms=world.clock())
        assert (stats["from_day"], stats["to_day"]) == ("2026-11-20", "2026-11-22")
        assert stats["daily"] == [
            {"day": "2026-11-20", "count": 2, "volume_minor": 2_000},
            {"day": "2026-11-21", "count": 2, "volume_minor": 2_300},
            {"day": "2026-11-22", "count": 0, "volume_minor": 0},
        ]
        assert stats["top_stores"] == [
            {
                "store_id": world.ids["corner"],
                "name": "Corner Shop",
                "count": 3,
                "volume_minor": 3_500,
                "refunded_minor": 200,
            },
            {
                "store_id": world.ids["books"],
                "name": "Book Nook",
                "count": 1,
                "volume_minor": 800,
                "refunded_minor": 0,
            },
        ]
        assert stats["funding"] == [
            {"method": "credit", "count": 1, "amount_minor": 5_000},
            {"method": "bank", "count": 1, "amount_minor": 10_000},
            {"method": "postal", "count": 0, "amount_minor": 0},
            {"method": "cash", "count": 0, "amount_minor": 0},
        ]
        # The last two days leave out day 0: its payments and hanako's top-up (confirmed on day 0).
        two = statistics.statistics(conn, days=2, now_ms=world.clock(), top=1)
        assert [d["volume_minor"] for d in two["daily"]] == [2_300, 0]
        assert [(s["name"], s["volume_minor"]) for s in two["top_stores"]] == [("Corner Shop", 2_300)]
        assert [f["amount_minor"] for f in two["funding"]] == [5_000, 0, 0, 0]
        # The last millisecond of day 0 is still day 0; a window ending there sees only day 0.
        day0 = statistics.statistics(conn, days=1, now_ms=DAY0_MS + DAY_MS - 1)
        assert day0["daily"] == [{"day": "2026-11-20", "count": 2, "volume_minor": 2_000}]
        assert [f["amount_minor"] for f in day0["funding"]] == [0, 10_000, 0, 0]
        for days in (0, 367):
            with pytest.raises(ApiError):
                statistics.statistics(conn, days=days, now_ms=world.clock())
        with pytest.raises(ApiError):
            statistics.top_stores(conn, days=3, now_ms=world.clock(), limit=51)
        assert check_ledger(conn).problems == []
