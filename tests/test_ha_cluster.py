"""The PostgreSQL cluster of scripts/ha-cluster.sh: a node loss keeps every committed row; the node returns.

One test on purpose: each cluster start costs ~10 s of CI. Rows go through the multi-host SQLAlchemy URL
(the form the center uses), so psycopg finds the writable node by itself after the failover.
"""

from __future__ import annotations

import shutil
import time

import pytest
import sqlalchemy
from ha_support import running_cluster
from sqlalchemy.pool import NullPool
from support import require

pytestmark = [pytest.mark.ha, pytest.mark.slow]

ROWS_BEFORE_KILL = 100
ROWS_AFTER_FAILOVER = 100
# Measured here: ~12 s with ttl 10 (ha-cluster.sh); the bound leaves room for a loaded CI machine.
FAILOVER_LIMIT_S = 60.0
REJOIN_LIMIT_S = 120.0
# A commit waiting for a synchronous standby that never comes would otherwise hang the test.
STATEMENT_TIMEOUT_MS = 30_000


def insert_row(engine: sqlalchemy.Engine, row_id: int) -> None:
    """One row, one transaction: returning means PostgreSQL acknowledged the commit."""
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("INSERT INTO rows (id) VALUES (:id)"), {"id": row_id})


def row_ids(engine: sqlalchemy.Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sqlalchemy.text("SELECT id FROM rows")).scalars())


def first_commit_after(engine: sqlalchemy.Engine, row_id: int, since_s: float) -> float:
    """Retry one insert until a node takes it; seconds from since_s (time.monotonic) to the commit."""
    deadline = since_s + FAILOVER_LIMIT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            insert_row(engine, row_id)
            return time.monotonic() - since_s
        except sqlalchemy.exc.OperationalError as error:  # no writable node yet
            last_error = error
            time.sleep(0.2)
    raise AssertionError(f"no commit within {FAILOVER_LIMIT_S} s of the node loss; last error: {last_error}")


def test_leader_loss_keeps_committed_rows_and_the_old_leader_rejoins_as_replica():
    require(
        "Patroni and etcd (scripts/setup.sh installs them)",
        bool(shutil.which("patroni") and shutil.which("etcd")),
    )
    with running_cluster() as cluster:
        print(f"\ncluster ready in {cluster.bootstrap_s:.1f} s")
        url = cluster.create_database("ha_check")
        assert "host=" in url and url.count("host=") == 3, url
        # NullPool: each transaction connects afresh through the host list, as a client after a failover.
        engine = sqlalchemy.create_engine(
            url, poolclass=NullPool, connect_args={"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}
        )
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE rows (id integer PRIMARY KEY)"))
        before = set(range(ROWS_BEFORE_KILL))
        for row_id in sorted(before):
            insert_row(engine, row_id)
        old_leader = cluster.leader()
        assert cluster.sync_standby() not in (None, old_leader), cluster.members()

        killed_at_s = cluster.kill_node(old_leader)
        failover_s = first_commit_after(engine, ROWS_BEFORE_KILL, killed_at_s)
        new_leader = cluster.wait_leader(not_name=old_leader, timeout_s=10)
        print(f"failover: {old_leader} lost (kill -9 Patroni + PostgreSQL), new leader {new_leader}")
        print(f"failover time (kill to first commit): {failover_s:.1f} s")

        # Strict synchronous replication: everything acknowledged before the loss survived it.
        assert before <= row_ids(engine)
        after = set(range(ROWS_BEFORE_KILL + 1, ROWS_BEFORE_KILL + 1 + ROWS_AFTER_FAILOVER))
        for row_id in sorted(after):
            insert_row(engine, row_id)
        expected = before | {ROWS_BEFORE_KILL} | after
        assert row_ids(engine) == expected

        rejoin_started_s = time.monotonic()
        cluster.start_node(old_leader)
        caught_up = cluster.wait_streaming(2, timeout_s=REJOIN_LIMIT_S)
        print(f"{old_leader} rejoined and caught up in {time.monotonic() - rejoin_started_s:.1f} s")
        assert old_leader in caught_up, caught_up
        assert cluster.leader() == new_leader  # the returning node did not take the lead back
        assert cluster.sync_standby() not in (None, new_leader), cluster.members()
        old_node = sqlalchemy.create_engine(cluster.node_url(old_leader, "ha_check"), poolclass=NullPool)
        with old_node.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT pg_is_in_recovery()")).scalar() is True
        assert row_ids(old_node) == expected  # rewound onto the new timeline, then replayed the new rows
        old_node.dispose()
        engine.dispose()

    assert not cluster.base_dir.exists()
    assert cluster.leftover_processes() == []
