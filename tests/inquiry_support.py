"""A small center spread over three UTC days, made through center.pipeline.service with signed
requests (software keys) on a controlled clock: the data the inquiry and console tests
read. Every figure the tests expect follows from the comments in `world`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest
from receipt_support import checked_by_center
from support import SoftwareSigner

DAY0_MS = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp() * 1000)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass
class Clock:
    now_ms: int

    def __call__(self) -> int:
        return self.now_ms

    def at(self, day: int, hour: int) -> None:
        # One operation per step, each at its own millisecond: the statement order is then unambiguous.
        target = DAY0_MS + day * DAY_MS + hour * HOUR_MS
        assert target > self.now_ms
        self.now_ms = target


@dataclass
class World:
    center: object
    clock: Clock
    ids: dict = field(default_factory=dict)
    signers: dict = field(default_factory=dict)

    def signed(self, who: str, msg_type: str, body: dict) -> dict:
        signer = self.signers[who]
        request = signer.envelope(msg_type, body, aud=self.center.center_id, now_s=self.clock() // 1000)
        response = self.center.submit(request, msg_type)
        return checked_by_center(response, request, self.center)

    def enroll(self, who: str, role: str, name: str) -> str:
        signer = SoftwareSigner()
        self.signers[who] = signer
        request = signer.envelope(
            "enroll",
            signer.enroll_body(role, name=name),
            aud=self.center.center_id,
            now_s=self.clock() // 1000,
        )
        response = self.center.enroll(request)
        result = checked_by_center(response, request, self.center)
        self.ids[who] = result["member_id"]
        return result["member_id"]

    def topup(self, who: str, amount_minor: int, method: str) -> str:
        body = {"amount_minor": amount_minor, "currency": "JPY", "method": method}
        return self.signed(who, "topup", body)["topup_id"]

    def pay(self, who: str, store: str, amount_minor: int, name: str, order: str) -> str:
        body = {
            "payee": self.ids[store],
            "payee_name": name,
            "amount_minor": amount_minor,
            "currency": "JPY",
            "order_ref": order,
        }
        return self.signed(who, "pay", body)["payment_id"]


@pytest.fixture
def world(center) -> World:
    """Day 0..2 (2026-11-20..22 UTC) of a small center; the figures the tests expect are in the comments."""
    clock = Clock(DAY0_MS)
    center.clock_ms = clock
    w = World(center, clock)
    clock.at(0, 1)
    w.enroll("hanako", "member", "Hanako Yamada")
    clock.at(0, 2)
    w.enroll("taro", "member", "Taro Suzuki")
    clock.at(0, 3)
    w.enroll("cotton", "member", "100% Cotton_Club")
    clock.at(0, 4)
    w.enroll("corner", "store", "Corner Shop")
    clock.at(0, 5)
    w.enroll("books", "store", "Book Nook")
    clock.at(0, 6)
    w.ids["topup_h1"] = w.topup("hanako", 10_000, "bank")
    clock.at(0, 7)
    center.decide_topup(w.ids["topup_h1"], "confirm", decided_by="operator:test")  # hanako 10_000
    clock.at(0, 8)
    w.ids["topup_t1"] = w.topup("taro", 5_000, "credit")
    clock.at(0, 9)
    w.ids["pay_h1"] = w.pay("hanako", "corner", 1_200, "Corner Shop", "o-1")  # hanako 8_800
    clock.at(0, 10)
    w.ids["pay_h2"] = w.pay("hanako", "books", 800, "Book Nook", "o-2")  # hanako 8_000
    clock.at(0, 11)
    w.ids["topup_t2"] = w.topup("taro", 700, "postal")
    clock.at(1, 1)
    center.decide_topup(
        w.ids["topup_t1"], "confirm", decided_by="operator:test"
    )  # taro 5_000, confirmed on day 1
    clock.at(1, 2)
    w.ids["pay_t1"] = w.pay("taro", "corner", 2_000, "Corner Shop", "o-3")
    clock.at(1, 3)
    w.ids["pay_h3"] = w.pay("hanako", "corner", 300, "Corner Shop", "o-4")  # hanako 7_700
    clock.at(1, 4)
    center.decide_topup(w.ids["topup_t2"], "decline", decided_by="operator:test")
    clock.at(1, 5)
    w.ids["topup_h2"] = w.topup("hanako", 3_000, "cash")  # stays pending
    clock.at(2, 1)
    w.ids["refund"] = w.signed(
        "corner", "refund", {"payment_id": w.ids["pay_h1"], "amount_minor": 200, "currency": "JPY"}
    )["refund_id"]  # hanako 7_900
    clock.at(2, 2)
    w.ids["payout"] = w.signed("corner", "payout", {"currency": "JPY"})[
        "payout_id"
    ]  # 1200+2000+300-200 = 3300
    clock.at(2, 3)
    return w
