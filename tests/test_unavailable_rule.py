"""Which database errors mean "cannot answer now" (503 database_unavailable, resend later) and which are
faults (500): real errors from real SQLite and PostgreSQL, classified by center.api.unavailable."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from support import free_port

from center.api.unavailable import is_unavailable
from center.storage.db import make_engine


def _error_of(engine, statement: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
        conn.execute(text(statement))
    return caught.value


def test_sqlite_a_lock_held_past_the_timeout_is_unavailable_a_missing_table_is_a_fault(tmp_path):
    path = tmp_path / "c.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    assert not is_unavailable(_error_of(engine, "SELECT * FROM no_such_table"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        impatient = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
        with pytest.raises(DBAPIError) as caught, impatient.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        assert is_unavailable(caught.value), caught.value
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.postgres
def test_postgresql_no_server_is_unavailable_an_undefined_table_is_a_fault(postgres_available):
    if not postgres_available:
        pytest.skip("PostgreSQL is not running (the README's test command starts one)")
    from support import PG_ADMIN_URL

    assert not is_unavailable(_error_of(make_engine(PG_ADMIN_URL), "SELECT * FROM no_such_table"))
    nobody = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/test")  # nothing listens there
    with pytest.raises(DBAPIError) as caught, nobody.connect():
        pass
    assert is_unavailable(caught.value)
