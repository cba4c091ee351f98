"""Who read what in the operator console: a trail of access to members' personal data.

Every console read that answers with data (search, the lists, a statement, statistics, a CSV
export) is recorded before the answer leaves: operator, key, session (the stored hash, never
the cookie), view, the filters and page as asked, and the number of rows returned. If the record
cannot be written the read fails: no answer without its trace. The center never updates or
deletes these rows; `center operator access-log` lists them for auditors. Login, logout and the
static page are not reads of personal data and are not recorded (the request log has them).
"""

from __future__ import annotations

import json
from dataclasses import fields

from sqlalchemy import Connection, insert, select

from center.console.bounds import Page
from center.console.sessions import ConsoleSession
from center.console.views import Filters
from center.storage.db import console_reads

MAX_LISTED = 1_000
DEFAULT_LISTED = 100
_DEFAULTS = Filters()


def filters_document(filters: Filters, page: Page | None) -> dict:
    """The filters that differ from the defaults, the window in ms, and the page when there is one."""
    document = {}
    for field in fields(Filters):
        value = getattr(filters, field.name)
        if field.name == "window":
            bounds = (("from_ms", value.from_ms), ("to_ms", value.to_ms))
            document.update({name: bound for name, bound in bounds if bound is not None})
        elif value != getattr(_DEFAULTS, field.name):
            document[field.name] = value
    if page is not None:
        document.update(limit=page.limit, offset=page.offset)
    return document


def record_read(
    conn: Connection,
    session: ConsoleSession,
    view: str,
    filters: Filters,
    page: Page | None,
    rows: int,
    now_ms: int,
) -> None:
    assert rows >= 0 and now_ms > 0 and view
    conn.execute(
        insert(console_reads).values(
            at_ms=now_ms,
            operator_id=session.operator_id,
            kid=session.kid,
            session_sha256=session.session_id,
            view=view,
            filters=json.dumps(filters_document(filters, page), sort_keys=True, separators=(",", ":")),
            rows=rows,
        )
    )


def list_reads(
    conn: Connection,
    *,
    operator_id: str | None = None,
    from_ms: int | None = None,
    limit: int = DEFAULT_LISTED,
) -> list[dict]:
    """The newest reads first, at most `limit` (1..MAX_LISTED)."""
    assert 1 <= limit <= MAX_LISTED
    query = select(console_reads).order_by(console_reads.c.seq.desc()).limit(limit)
    if operator_id is not None:
        query = query.where(console_reads.c.operator_id == operator_id)
    if from_ms is not None:
        query = query.where(console_reads.c.at_ms >= from_ms)
    return [
        {
            "seq": row.seq,
            "at_ms": row.at_ms,
            "operator_id": row.operator_id,
            "kid": row.kid,
            "session_sha256": row.session_sha256,
            "view": row.view,
            "filters": json.loads(row.filters),
            "rows": row.rows,
        }
        for row in conn.execute(query)
    ]
