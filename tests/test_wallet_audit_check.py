"""`wallet audit check` end to end: a real `center serve` over HTTPS, real `wallet` processes on
SoftHSM tokens.

Happy path: every receipt's entry is in the newest signed tree, every head seen is a prefix of it;
the wallet's counter is not used. Attack 1: someone with the database (and the center's key, which
signs whatever the database holds) rewrites an entry and recomputes the chain, the leaves, the
nodes and the frontier, leaving the old tree heads: the wallet names the problem, exit 1, before
and after the center signs a new head over the rewritten tree. Attack 2: the center shows the
member a fork (its database put back to an earlier copy, then grown differently, every head signed
with the center's own key): a rollback, then a head inconsistent with the one the wallet kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, insert, select, update
from support import CenterProcess, free_port, run_cli
from test_key_lifecycle_e2e import last_error, pay, vault_document
from test_payments_e2e import enrolled_pair, fund

from center.ledger.audit import GENESIS_HASH, chain_hash
from center.ledger.log_tree import frontier_text
from center.storage.db import audit_head, audit_log, log_nodes, normalise_url
from paywire import merkle
from paywire.canonical import jcs_bytes
from paywire.log_entry import entry_bytes, entry_fields

pytestmark = pytest.mark.slow

REPORT_FIELDS = {
    "ok",
    "tree_size",
    "root_hash",
    "kept_tree_size",
    "receipts_checked",
    "receipts_total",
    "problem",
}


def audit_check(wallet) -> tuple[int, dict]:
    result = wallet.run("audit", "check", "--json")
    report = json.loads(result.stdout)
    assert set(report) == REPORT_FIELDS, report
    return result.returncode, report


def db_url_of(center: CenterProcess) -> str:
    return json.loads((center.data_dir / "config.json").read_text())["db_url"]


def rewrite_history(center: CenterProcess, msg_type: str, change) -> int:
    engine = create_engine(normalise_url(db_url_of(center)))
    try:
        return rewrite_entry(engine, msg_type, change)
    finally:
        engine.dispose()


def rewrite_entry(engine, msg_type: str, change) -> int:
    """The attacker with database access: change the first `msg_type` entry's action, recompute every
    chain hash after it, every leaf and node of the tree and the frontier; the signed heads stay.
    Returns the changed entry's seq."""
    with engine.begin() as conn:
        for table in ("audit_log", "log_nodes"):
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_update")
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            else:
                conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
        rows = [dict(row) for row in conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings()]
        target = next(row["seq"] for row in rows if row["msg_type"] == msg_type)
        prev_hash, leaves = GENESIS_HASH, []
        for row in rows:
            if row["seq"] == target:
                row["action"] = jcs_bytes(change(json.loads(row["action"]))).decode()
            row["prev_hash"], row["entry_hash"] = prev_hash, chain_hash(prev_hash, row)
            prev_hash = row["entry_hash"]
            leaves.append(merkle.leaf_hash(entry_bytes(entry_fields(row, json.loads(row["action"])))))
            if row["seq"] >= target:
                conn.execute(
                    update(audit_log)
                    .where(audit_log.c.seq == row["seq"])
                    .values(action=row["action"], prev_hash=row["prev_hash"], entry_hash=row["entry_hash"])
                )
        tree = merkle.append(0, (), leaves)
        conn.execute(delete(log_nodes))
        conn.execute(
            insert(log_nodes),
            [{"level": level, "idx": idx, "hash": digest} for (level, idx), digest in tree.nodes.items()],
        )
        conn.execute(
            update(audit_head)
            .where(audit_head.c.id == 1)
            .values(entry_hash=prev_hash, frontier=frontier_text(tree.frontier))
        )
    return target


def test_receipts_checked_then_a_rewritten_history_is_named(tmp_path, make_softhsm_token, live_center):
    member, store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "10000")
    for order in ("A-1", "A-2"):
        assert pay(member, store_id, "1000", order).returncode == 0
    counter = vault_document(member)["counter"]

    code, report = audit_check(member)
    receipts = vault_document(member)["receipts"]
    assert code == 0 and report["ok"] is True and report["problem"] is None, report
    assert (
        report["receipts_checked"] == report["receipts_total"] == len(receipts) == 5
    )  # enroll, top-up, balance, 2 payments
    assert report["kept_tree_size"] == report["tree_size"] >= 6  # the operator's confirmation too
    document = vault_document(member)
    assert document["counter"] == counter  # the log queries used no counter
    assert document["log_head"]["tree_size"] == report["tree_size"]
    assert document["log_checked"]["receipts"] == {"next": 5, "proved": 5, "old_form": 0}
    assert audit_check(store)[1]["ok"] is True
    plain = member.run("audit", "check")
    assert plain.returncode == 0 and "receipts checked: 5 of 5" in plain.stdout, plain.stderr

    assert pay(member, store_id, "500", "A-3").returncode == 0  # a receipt not checked yet
    kept = vault_document(member)["log_head"]
    rewrite_history(live_center, "pay", lambda action: action | {"amount_minor": 1})

    # No head over the rewritten tree yet: the old heads' roots no longer come out of it.
    code, report = audit_check(member)
    assert code == 1 and report["ok"] is False
    assert "the center rewrote" in report["problem"], report
    # Someone's request: the center signs a head over what its database holds now.
    assert store.run("balance", "--json").returncode == 0
    code, report = audit_check(member)
    assert code == 1 and report["tree_size"] > kept["tree_size"]
    assert report["problem"] == (
        f"the center's tree head at size {report['tree_size']} is not consistent with the head this wallet "
        f"kept at size {kept['tree_size']}: the center rewrote or forked its history"
    )
    assert last_error(member.run("audit", "check")) == f"error: {report['problem']}"
    document = vault_document(member)
    assert document["log_head"] == kept  # nothing moved forward
    assert (
        document["log_checked"]["receipts"]["next"] == len(document["receipts"]) - 1
    )  # the new one: not checked
    assert document["history"][-1]["outcome"] == "alarm"
    assert audit_check(store)[0] == 1  # the store kept a head too: it sees it as well


@pytest.fixture
def sqlite_center(tmp_path):
    data_dir = tmp_path / "center"
    db_url = f"sqlite:///{tmp_path / 'center.db'}"
    result = run_cli("center", ["init", "--data-dir", str(data_dir), "--db", db_url, "--currency", "JPY"])
    assert result.returncode == 0, result.stderr
    process = CenterProcess(data_dir=data_dir, port=free_port())
    process.start()
    yield process
    process.stop()


def copy_database(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path = source.with_name(source.name + suffix)
        if path.exists():
            shutil.copyfile(path, target.with_name(target.name + suffix))
        else:
            target.with_name(target.name + suffix).unlink(missing_ok=True)


def test_a_fork_shown_to_a_member_is_detected(tmp_path, make_softhsm_token, sqlite_center):
    member, store, store_id = enrolled_pair(tmp_path, make_softhsm_token, sqlite_center)
    fund(member, sqlite_center, "10000")
    assert pay(member, store_id, "1000", "B-1").returncode == 0
    assert audit_check(member)[1]["ok"] is True
    database = tmp_path / "center.db"
    sqlite_center.stop()
    copy_database(database, tmp_path / "fork.db")  # the center's history as it was here
    sqlite_center.start()
    for order in ("B-2", "B-3"):
        assert pay(member, store_id, "1000", order).returncode == 0
    code, report = audit_check(member)
    assert code == 0, report
    kept_size = report["kept_tree_size"]

    # The center puts the earlier copy back and shows it: its head is older than the one kept.
    sqlite_center.stop()
    copy_database(tmp_path / "fork.db", database)
    sqlite_center.start()
    code, report = audit_check(member)
    assert code == 1 and report["tree_size"] < kept_size
    assert report["problem"] == (
        f"the center's newest tree head (size {report['tree_size']}) is older than the head this wallet "
        f"kept (size {kept_size}): the center rolled its history back"
    )
    # The fork grows past the kept size with other entries, each head signed with the center's key.
    for _ in range(kept_size - report["tree_size"] + 1):
        assert store.run("balance", "--json").returncode == 0
    code, report = audit_check(member)
    assert code == 1 and report["tree_size"] > kept_size
    assert report["problem"] == (
        f"the center's tree head at size {report['tree_size']} is not consistent with the head this wallet "
        f"kept at size {kept_size}: the center rewrote or forked its history"
    )
    assert vault_document(member)["log_head"]["tree_size"] == kept_size
