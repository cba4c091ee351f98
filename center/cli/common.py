"""What every `center` command group shares: the option types, the data directory's configuration and
database (refused in one line when its schema does not match this code), and an ApiError as one line.

Commands import the center's own modules inside their bodies, here and in every group module: the
database layers pull in SQLAlchemy and Alembic, the console and API layers FastAPI (together 0.3 to
0.9 s), and `center --help`, `center backup` or `center issuer certify` need none of them. These lazy
imports only go downwards (center.cli is the top layer), so they add no cycle.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from center.storage.config import CenterConfig
from hostkit.cli import CliError

if TYPE_CHECKING:
    from sqlalchemy import Engine

T = TypeVar("T")

DataDir = Annotated[Path, typer.Option("--data-dir", help="The center's data directory")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout")]

MAX_OPERATOR_NAME_CHARS = 48  # the login name recorded in `decided_by` (audit trail, key decisions)


def load_config(data_dir: Path) -> CenterConfig:
    try:
        return CenterConfig.load(data_dir)
    except FileNotFoundError as error:
        raise CliError(str(error)) from None


def open_engine(data_dir: Path) -> Engine:
    """The data directory's database, after checking its schema is the one this code needs."""
    return checked_engine(load_config(data_dir), data_dir)


def checked_engine(config: CenterConfig, data_dir: Path) -> Engine:
    from center.storage.db import make_engine

    engine = make_engine(config.db_url)
    check_schema(engine, data_dir)
    return engine


def check_schema(engine: Engine, data_dir: Path) -> None:
    """Refuse, in one line, a database whose schema this code does not match (before serving or acting on
    it)."""
    from sqlalchemy.exc import OperationalError

    from center.storage.db import schema_status

    try:
        status = schema_status(engine)
    except OperationalError as error:  # the message names host and port, never the password
        reason = str(error.orig).strip().splitlines()[0] if error.orig else error.__class__.__name__
        where = redact_url(str(engine.url.render_as_string(hide_password=True)))
        raise CliError(f"cannot reach the database {where}: {reason}") from None
    if status.state == "behind":
        raise CliError(
            f"the database schema is at revision {status.current} and this center needs "
            f"{status.head}; back it up (center backup) and run: "
            f"center migrate --data-dir {data_dir}"
        )
    if status.state == "ahead":
        raise schema_ahead(status.current, status.head)
    if status.state == "empty":
        raise CliError(f"the database of {data_dir} holds no center schema; check db_url in its config.json")


def schema_ahead(current: str | None, head: str | None) -> CliError:
    return CliError(
        f"the database schema is at revision {current}, newer than this center knows "
        f"({head}); run the center version that wrote it"
    )


def api_call(action: Callable[[], T]) -> T:
    """Run `action`; a refusal of the center's (ApiError) becomes one CLI line with its code."""
    from center.errors import ApiError

    try:
        return action()
    except ApiError as error:
        raise CliError(f"{error.message} ({error.code})") from None


def operator_name() -> str:
    """Who runs this command on the center's host, for the audit trail."""
    try:
        return getpass.getuser()[:MAX_OPERATOR_NAME_CHARS]
    except (KeyError, OSError):
        return "local"


def redact_url(url: str) -> str:
    """A database URL to print: never its password (nor its user name)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
