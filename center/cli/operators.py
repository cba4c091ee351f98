"""`center operator add|list|access-log`: operator and auditor accounts, made by the local administrator,
and the trail of what they read in the console.

Whoever holds the data directory adds the first operator (and any later one);
from then on operators act with signed requests from their own token keys
(`wallet operator ...`, `wallet console-login`). Registered on center.cli.main's
`operator` group.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from center.cli.main import DataDir, JsonFlag, _api_call, _engine, _operator_name, operator_app
from center.console.access import DEFAULT_LISTED, MAX_LISTED, list_reads
from hostkit.cli import CliError, emit, quoted, read_option_file

MAX_PEM_FILE_BYTES = 16 * 1024
OPERATOR_ID = re.compile(r"O-[0-9a-f]{16}")
STORE_ID = re.compile(r"S-[0-9a-f]{16}")


@operator_app.command("add")
def operator_add(
    data_dir: DataDir,
    public_key: Annotated[Path, typer.Option("--public-key", help="The operator's token public key (PEM), "
                                                                   "from `wallet export-public-key`")],
    role: Annotated[str, typer.Option(help="operator (acts on top-ups and keys) or auditor (reads only)")],
    name: Annotated[str, typer.Option(help="Who this is, for the console and the audit trail")] = "operator",
    as_json: JsonFlag = False,
) -> None:
    """Add an operator or auditor: their token key may then sign operator requests and log in to the console."""
    from center.keys.operators import OPERATOR_ROLES, add_operator
    from center.pipeline.service import now_ms

    if role not in OPERATOR_ROLES:
        raise CliError(f"--role must be one of {', '.join(OPERATOR_ROLES)}, not {role!r}")
    pem = read_option_file(public_key, "--public-key", max_bytes=MAX_PEM_FILE_BYTES, what="a public key")
    engine = _engine(data_dir)
    view = _api_call(lambda: add_operator(engine, pem, role=role, name=name,
                                          added_by=f"admin:{_operator_name()}", now_ms=now_ms()))
    emit(as_json, view, lambda out: out.print(
        f"{view['role']} {view['operator_id']} {quoted(view['name'])} added with key {view['kid']} "
        f"({view['algorithm']})"))


@operator_app.command("list")
def operator_list(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """List operators and auditors: key id, role, and whether the key is active."""
    from center.keys.operators import list_operators

    with _engine(data_dir).connect() as conn:
        rows = list_operators(conn)
    document = {"operators": rows}

    def render(out) -> None:
        if not rows:
            out.print("no operators yet: add one with `center operator add --public-key PEM --role operator`")
            return
        table = Table(title="operators and auditors")
        for column in ("operator", "name", "role", "key id", "algorithm", "status"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["operator_id"], row["name"], row["role"], row["kid"], row["algorithm"], row["status"])
        out.print(table)

    emit(as_json, document, render)


@operator_app.command("access-log")
def access_log(
    data_dir: DataDir,
    operator: Annotated[Optional[str], typer.Option(help="Only this operator or auditor (O-...)")] = None,
    from_day: Annotated[Optional[str], typer.Option("--from", help="Only reads on or after this UTC day (YYYY-MM-DD)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LISTED, help="At most this many, newest first")] = DEFAULT_LISTED,
    as_json: JsonFlag = False,
) -> None:
    """Who read what in the operator console: operator, view, filters, rows returned (newest first)."""
    from center.console.inquiry import day_window

    if operator is not None and not OPERATOR_ID.fullmatch(operator):
        raise CliError(f"--operator {operator[:40]!r} is not an operator id: O- and 16 hex digits "
                       "(see `center operator list`)")
    window = _api_call(lambda: day_window(from_day, None))
    with _engine(data_dir).connect() as conn:
        reads = list_reads(conn, operator_id=operator, from_ms=window.from_ms, limit=limit)
    document = {"reads": reads}

    def render(out) -> None:
        if not reads:
            out.print("no console reads recorded" + (" for these filters" if operator or from_day else ""))
            return
        table = Table(title="console reads, newest first")
        for column in ("at (UTC)", "operator", "view", "filters", "rows"):
            table.add_column(column)
        for read in reads:
            at = dt.datetime.fromtimestamp(read["at_ms"] / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            filters = " ".join(f"{name}={value}" for name, value in read["filters"].items())
            table.add_row(at, read["operator_id"], read["view"], filters, str(read["rows"]))
        out.print(table)

    emit(as_json, document, render)


@operator_app.command("list-stores")
def list_stores_command(
    data_dir: DataDir,
    flagged: Annotated[bool, typer.Option("--flagged", help="Only stores whose name is flagged as a look-alike")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many stores, newest first")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Stores and their name flags: a flagged store's name equals or looks like an earlier store's."""
    from center.keys.store_names import list_stores

    with _engine(data_dir).connect() as conn:
        stores = list_stores(conn, flagged_only=flagged, limit=limit)

    def render(out) -> None:
        if not stores:
            out.print("no flagged store names" if flagged else "no stores yet")
            return
        table = Table(title=f"{len(stores)} store(s)" + (" with a flagged name" if flagged else ""))
        for column in ("store", "name", "flag", "resembles", "decided by"):
            table.add_column(column)
        for store in stores:
            resembles = f"{store['resembles']} {quoted(store['resembles_name'])}" if store["resembles"] else ""
            table.add_row(store["store_id"], quoted(store["name"]), store["flag"], resembles, store["decided_by"] or "")
        out.print(table)
        if any(store["flag"] == "flagged" for store in stores):
            out.print("check each flagged store with its owner; then `center operator clear-store S-...` "
                      "(or revoke its key if it impersonates the other)")

    emit(as_json, {"stores": stores}, render)


@operator_app.command("clear-store")
def clear_store_command(
    store_id: Annotated[str, typer.Argument(help="The flagged store (S-...)")],
    data_dir: DataDir, as_json: JsonFlag = False,
) -> None:
    """Lift a store's look-alike flag after checking it: wallets then pay it without the warning."""
    from center.pipeline.service import now_ms
    from center.keys.store_names import clear_store

    if not STORE_ID.fullmatch(store_id):
        raise CliError(f"{quoted(store_id, 40)} is not a store id: S- and 16 hex digits (see `list-stores --flagged`)")
    view = _api_call(lambda: clear_store(_engine(data_dir), store_id, decided_by=f"operator:{_operator_name()}",
                                         now_ms=now_ms()))
    emit(as_json, view, lambda out: out.print(
        f"store {store_id}'s name {'was already' if view['repeated'] else 'is now'} cleared "
        f"(it resembled {view['resembles']})"))
