"""The console's table views: which inquiry fills each, its columns, and its CSV form.

One table per view name, used by both the JSON API and the CSV export, so an
export always has the rows and filters of the table the operator looked at.
Pure apart from the inquiry call; no HTTP here.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from center.console import inquiry, statistics
from center.console.bounds import MAX_EXPORT_ROWS, Page, Window
from center.errors import ApiError


@dataclass(frozen=True)
class Filters:
    """Every filter any view takes; each view reads the ones it knows."""

    q: str = ""
    role: str | None = None
    party_id: str | None = None
    store_id: str | None = None
    buyer_id: str | None = None
    member_id: str | None = None
    status: str | None = None
    window: Window = field(default_factory=Window)
    days: int = statistics.DEFAULT_STAT_DAYS
    top: int = statistics.DEFAULT_TOP_STORES


Fetch = Callable[[Connection, Filters, Page, int], dict]


@dataclass(frozen=True)
class View:
    columns: tuple[str, ...]
    fetch: Fetch  # (conn, filters, page, now_ms) -> {"rows": [...], "has_more": bool, ...}


def _statement(conn: Connection, f: Filters, page: Page, _now_ms: int) -> dict:
    if f.party_id is None:
        raise ApiError("invalid_request", "a statement needs party_id (a member or store id)")
    return inquiry.statement(conn, f.party_id, window=f.window, page=page)


def _stat_rows(rows: list[dict]) -> dict:
    return {"rows": rows, "has_more": False}


VIEWS: dict[str, View] = {
    "search": View(
        ("party_id", "role", "name", "status", "created_at_ms", "balance_minor", "kids"),
        lambda conn, f, page, _now_ms: inquiry.search_parties(conn, f.q, role=f.role, page=page),
    ),
    "statement": View(
        (
            "created_at_ms",
            "transfer_id",
            "kind",
            "ref",
            "counterparty",
            "counterparty_name",
            "order_ref",
            "debit_minor",
            "credit_minor",
            "balance_minor",
        ),
        _statement,
    ),
    "payments": View(
        (
            "created_at_ms",
            "payment_id",
            "buyer_id",
            "buyer_name",
            "store_id",
            "store_name",
            "amount_minor",
            "refunded_minor",
            "order_ref",
        ),
        lambda conn, f, page, _now_ms: inquiry.list_payments(
            conn, store_id=f.store_id, buyer_id=f.buyer_id, window=f.window, page=page
        ),
    ),
    "topups": View(
        (
            "created_at_ms",
            "topup_id",
            "member_id",
            "member_name",
            "amount_minor",
            "method",
            "status",
            "decided_at_ms",
            "decided_by",
            "decided_by_name",
        ),
        lambda conn, f, page, _now_ms: inquiry.list_topups(
            conn, status=f.status, member_id=f.member_id, window=f.window, page=page
        ),
    ),
    "refunds": View(
        (
            "created_at_ms",
            "refund_id",
            "payment_id",
            "store_id",
            "store_name",
            "buyer_id",
            "buyer_name",
            "amount_minor",
            "paid_minor",
        ),
        lambda conn, f, page, _now_ms: inquiry.list_refunds(
            conn, store_id=f.store_id, buyer_id=f.buyer_id, window=f.window, page=page
        ),
    ),
    "payouts": View(
        (
            "created_at_ms",
            "payout_id",
            "store_id",
            "store_name",
            "amount_minor",
            "bank_account",
            "status",
            "batch_id",
            "exported_at_ms",
            "settled_at_ms",
        ),
        lambda conn, f, page, _now_ms: inquiry.list_payouts(
            conn, store_id=f.store_id, status=f.status, window=f.window, page=page
        ),
    ),
    "stats-daily": View(
        ("day", "count", "volume_minor"),
        lambda conn, f, _page, now_ms: _stat_rows(
            statistics.daily_payments(conn, days=f.days, now_ms=now_ms)
        ),
    ),
    "stats-top-stores": View(
        ("store_id", "name", "count", "volume_minor", "refunded_minor"),
        lambda conn, f, _page, now_ms: _stat_rows(
            statistics.top_stores(conn, days=f.days, now_ms=now_ms, limit=f.top)
        ),
    ),
    "stats-funding": View(
        ("method", "count", "amount_minor"),
        lambda conn, f, _page, now_ms: _stat_rows(
            statistics.funding_by_method(conn, days=f.days, now_ms=now_ms)
        ),
    ),
}

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection):
# such cells get a leading apostrophe, which spreadsheets show as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_header(column: str) -> str:
    # Times are written as ISO 8601 UTC, so the column loses its _ms unit.
    return column.removesuffix("_ms") if column.endswith("_at_ms") else column


def csv_cell(column: str, value) -> str:
    if value is None:
        return ""
    if column.endswith("_at_ms"):
        assert isinstance(value, int) and value >= 0, (column, value)
        moment = dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        value = " ".join(str(item) for item in value)
    assert isinstance(value, str), (column, type(value))
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def to_csv(columns: tuple[str, ...], rows: list[dict]) -> str:
    assert len(rows) <= MAX_EXPORT_ROWS
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow([csv_header(column) for column in columns])
    for row in rows:
        writer.writerow([csv_cell(column, row[column]) for column in columns])
    return out.getvalue()
