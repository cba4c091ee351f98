"""`center operator add|list|access-log`: operator and auditor accounts, made by the local administrator,
and the trail of what they read in the console.

Whoever holds the data directory adds the first operator (and any later one);
from then on operators act with signed requests from their own token keys
(`wallet operator ...`, `wallet console-login`). `list-stores` and `clear-store` show and lift the
look-alike flag on store names. Assembled into the `operator` group by center.cli.main. The center's
modules are imported inside the commands (center.cli.common says why).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from center.cli.common import DataDir, JsonFlag, api_call, open_engine, operator_name
from hostkit.cli import CliError, emit, read_option_file
from hostkit.shown import quoted

app = typer.Typer()

MAX_PEM_FILE_BYTES = 16 * 1024
# Copies of center.console.access.MAX_LISTED / DEFAULT_LISTED and center.keys.store_names.MAX_LISTED, so
# that `center --help` need not import the console and database layers (FastAPI, SQLAlchemy: ~0.7 s);
# tests/test_architecture.py checks each copy against its original.
MAX_LISTED_READS = 1_000
DEFAULT_LISTED_READS = 100
MAX_LISTED_STORES = 1000
DEFAULT_LISTED_STORES = 100
MAX_SHOWN_ID_CHARS = 40  # of a malformed id, echoed in the refusal
OPERATOR_ID = re.compile(r"[AO]-[0-9a-f]{16}")  # A- since 2026-12; O- made before
STORE_ID = re.compile(r"S-[0-9a-f]{16}")


@app.command(
    "add",
    help=(
        "Add an operator or auditor: their token key may then sign operator requests "
        "and log in to the console."
    ),
)
def operator_add(
    data_dir: DataDir,
    public_key: Annotated[
        Path,
        typer.Option(
            "--public-key", help="The operator's token public key (PEM), from `wallet export-public-key`"
        ),
    ],
    role: Annotated[str, typer.Option(help="operator (acts on top-ups and keys) or auditor (reads only)")],
    name: Annotated[str, typer.Option(help="Who this is, for the console and the audit trail")] = "operator",
    as_json: JsonFlag = False,
) -> None:
    from center.keys.operators import OPERATOR_ROLES, add_operator
    from center.pipeline.types import now_ms

    if role not in OPERATOR_ROLES:
        raise CliError(f"--role must be one of {', '.join(OPERATOR_ROLES)}, not {role!r}")
    pem = read_option_file(public_key, "--public-key", max_bytes=MAX_PEM_FILE_BYTES, what="a public key")
    engine = open_engine(data_dir)
    view = api_call(
        lambda: add_operator(
            engine, pem, role=role, name=name, added_by=f"admin:{operator_name()}", now_ms=now_ms()
        )
    )
    emit(
        as_json,
        view,
        lambda out: out.print(
            f"{view['role']} {view['operator_id']} {quoted(view['name'])} added with key {view['kid']} "
            f"({view['algorithm']})"
        ),
    )


@app.command("list")
def operator_list(data_dir: DataDir, as_json: JsonFlag = False) -> None:
    """List operators and auditors: key id, role, and whether the key is active."""
    from center.keys.operators import list_operators

    with open_engine(data_dir).connect() as conn:
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
            table.add_row(
                row["operator_id"], row["name"], row["role"], row["kid"], row["algorithm"], row["status"]
            )
        out.print(table)

    emit(as_json, document, render)


@app.command("access-log")
def access_log(
    data_dir: DataDir,
    operator: Annotated[str | None, typer.Option(help="Only this operator or auditor (A-...)")] = None,
    from_day: Annotated[
        str | None, typer.Option("--from", help="Only reads on or after this UTC day (YYYY-MM-DD)")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_LISTED_READS, help="At most this many, newest first")
    ] = DEFAULT_LISTED_READS,
    as_json: JsonFlag = False,
) -> None:
    """Who read what in the operator console: operator, view, filters, rows returned (newest first)."""
    from center.console.access import list_reads
    from center.console.bounds import day_window

    if operator is not None and not OPERATOR_ID.fullmatch(operator):
        raise CliError(
            f"--operator {operator[:MAX_SHOWN_ID_CHARS]!r} is not an operator id: "
            "A- (or O- for older accounts) and 16 hex digits (see `center operator list`)"
        )
    window = api_call(lambda: day_window(from_day, None))
    with open_engine(data_dir).connect() as conn:
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
            at = dt.datetime.fromtimestamp(read["at_ms"] / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            filters = " ".join(f"{name}={value}" for name, value in read["filters"].items())
            table.add_row(at, read["operator_id"], read["view"], filters, str(read["rows"]))
        out.print(table)

    emit(as_json, document, render)


@app.command("list-stores")
def list_stores_command(
    data_dir: DataDir,
    flagged: Annotated[
        bool, typer.Option("--flagged", help="Only stores whose name is flagged as a look-alike")
    ] = False,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_LISTED_STORES, help="At most this many stores, newest first")
    ] = DEFAULT_LISTED_STORES,
    as_json: JsonFlag = False,
) -> None:
    """Stores and their name flags: a flagged store's name equals or looks like an earlier store's."""
    from center.keys.store_names import list_stores

    with open_engine(data_dir).connect() as conn:
        stores = list_stores(conn, flagged_only=flagged, limit=limit)

    def render(out) -> None:
        if not stores:
            out.print("no flagged store names" if flagged else "no stores yet")
            return
        table = Table(title=f"{len(stores)} store(s)" + (" with a flagged name" if flagged else ""))
        for column in ("store", "name", "flag", "resembles", "decided by"):
            table.add_column(column)
        for store in stores:
            resembles = ""
            if store["resembles"]:
                resembles = f"{store['resembles']} {quoted(store['resembles_name'])}"
            table.add_row(
                store["store_id"], quoted(store["name"]), store["flag"], resembles, store["decided_by"] or ""
            )
        out.print(table)
        if any(store["flag"] == "flagged" for store in stores):
            out.print(
                "check each flagged store with its owner; then `center operator clear-store S-...` "
                "(or revoke its key if it impersonates the other)"
            )

    emit(as_json, {"stores": stores}, render)


@app.command("clear-store")
def clear_store_command(
    store_id: Annotated[str, typer.Argument(help="The flagged store (S-...)")],
    data_dir: DataDir,
    as_json: JsonFlag = False,
) -> None:
    """Lift a store's look-alike flag after checking it: wallets then pay it without the warning."""
    from center.keys.store_names import clear_store
    from center.pipeline.types import now_ms

    if not STORE_ID.fullmatch(store_id):
        raise CliError(
            f"{quoted(store_id, MAX_SHOWN_ID_CHARS)} is not a store id: S- and 16 hex digits "
            "(see `list-stores --flagged`)"
        )
    view = api_call(
        lambda: clear_store(
            open_engine(data_dir), store_id, decided_by=f"operator:{operator_name()}", now_ms=now_ms()
        )
    )
    emit(
        as_json,
        view,
        lambda out: out.print(
            f"store {store_id}'s name {'was already' if view['repeated'] else 'is now'} cleared "
            f"(it resembled {view['resembles']})"
        ),
    )
