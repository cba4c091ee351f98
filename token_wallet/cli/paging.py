"""Pages of the vault's records on the command line: `--limit`, `--since`, and what `--json` says of
a page (`wallet history`, `wallet notices --stored`). A helper module: command modules import it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from hostkit.cli import CliError
from hostkit.shown import quoted
from token_wallet.vault_records import PAGE_LIMIT_MAX, RecordPage

PageLimit = Annotated[
    int,
    typer.Option("--limit", help=f"At most this many entries (one page, 1 to {PAGE_LIMIT_MAX})"),
]


def checked_limit(limit: int) -> int:
    """--limit in range, refused in one line otherwise (Typer's own range check prints a usage box)."""
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise CliError(f"--limit {limit} is out of range: give 1 to {PAGE_LIMIT_MAX} entries per page")
    return limit


def parse_since_ms(text: str | None) -> int | None:
    """--since: a date (2026-12-01, midnight UTC) or a date and time (2026-12-01T14:30, UTC unless
    an offset is given) -> milliseconds since the epoch."""
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"--since {quoted(text)} is not a date: give YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def page_info(page: RecordPage, limit: int, since: str | None) -> dict:
    """What --json says of a page, so a script can ask for the next one."""
    return {
        "first_index": page.first_index,
        "count": len(page.items),
        "total": page.total,
        "limit": limit,
        "since": since,
        "more_after": page.has_more_after,
        "more_before": page.first_index > 0,
    }
