"""What one console inquiry may ask for: a page, a time window of UTC days, a party id, a choice.

Each is checked (ApiError invalid_request) and bounded here, so no operator click makes the
center read without limit: a page is at most MAX_PAGE_ROWS rows from at most MAX_OFFSET.
center.console.inquiry runs the inquiries; center.console.statistics counts by day.
Times are epoch milliseconds; days are UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import Connection, Select
from sqlalchemy.sql import ColumnElement

from center.errors import ApiError

MAX_PAGE_ROWS = 200
DEFAULT_PAGE_ROWS = 50
# Deep offsets cost the database a scan; past this, narrow the filters instead.
MAX_OFFSET = 10_000
# CSV export of one view: one query, at most this many rows (the answer says when there were more).
MAX_EXPORT_ROWS = 10_000
MAX_QUERY_CHARS = 100  # a search text
DAY_MS = 86_400_000

_PARTY_ID = {
    "member": re.compile(r"M-[0-9a-f]{16}"),
    "store": re.compile(r"S-[0-9a-f]{16}"),
    None: re.compile(r"[MS]-[0-9a-f]{16}"),
}
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only (`\d` would take any script's)


@dataclass(frozen=True)
class Page:
    limit: int = DEFAULT_PAGE_ROWS
    offset: int = 0

    def __post_init__(self) -> None:
        # The export page is the one larger page; callers from outside go through Page.of.
        assert 1 <= self.limit <= MAX_EXPORT_ROWS and 0 <= self.offset <= MAX_OFFSET, self

    @classmethod
    def of(cls, limit: int, offset: int) -> Page:
        if not 1 <= limit <= MAX_PAGE_ROWS:
            raise ApiError("invalid_request", f"limit must be 1..{MAX_PAGE_ROWS}")
        if not 0 <= offset <= MAX_OFFSET:
            raise ApiError(
                "invalid_request", f"offset must be 0..{MAX_OFFSET}; narrow the filters to see further"
            )
        return cls(limit, offset)


FIRST_PAGE = Page()
EXPORT_PAGE = Page(MAX_EXPORT_ROWS, 0)


@dataclass(frozen=True)
class Window:
    """A time range [from_ms, to_ms); None leaves that side open."""

    from_ms: int | None = None
    to_ms: int | None = None

    def __post_init__(self) -> None:
        assert self.from_ms is None or self.to_ms is None or self.from_ms <= self.to_ms, self

    def where(self, column: ColumnElement) -> list[ColumnElement]:
        conditions = []
        if self.from_ms is not None:
            conditions.append(column >= self.from_ms)
        if self.to_ms is not None:
            conditions.append(column < self.to_ms)
        return conditions


ALL_TIME = Window()


def day_window(from_day: str | None, to_day: str | None) -> Window:
    """'YYYY-MM-DD' UTC days, both inclusive, as a Window; None leaves that side open."""
    start = _day_start_ms(from_day, "from") if from_day else None
    end = _day_start_ms(to_day, "to") + DAY_MS if to_day else None
    if start is not None and end is not None and start >= end:
        raise ApiError("invalid_request", f"the day range is empty: from {from_day} is after to {to_day}")
    return Window(start, end)


def _day_start_ms(day: str, name: str) -> int:
    try:
        if not _DAY.fullmatch(day):
            raise ValueError(day)
        date = dt.date.fromisoformat(day)
    except ValueError:
        raise ApiError(
            "invalid_request", f"{name} must be a day as YYYY-MM-DD (UTC), not {day[:20]!r}"
        ) from None
    return day_number_ms(date.toordinal() - dt.date(1970, 1, 1).toordinal())


def day_number_ms(day_number: int) -> int:
    return day_number * DAY_MS


def day_label(day_number: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day_number)).isoformat()


def check_party_id(party_id: str | None, role: str | None, name: str) -> str | None:
    if party_id is None:
        return None
    if not _PARTY_ID[role].fullmatch(party_id):
        expected = {"member": "M-", "store": "S-", None: "M- or S-"}[role]
        raise ApiError(
            "invalid_request", f"{name} must be a {role or 'party'} id ({expected} and 16 hex digits)"
        )
    return party_id


def check_choice(value: str | None, choices: tuple[str, ...], name: str) -> str | None:
    if value is not None and value not in choices:
        raise ApiError("invalid_request", f"{name} must be one of {', '.join(choices)}")
    return value


def page_rows(conn: Connection, query: Select, page: Page, shape) -> dict:
    # One row more than asked says whether there is a next page without counting the table.
    found = conn.execute(query.limit(page.limit + 1).offset(page.offset)).all()
    return {
        "rows": [shape(row) for row in found[: page.limit]],
        "limit": page.limit,
        "offset": page.offset,
        "has_more": len(found) > page.limit,
    }


def check_search_text(text: str) -> str:
    """The search text, stripped; at most MAX_QUERY_CHARS printable characters."""
    text = text.strip()
    if len(text) > MAX_QUERY_CHARS:
        raise ApiError("invalid_request", f"search text is limited to {MAX_QUERY_CHARS} characters")
    if not text.isprintable():  # no name holds control characters, and PostgreSQL refuses NUL outright
        raise ApiError("invalid_request", "search text must be printable characters")
    return text


def like_escape(text: str) -> str:
    """text for a LIKE pattern with escape="\\": its own %, _ and \\ match only themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
