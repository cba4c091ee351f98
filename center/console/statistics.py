"""The console's statistics: payments per day, top stores, funding per method.

Read-only, over a SQLAlchemy Connection, like center.console.inquiry; at most MAX_STAT_DAYS UTC
days (ending today) and MAX_TOP_STORES stores, so no operator click reads without limit.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from center.console.bounds import DAY_MS, day_label, day_number_ms
from center.errors import ApiError
from center.storage.db import parties, payments, topups
from paywire.fields import FUNDING_METHODS

MAX_STAT_DAYS = 366
DEFAULT_STAT_DAYS = 30
MAX_TOP_STORES = 50
DEFAULT_TOP_STORES = 10


def stat_days(days: int, now_ms: int) -> tuple[int, int]:
    """(first day number, last day number) of the last `days` UTC days up to today."""
    if not 1 <= days <= MAX_STAT_DAYS:
        raise ApiError("invalid_request", f"days must be 1..{MAX_STAT_DAYS}")
    assert now_ms > 0
    last = now_ms // DAY_MS
    return last - days + 1, last


def daily_payments(conn: Connection, *, days: int, now_ms: int) -> list[dict]:
    """Per UTC day, oldest first, every day present: payment count and volume (before refunds)."""
    first, last = stat_days(days, now_ms)
    day = (payments.c.created_at_ms // DAY_MS).label("day")
    query = (
        select(day, func.count().label("count"), func.sum(payments.c.amount_minor).label("volume"))
        .where(
            payments.c.created_at_ms >= day_number_ms(first),
            payments.c.created_at_ms < day_number_ms(last + 1),
        )
        .group_by(day)
    )
    found = {int(row.day): (int(row.count), int(row.volume)) for row in conn.execute(query)}
    assert set(found) <= set(range(first, last + 1)), found
    return [
        {
            "day": day_label(number),
            "count": found.get(number, (0, 0))[0],
            "volume_minor": found.get(number, (0, 0))[1],
        }
        for number in range(first, last + 1)
    ]


def top_stores(conn: Connection, *, days: int, now_ms: int, limit: int = DEFAULT_TOP_STORES) -> list[dict]:
    """The stores with the largest payment volume in the last `days` UTC days, largest first."""
    if not 1 <= limit <= MAX_TOP_STORES:
        raise ApiError("invalid_request", f"limit must be 1..{MAX_TOP_STORES}")
    first, last = stat_days(days, now_ms)
    volume = func.sum(payments.c.amount_minor)
    query = (
        select(
            payments.c.store_id,
            parties.c.name,
            func.count().label("count"),
            volume.label("volume"),
            func.sum(payments.c.refunded_minor).label("refunded"),
        )
        .join(parties, parties.c.id == payments.c.store_id)
        .where(
            payments.c.created_at_ms >= day_number_ms(first),
            payments.c.created_at_ms < day_number_ms(last + 1),
        )
        .group_by(payments.c.store_id, parties.c.name)
        .order_by(volume.desc(), payments.c.store_id)
        .limit(limit)
    )
    return [
        {
            "store_id": row.store_id,
            "name": row.name,
            "count": int(row.count),
            "volume_minor": int(row.volume),
            "refunded_minor": int(row.refunded),
        }
        for row in conn.execute(query)
    ]


def funding_by_method(conn: Connection, *, days: int, now_ms: int) -> list[dict]:
    """Confirmed top-ups per funding method, by the day they were confirmed (when value came in)."""
    first, last = stat_days(days, now_ms)
    amount = func.sum(topups.c.amount_minor).label("amount")
    query = (
        select(topups.c.method, func.count().label("count"), amount)
        .where(
            topups.c.status == "confirmed",
            topups.c.decided_at_ms >= day_number_ms(first),
            topups.c.decided_at_ms < day_number_ms(last + 1),
        )
        .group_by(topups.c.method)
    )
    found = {row.method: (int(row.count), int(row.amount)) for row in conn.execute(query)}
    assert set(found) <= set(FUNDING_METHODS), found
    return [
        {
            "method": method,
            "count": found.get(method, (0, 0))[0],
            "amount_minor": found.get(method, (0, 0))[1],
        }
        for method in FUNDING_METHODS
    ]


def statistics(
    conn: Connection, *, days: int = DEFAULT_STAT_DAYS, now_ms: int, top: int = DEFAULT_TOP_STORES
) -> dict:
    first, last = stat_days(days, now_ms)
    return {
        "days": days,
        "from_day": day_label(first),
        "to_day": day_label(last),
        "daily": daily_payments(conn, days=days, now_ms=now_ms),
        "top_stores": top_stores(conn, days=days, now_ms=now_ms, limit=top),
        "funding": funding_by_method(conn, days=days, now_ms=now_ms),
    }
