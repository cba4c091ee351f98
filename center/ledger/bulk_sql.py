"""Set-based writes for a commit group: one statement per table, whatever the group's size.

The one place that branches on the database. On PostgreSQL a group's rows go in as one
`INSERT ... SELECT * FROM unnest(array, array, ...)` (one array per column) and its new values as
one `UPDATE ... FROM unnest(keys, values)`: the server parses, plans and runs one statement. An
executemany would not do that: SQLAlchemy hands it to psycopg 3, which pipelines one prepared
statement per row (measured here, 100-payment groups: 19 us of client time per row plus the
server's per-statement cost, five tables per group). SQLite keeps executemany: the database is in
the process and a statement costs a few microseconds.

GroupWrites goes one step further for writes that need nothing from each other: on PostgreSQL they
are one statement of data-modifying CTEs, so a group's counters, balances, transfers and payments
cost one round trip instead of four (under load a round trip costs milliseconds: the backend and
this process wait for a core, and this thread for the GIL).

Two helpers serve a unique (partial) index the same way on both databases: rows_in_index looks a
group's keys up in one statement (duplicate orders, center.pipeline.batch), insert_unless_taken
inserts a row unless its index key is held (ON CONFLICT DO NOTHING; the single payment path).

Callers pass rows with the same keys (a table's columns, any subset); what they write is theirs.
"""

from __future__ import annotations

import re

from sqlalchemy import (
    Connection,
    Executable,
    Index,
    Table,
    and_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal_column,
    select,
    update,
    values,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY

# One group is at most a batch (center.pipeline.batch.MAX_BATCH_ITEMS = 100) plus its tree nodes;
# a generous bound keeps an unbounded list from becoming one statement.
MAX_BULK_ROWS = 100_000

# Built once per (table, columns): building a Core statement costs more than running it
# (center/ledger/book.py). PostgreSQL's are kept as driver SQL whose parameters psycopg sends in
# binary: its text form of an array of strings escapes every element with a regular expression in
# Python (measured: 100 transfers 3.0 ms per transaction in text, 2.3 ms in binary, 3.7 ms as an
# executemany, 0.4 ms for an empty transaction).
_statements: dict[tuple, Executable | str] = {}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _driver_sql(conn: Connection, statement: Executable) -> str:
    """`statement` as psycopg SQL with binary parameters (`%(name)b`)."""
    sql = str(statement.compile(dialect=conn.dialect))
    assert "%%" not in sql, "no literal percent signs in bulk statements"
    return _PLACEHOLDER.sub(r"%(\1)b", sql)


def _postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _unnest(table: Table, columns: dict[str, str]):
    """unnest(CAST(:name AS type[]), ...) AS v(name, ...): `columns` maps each parameter (and output
    column) name to the table column whose type its array has."""
    arrays = [cast(bindparam(name), ARRAY(table.c[column].type)) for name, column in columns.items()]
    return func.unnest(*arrays).table_valued(*columns).render_derived(name="v")


def insert_rows(conn: Connection, table: Table, rows: list[dict]) -> None:
    """Insert `rows` (dicts with the same keys) in one statement on PostgreSQL, in their order."""
    if not rows:
        return
    assert len(rows) <= MAX_BULK_ROWS
    if not _postgres(conn):
        conn.execute(table.insert(), rows)
        return
    names = tuple(rows[0])
    key = ("insert", table.name, names)
    statement = _statements.get(key)
    if statement is None:
        values = _unnest(table, {name: name for name in names})
        statement = _driver_sql(
            conn, insert(table).from_select(names, select(*(values.c[name] for name in names)))
        )
        _statements[key] = statement
    conn.exec_driver_sql(statement, {name: [row[name] for row in rows] for name in names})


def insert_unless_taken(conn: Connection, table: Table, index: Index, row: dict) -> bool:
    """Insert `row` unless a row of `table` holds its values in the unique (partial) `index`; whether
    it was inserted. The insert is the lookup (ON CONFLICT DO NOTHING, PostgreSQL and SQLite alike):
    on PostgreSQL it waits for a concurrent transaction holding those values and skips the row if
    that one commits. Any other unique violation still raises IntegrityError."""
    key = ("insert-unless", conn.dialect.name, table.name, index.name, tuple(row))
    statement = _statements.get(key)
    if statement is None:
        dialect_insert = postgresql.insert if _postgres(conn) else sqlite.insert
        where = index.dialect_options[conn.dialect.name]["where"]
        # RETURNING says whether the row went in on both (a rowcount is not promised for an insert).
        statement = (
            dialect_insert(table)
            .on_conflict_do_nothing(index_elements=list(index.columns), index_where=where)
            .returning(literal_column("1"))
        )
        _statements[key] = statement
    return conn.execute(statement, row).first() is not None


def rows_in_index(conn: Connection, index: Index, keys: list[tuple], columns: tuple[str, ...]) -> list:
    """`columns` of each row that the unique (partial) `index` holds under one of `keys` (tuples of
    the index's column values), in one statement that looks each key up in the index: a join of
    the keys (PostgreSQL: unnest of one array per column; SQLite: VALUES, one statement per number
    of keys) with the table. A row-value IN list would not do: SQLite scans the whole index."""
    if not keys:
        return []
    assert len(keys) <= MAX_BULK_ROWS
    postgres = _postgres(conn)
    cache_key = ("in-index", index.name, columns, None if postgres else len(keys))
    statement = _statements.get(cache_key)
    if statement is None:
        statement = _rows_in_index_statement(conn, index, columns, None if postgres else len(keys))
        _statements[cache_key] = statement
    if postgres:
        names = [f"k_{indexed.name}" for indexed in index.columns]
        arrays = {name: [key[i] for key in keys] for i, name in enumerate(names)}
        return conn.exec_driver_sql(statement, arrays).all()
    return conn.exec_driver_sql(statement, tuple(value for key in keys for value in key)).all()


def _rows_in_index_statement(
    conn: Connection, index: Index, columns: tuple[str, ...], count: int | None
) -> str:
    """Driver SQL: PostgreSQL (count None) over arrays, binary; SQLite for `count` keys, positional, key
    after key (a Core statement of VALUES is compiled again on every execution: 0.5 ms for one key)."""
    table = index.table
    names = {f"k_{indexed.name}": indexed.name for indexed in index.columns}
    if count is None:
        keys = _unnest(table, names)
    else:
        rows = [tuple(bindparam(f"{name}_{n}") for name in names) for n in range(count)]
        keys = values(*(column(name, table.c[of].type) for name, of in names.items()), name="v").data(rows)
        keys = keys.cte("v")
    on = and_(*(table.c[of] == keys.c[name] for name, of in names.items()))
    query = select(*(table.c[name] for name in columns)).select_from(keys.join(table, on))
    where = index.dialect_options[conn.dialect.name]["where"]
    if where is not None:
        query = query.where(where)
    if count is None:
        return _driver_sql(conn, query)
    compiled = query.compile(dialect=conn.dialect)
    assert compiled.positiontup == [f"{name}_{n}" for n in range(count) for name in names]
    return str(compiled)


def update_values(conn: Connection, table: Table, key_column: str, value_column: str, values: dict) -> None:
    """Set `value_column` to values[key] in each row whose `key_column` is key, in one statement on
    PostgreSQL; every row must exist (the caller holds their locks)."""
    writes = GroupWrites()
    writes.update(table, key_column, value_column, values)
    writes.flush(conn)


class GroupWrites:
    """Inserts and updates that read nothing the others write, sent together by flush().

    PostgreSQL: one statement, `WITH w0 AS (UPDATE ... RETURNING 1), w1 AS (INSERT ... RETURNING 1)
    ... SELECT count(*) of each`; every part runs exactly once and sees the snapshot from before the
    statement, so a part must not depend on another's rows (foreign keys to rows that exist
    before are fine: they are checked at the end of the statement). SQLite: one insert_rows or
    update_values each, in order. Each update must hit every key it names, as in update_values.
    """

    def __init__(self) -> None:
        self._parts: list[tuple] = []

    def insert(self, table: Table, rows: list[dict]) -> None:
        if rows:
            assert len(rows) <= MAX_BULK_ROWS
            self._parts.append(("insert", table, tuple(rows[0]), rows))

    def update(self, table: Table, key_column: str, value_column: str, values: dict) -> None:
        """Set `value_column` to values[key] where `key_column` is key."""
        self.update_rows(table, key_column, {key: {value_column: value} for key, value in values.items()})

    def update_rows(self, table: Table, key_column: str, rows: dict[object, dict]) -> None:
        """Set the columns of rows[key] (dicts with the same keys) where `key_column` is key. A row
        is updated once per flush on PostgreSQL: name each row in one update only."""
        if rows:
            assert len(rows) <= MAX_BULK_ROWS
            columns = tuple(next(iter(rows.values())))
            assert columns and key_column not in columns
            self._parts.append(("update", table, (key_column, *columns), rows))

    def flush(self, conn: Connection) -> None:
        parts, self._parts = self._parts, []
        if not parts:
            return
        if not _postgres(conn):
            for kind, table, names, data in parts:
                if kind == "insert":
                    insert_rows(conn, table, data)
                else:
                    _update_each(conn, table, names, data)
            return
        key = ("group", tuple((kind, table.name, names) for kind, table, names, _ in parts))
        statement = _statements.get(key)
        if statement is None:
            statement = _driver_sql(conn, _group_statement(parts))
            _statements[key] = statement
        params, expected = {}, []
        for index, (kind, _table, names, data) in enumerate(parts):
            if kind == "insert":
                params.update({f"w{index}_{name}": [row[name] for row in data] for name in names})
            else:
                keys = sorted(data)  # the order the caller locked them in
                params[f"w{index}_by_{names[0]}"] = keys
                params.update({f"w{index}_{name}": [data[k][name] for k in keys] for name in names[1:]})
            expected.append(len(data))
        counts = list(conn.exec_driver_sql(statement, params).one())
        assert counts == expected, f"rows written {counts}, expected {expected}"


def _update_each(conn: Connection, table: Table, names: tuple, rows: dict) -> None:
    """SQLite: an executemany update, keys in sorted order."""
    key_column, columns = names[0], names[1:]
    cache_key = ("update-each", table.name, names)
    statement = _statements.get(cache_key)
    if statement is None:
        statement = (
            update(table)
            .where(table.c[key_column] == bindparam("b_key"))
            .values({name: bindparam(f"b_{name}") for name in columns})
        )
        _statements[cache_key] = statement
    keys = sorted(rows)
    result = conn.execute(
        statement, [{"b_key": key, **{f"b_{name}": rows[key][name] for name in columns}} for key in keys]
    )
    assert result.rowcount == len(keys), f"{table.name}: {result.rowcount} of {len(keys)} rows updated"


def _group_statement(parts: list[tuple]) -> Executable:
    ctes = []
    for index, (kind, table, names, _) in enumerate(parts):
        prefix = f"w{index}_"
        if kind == "insert":
            values = _unnest(table, {prefix + name: name for name in names})
            part = insert(table).from_select(names, select(*(values.c[prefix + name] for name in names)))
        else:
            key_column, columns = names[0], names[1:]
            by = f"{prefix}by_{key_column}"
            rows = _unnest(table, {by: key_column, **{prefix + name: name for name in columns}})
            part = (
                update(table)
                .where(table.c[key_column] == rows.c[by])
                .values({name: rows.c[prefix + name] for name in columns})
            )
        ctes.append(part.returning(literal_column("1")).cte(f"w{index}"))
    return select(*(select(func.count()).select_from(cte).scalar_subquery() for cte in ctes))
