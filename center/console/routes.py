"""The operator console under /console: the page, its static files, its JSON and CSV APIs.

Login is center.console.auth's, sessions center.console.sessions': every API here
depends on `console_session()`. A session only reads: nothing here changes money or
keys. A top-up is confirmed or declined by a request signed on the operator's token
(`wallet operator confirm-topup ID`, which fetches and shows the top-up first);
the page shows that command for each pending top-up and then, polling the
decisions route, the result. The old session routes for deciding answer
403 signed_action_required whatever the cookie and CSRF header say. The page is
plain HTML, CSS and JavaScript served from center/console/static/ (nothing from
elsewhere), under a Content-Security-Policy that allows scripts, styles and
connections to this origin only.

These routes are not in the OpenAPI document: they are the page's own API,
authenticated by a browser cookie, not the signed API wallets use.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import Response
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import OperationalError

from center.console.access import record_read
from center.console.bounds import EXPORT_PAGE, MAX_OFFSET, MAX_PAGE_ROWS, MAX_QUERY_CHARS, Page, day_window
from center.console.sessions import ConsoleSession, console_session
from center.console.statistics import (
    DEFAULT_STAT_DAYS,
    DEFAULT_TOP_STORES,
    MAX_STAT_DAYS,
    MAX_TOP_STORES,
    statistics,
)
from center.console.views import VIEWS, Filters, to_csv
from center.errors import ApiError
from center.storage.db import topups

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Served by name from this list only: no path from the request ever reaches the file system.
STATIC_FILES = {
    "console.js": "text/javascript",
    "charts.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
PAGE_FILE = "index.html"
TOPUP_ID = re.compile(r"U-[0-9a-f]{16}")
TOPUP_ID_LIST_CHARS = len("U-") + 16 + len(",")  # per id in the decisions route's comma-separated list
# Query bounds: longer values are refused before any lookup (ids are 18 characters today).
MAX_PARTY_ID_CHARS = 32
MAX_CHOICE_CHARS = 16  # a role or status name
DAY_CHARS = len("YYYY-MM-DD")
MAX_SHOWN_CHARS = 64  # of a bad file name quoted back in an error
MAX_SHOWN_VIEW_CHARS = 32
TABLE_VIEWS = ("search", "payments", "topups", "refunds", "payouts")
MAX_DECISION_IDS = 50  # one page of the top-ups table (console.js PAGE_ROWS)

CONSOLE_PREFIX = "/console"
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"strict-transport-security", b"max-age=31536000"),
    # Answers name members and amounts: no browser or proxy may keep them.
    (b"cache-control", b"no-store"),
)

AnySession = Annotated[ConsoleSession, Depends(console_session())]
DecisionIds = Annotated[str, Query(max_length=MAX_DECISION_IDS * TOPUP_ID_LIST_CHARS)]
PartyId = Annotated[str | None, Query(max_length=MAX_PARTY_ID_CHARS)]


def install_console_headers(app: FastAPI) -> None:
    """The console's security headers (a middleware: added before the outermost observability one)."""
    app.add_middleware(ConsoleHeadersMiddleware)


def install_console(app: FastAPI, center) -> None:
    """The console's routes. Added after the API routes: FastAPI matches routes in order and an
    included router costs more to match, so the payment path must not be tried against it first."""
    app.include_router(_router(center))


def filters(
    q: Annotated[str, Query(max_length=MAX_QUERY_CHARS)] = "",
    role: Annotated[str | None, Query(max_length=MAX_CHOICE_CHARS)] = None,
    # not the path's party_id
    party: Annotated[str | None, Query(alias="party_id", max_length=MAX_PARTY_ID_CHARS)] = None,
    store_id: PartyId = None,
    buyer_id: PartyId = None,
    member_id: PartyId = None,
    status: Annotated[str | None, Query(max_length=MAX_CHOICE_CHARS)] = None,
    from_day: Annotated[str | None, Query(alias="from", max_length=DAY_CHARS)] = None,
    to_day: Annotated[str | None, Query(alias="to", max_length=DAY_CHARS)] = None,
    days: Annotated[int, Query(ge=1, le=MAX_STAT_DAYS)] = DEFAULT_STAT_DAYS,
    top: Annotated[int, Query(ge=1, le=MAX_TOP_STORES)] = DEFAULT_TOP_STORES,
) -> Filters:
    # Empty form fields arrive as "": they mean "no filter".
    return Filters(
        q=q,
        role=role or None,
        party_id=party or None,
        store_id=store_id or None,
        buyer_id=buyer_id or None,
        member_id=member_id or None,
        status=status or None,
        window=day_window(from_day or None, to_day or None),
        days=days,
        top=top,
    )


def page(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ROWS)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page:
    return Page.of(limit, offset)


ViewFilters = Annotated[Filters, Depends(filters)]
ViewPage = Annotated[Page, Depends(page)]


def _router(center) -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)

    def read(
        session: ConsoleSession, view: str, chosen: Filters, chosen_page: Page, *, trail_as: str = ""
    ) -> dict:
        with _snapshot(center) as conn:
            result = VIEWS[view].fetch(conn, chosen, chosen_page, center.clock_ms())
        _trail(center, session, trail_as or view, chosen, chosen_page, len(result["rows"]))
        return result

    @router.get("")
    def console_page() -> Response:
        return Response((STATIC_DIR / PAGE_FILE).read_bytes(), media_type="text/html; charset=utf-8")

    @router.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise ApiError("not_found", f"no console file {name[:MAX_SHOWN_CHARS]!r}", 404)
        return Response((STATIC_DIR / name).read_bytes(), media_type=STATIC_FILES[name] + "; charset=utf-8")

    for view in TABLE_VIEWS:
        _add_table_route(router, read, view)

    @router.get("/api/members/{party_id}/statement")
    def member_statement(
        party_id: str, session: AnySession, chosen: ViewFilters, chosen_page: ViewPage
    ) -> dict:
        if len(party_id) > MAX_PARTY_ID_CHARS:
            raise ApiError("invalid_request", f"party id is at most {MAX_PARTY_ID_CHARS} characters")
        return read(session, "statement", Filters(party_id=party_id, window=chosen.window), chosen_page)

    @router.get("/api/stats")
    def stats(session: AnySession, chosen: ViewFilters) -> dict:
        with _snapshot(center) as conn:
            result = statistics(conn, days=chosen.days, now_ms=center.clock_ms(), top=chosen.top)
        shown = Filters(days=chosen.days, top=chosen.top)  # the only filters statistics take
        _trail(center, session, "stats", shown, None, len(result["daily"]) + len(result["top_stores"]))
        return result

    @router.get("/api/topups/decisions")
    def decisions(session: AnySession, ids: DecisionIds) -> dict:
        return {"decisions": _decisions(center, ids)}

    # A phished or stolen session must not move money: these refuse before looking at the session.
    @router.post("/api/topups/{topup_id}/confirm")
    def confirm(topup_id: str) -> dict:
        raise _signed_action_required(topup_id, "confirm")

    @router.post("/api/topups/{topup_id}/decline")
    def decline(topup_id: str) -> dict:
        raise _signed_action_required(topup_id, "decline")

    @router.get("/api/export/{view}.csv")
    def export(view: str, session: AnySession, chosen: ViewFilters) -> Response:
        if view not in VIEWS:
            shown = view[:MAX_SHOWN_VIEW_CHARS]
            raise ApiError("not_found", f"no console view {shown!r}; one of {', '.join(VIEWS)}", 404)
        result = read(session, view, chosen, EXPORT_PAGE, trail_as=f"export:{view}")
        moment = dt.datetime.fromtimestamp(center.clock_ms() / 1000, tz=dt.UTC)
        stamp = moment.strftime("%Y%m%dT%H%M%SZ")
        headers = {
            "content-disposition": f'attachment; filename="tokenpay-{view}-{stamp}.csv"',
            "x-tokenpay-export-truncated": "true" if result["has_more"] else "false",
        }
        return Response(
            to_csv(VIEWS[view].columns, result["rows"]), media_type="text/csv; charset=utf-8", headers=headers
        )

    return router


def _snapshot(center) -> Connection:
    """A connection whose queries all see one snapshot: a statement's opening balance and its rows agree.

    PostgreSQL needs REPEATABLE READ for that (its default reads each statement afresh); SQLite's
    transactions here are BEGIN IMMEDIATE (center.db), one writer at a time, so they already do.
    Read from the standby when one is configured (config read_db_url: reads off the primary), from the
    primary when none is or it does not answer; the access record is written on the primary (_trail).
    """
    engine = center.engine
    if center.read_engine is not None:
        try:
            return _repeatable(center.read_engine.connect(), center.read_engine)
        except OperationalError:
            pass  # the standby is down or failing over: the primary answers, a little more loaded
    return _repeatable(engine.connect(), engine)


def _repeatable(conn: Connection, engine: Engine) -> Connection:
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def _trail(
    center, session: ConsoleSession, view: str, chosen: Filters, chosen_page: Page | None, rows: int
) -> None:
    """Record the read before its answer leaves (center.console.access); a failure here fails the read."""
    with center.engine.begin() as conn:
        record_read(conn, session, view, chosen, chosen_page, rows, center.clock_ms())


def _add_table_route(router: APIRouter, read, view: str) -> None:
    def table(session: AnySession, chosen: ViewFilters, chosen_page: ViewPage) -> dict:
        return read(session, view, chosen, chosen_page)

    router.get(f"/api/{view}", name=f"console_{view}")(table)


def _signed_action_required(topup_id: str, decision: str) -> ApiError:
    shown = topup_id if TOPUP_ID.fullmatch(topup_id) else "TOPUP_ID"
    return ApiError(
        "signed_action_required",
        f"a console session cannot {decision} top-ups: run "
        f"`wallet operator {decision}-topup {shown}` with your operator token",
        403,
    )


def _decisions(center, ids: str) -> list[dict]:
    """The status of the top-ups the page shows commands for. Not recorded as a read: it answers
    only ids the page already listed, with their status and who decided, no member's data."""
    wanted = [item for item in ids.split(",") if item]
    if not 1 <= len(wanted) <= MAX_DECISION_IDS or not all(TOPUP_ID.fullmatch(item) for item in wanted):
        raise ApiError(
            "invalid_request",
            f"ids: 1 to {MAX_DECISION_IDS} top-up ids (U- and 16 hex digits), separated by commas",
        )
    with center.engine.connect() as conn:
        rows = conn.execute(
            select(topups.c.id, topups.c.status, topups.c.decided_at_ms, topups.c.decided_by).where(
                topups.c.id.in_(wanted)
            )
        ).all()
    return [
        {
            "topup_id": row.id,
            "status": row.status,
            "decided_at_ms": row.decided_at_ms,
            "decided_by": row.decided_by,
        }
        for row in sorted(rows, key=lambda row: wanted.index(row.id))
    ]


class ConsoleHeadersMiddleware:
    """Security headers on every /console answer (pure ASGI: other paths pay one prefix check)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != CONSOLE_PREFIX and not path.startswith(CONSOLE_PREFIX + "/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _value in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = message | {"headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
