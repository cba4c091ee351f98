"""Reads off the primary (issue 15, point 4): with a read database configured (config read_db_url), the
console's views and statistics come from it, the access record of each read is written on the primary,
and a read database that does not answer leaves the primary to answer.

A real standby is exercised in tests/test_ha_failover.py's cluster; here the "standby" is a copy of the
primary taken at one moment (SQLite's backup API), so that what each side holds differs and the test
can tell which one answered.
"""

from __future__ import annotations

import sqlite3

import pytest
from operator_support import https_client
from sqlalchemy import select
from test_console_api import log_in

from center.console.access import list_reads
from center.storage.db import make_engine, payments


@pytest.fixture(params=["sqlite"])
def db_url(request, tmp_path):
    # SQLite only: the copy below is SQLite's backup API (the PostgreSQL standby is the cluster test's).
    yield f"sqlite:///{tmp_path / 'center.db'}"


def _copy(db_url: str, target) -> str:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return f"sqlite:///{target}"


def _payment_ids(response) -> set[str]:
    assert response.status_code == 200, response.text
    return {row["payment_id"] for row in response.json()["rows"]}


def test_console_reads_come_from_the_read_database_and_are_recorded_on_the_primary(world, db_url, tmp_path):
    center = world.center
    standby_url = _copy(db_url, tmp_path / "standby.db")
    newest = world.pay("hanako", "corner", 100, "Corner Shop", "o-after-copy")  # on the primary only
    center.read_engine = make_engine(standby_url)
    with https_client(center) as client:
        log_in(center, client)
        shown = _payment_ids(client.get("/console/api/payments", params={"limit": 200}))
        assert newest not in shown and world.ids["pay_h1"] in shown, "the read came from the copy"
        stats = client.get("/console/api/stats").json()
        with center.engine.connect() as conn:
            on_primary = conn.execute(select(payments.c.id)).scalars().all()
            reads = list_reads(conn)
        assert newest in on_primary
        assert [read["view"] for read in reads[:2]] == ["stats", "payments"], "recorded on the primary"
        with center.read_engine.connect() as conn:
            assert list_reads(conn) == [] or all(read["view"] != "stats" for read in list_reads(conn))
        assert stats["daily"], stats

        # The read database stops answering: the primary answers, the read is still recorded.
        center.read_engine = make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'standby.db'}")
        assert newest in _payment_ids(client.get("/console/api/payments", params={"limit": 200}))
