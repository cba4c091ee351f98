"""The backup center under load (issue 15): a three-node Patroni cluster in strict synchronous mode, two
center nodes (the second made by `center join` from a signed backup), eight clients paying through
both. Node loss, a planned switchover, and the loss of two nodes.

What must hold each time: every payment a client holds a verified receipt for is in the books exactly
once, the same bytes sent again get the very same receipt, `center ledger check` and `center audit
verify` pass on the new primary, and no payment fails beyond retries. Printed: the time from the kill
to the first accepted payment, how many payments needed a retry.

One cluster for the module (its start costs ~30 s); each test makes its own center and database.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest
from failover_support import Load, resend_all
from ha_support import running_cluster
from sqlalchemy.engine import make_url
from stress_support import STORE_NAME, Api, LiveCenter, fund_members, pay_body
from support import CenterProcess, create_pg_database, free_port, run_cli, set_center_config
from test_backup import make_backup_key, signed_by

from center.storage.db import payments

pytestmark = [pytest.mark.ha, pytest.mark.slow]

CLIENTS = 8
FUNDS_MINOR = 1_000_000
WARM_UP_S = 4.0
AFTER_S = 4.0
MAX_RECOVERY_S = 120.0


@pytest.fixture(scope="module")
def cluster():
    with running_cluster() as running:  # under /var/tmp: Patroni, as postgres, cannot enter pytest's dirs
        yield running


@pytest.fixture(scope="module")
def backup_key(tmp_path_factory) -> dict:
    return make_backup_key(tmp_path_factory.mktemp("ha-admin"))


class TwoNodes:
    """One center on the cluster: node A by `center init`, node B by `center join` of A's backup (taken
    after the store's enrollment: join recognises the center's database by its signed tree heads)."""

    def __init__(self, root: Path, db_url: str, backup_key: dict, deadline_s: float | None = None):
        self.center = LiveCenter.create(root, db_url)
        if deadline_s is not None:
            set_center_config(self.center.data_dir, request_deadline_s=deadline_s)
        self.node_a = self.center.process
        self.node_a.start()
        with Api(self.center) as api:
            _, self.store_id = api.enroll("store", name=STORE_NAME)
        archive = root / "center.backup"
        made = run_cli(
            "center",
            ["backup", str(archive), "--data-dir", str(self.center.data_dir), *signed_by(backup_key)],
        )
        assert made.returncode == 0, made.stderr
        joined = run_cli(
            "center",
            [
                "join",
                str(archive),
                "--data-dir",
                str(root / "node-b"),
                "--db",
                db_url,
                "--backup-public-key",
                backup_key["public"],
            ],
        )
        assert joined.returncode == 0, joined.stderr
        self.node_b = CenterProcess(data_dir=root / "node-b", port=free_port())
        self.node_b.start()

    @property
    def urls(self) -> list[str]:
        return [self.node_a.url, self.node_b.url]

    def close(self) -> None:
        self.node_b.stop()
        self.center.close()


@pytest.fixture
def two_nodes(tmp_path, cluster, backup_key):
    nodes = TwoNodes(tmp_path, create_pg_database(cluster.url("postgres")), backup_key)
    yield nodes
    nodes.close()


def _start_load(nodes: TwoNodes) -> Load:
    with Api(nodes.center) as api:
        payers = fund_members(api, CLIENTS, FUNDS_MINOR)
    return Load(nodes.center, nodes.urls, payers, nodes.store_id).start()


def _wait_for_payments_after(load: Load, moment: float, count: int = 1) -> float:
    deadline = time.monotonic() + MAX_RECOVERY_S
    while time.monotonic() < deadline:
        after = load.accepted_after(moment)
        if len(after) >= count:
            return min(paid.answered_at for paid in after) - moment  # to the first answer
        time.sleep(0.1)
    raise AssertionError(f"no payment accepted within {MAX_RECOVERY_S} s")


def _check_books(nodes: TwoNodes, load: Load, url: str) -> None:
    assert load.failed == [], load.failed[:5]
    assert load.count() > 0
    ids = [paid.result["payment_id"] for paid in load.paid]
    assert len(set(ids)) == len(ids), "two receipts name one payment"
    assert nodes.center.count(payments) == len(ids), "the books and the receipts held differ"
    assert nodes.center.count(payments, payments.c.id.in_(ids)) == len(ids)
    assert resend_all(nodes.center, url, load.paid) == []
    nodes.center.ledger_check()
    nodes.center.audit_verify()


def _longest_pause_s(load: Load, since: float) -> float:
    """The longest time without an accepted payment after `since`: what the clients felt of it."""
    times = sorted(paid.answered_at for paid in load.paid if paid.answered_at >= since)
    return max((later - earlier for earlier, later in zip([since, *times], times, strict=False)), default=0.0)


def _report(what: str, **figures) -> None:
    print(f"[ha] {what}: " + ", ".join(f"{name} {value}" for name, value in figures.items()))


def test_node_loss_then_a_center_node_loss_under_load(two_nodes, cluster):
    load = _start_load(two_nodes)
    try:
        time.sleep(WARM_UP_S)
        old_leader = cluster.leader()
        killed_at = cluster.kill_node(old_leader)  # kill -9 of its Patroni and PostgreSQL: the node is gone
        recovery_s = _wait_for_payments_after(load, killed_at)
        new_leader = cluster.wait_leader(not_name=old_leader, timeout_s=MAX_RECOVERY_S)
        time.sleep(AFTER_S)
        two_nodes.node_a.stop(signal.SIGKILL)  # kill -9 of one center node: the clients go on through B
        center_killed_at = time.monotonic()
        _wait_for_payments_after(load, center_killed_at, count=CLIENTS)
        time.sleep(AFTER_S)
    finally:
        load.stop()
    retried = sum(1 for paid in load.paid if paid.attempts > 1)
    _report(
        "node loss",
        old_leader=old_leader,
        new_leader=new_leader,
        longest_pause_s=f"{_longest_pause_s(load, killed_at):.1f}",
        kill_to_first_payment_s=f"{recovery_s:.1f}",
        payments=load.count(),
        needed_a_retry=retried,
    )
    _check_books(two_nodes, load, two_nodes.node_b.url)
    # The old primary comes back as a standby (pg_rewind through Patroni) and catches up.
    cluster.start_node(old_leader)
    cluster.wait_streaming(2, timeout_s=MAX_RECOVERY_S)
    assert cluster.leader() != old_leader
    database = make_url(two_nodes.center.db_url).database
    deadline = time.monotonic() + MAX_RECOVERY_S
    while _payments_on(cluster, old_leader, database) != load.count():
        assert time.monotonic() < deadline, "the old primary did not catch up"
        time.sleep(0.5)


def _payments_on(cluster, node: str, database: str) -> int | None:
    """The payments on one node, primary or standby (a standby shows what it has replayed); None while
    it does not take connections yet (a standby refuses them until its recovery is consistent)."""
    try:
        with cluster.connect_node(node, database) as conn:
            return conn.execute("SELECT count(*) FROM payments").fetchone()[0]
    except psycopg.OperationalError:
        return None


def test_planned_switchover_under_load_fails_no_payment(two_nodes, cluster):
    load = _start_load(two_nodes)
    try:
        time.sleep(WARM_UP_S)
        old_leader = cluster.leader()
        switched_at = time.monotonic()
        cluster.switchover()
        new_leader = cluster.wait_leader(not_name=old_leader, timeout_s=MAX_RECOVERY_S)
        recovery_s = _wait_for_payments_after(load, switched_at)
        time.sleep(AFTER_S)
    finally:
        load.stop()
    _report(
        "switchover",
        old_leader=old_leader,
        new_leader=new_leader,
        longest_pause_s=f"{_longest_pause_s(load, switched_at):.1f}",
        switch_to_first_payment_s=f"{recovery_s:.1f}",
        payments=load.count(),
        needed_a_retry=sum(1 for paid in load.paid if paid.attempts > 1),
    )
    _check_books(two_nodes, load, two_nodes.node_a.url)
    cluster.wait_streaming(2, timeout_s=MAX_RECOVERY_S)


def test_losing_two_nodes_stops_commits_with_503_until_one_returns(tmp_path, cluster, backup_key):
    nodes = TwoNodes(tmp_path, create_pg_database(cluster.url("postgres")), backup_key, deadline_s=3.0)
    try:
        with Api(nodes.center) as api:
            _, store_id = api.enroll("store", name=STORE_NAME)
            ((payer, buyer_id),) = fund_members(api, 1, FUNDS_MINOR)
            leader = cluster.leader()
            standbys = [name for name in cluster.nodes if name != leader]
            for name in standbys:
                cluster.kill_node(name)
            # The leader is alive but no standby can hold a commit: strict mode waits rather than risk it.
            request = payer.envelope(
                "pay", pay_body(store_id, 500, "ORDER-TWO-LOST"), aud=nodes.center.center_id
            )
            answer = api.post("/v1/payments", request)
            assert answer.status == 503 and answer.code == "database_unavailable", answer.body[:300]
            assert nodes.center.count(payments) == 0  # nothing acknowledged, nothing visible
            cluster.start_node(standbys[0])
            deadline = time.monotonic() + MAX_RECOVERY_S
            while (answer := api.post("/v1/payments", request)).status == 503 and time.monotonic() < deadline:
                time.sleep(answer.json["error"]["retry_after"])
            first = nodes.center.result_of(request, answer)
            assert nodes.center.result_of(request, api.post("/v1/payments", request)) == first
        assert nodes.center.count(payments) == 1 and nodes.center.balance(buyer_id) == FUNDS_MINOR - 500
        nodes.center.ledger_check()
        nodes.center.audit_verify()
        cluster.start_node(standbys[1])
        cluster.wait_streaming(2, timeout_s=MAX_RECOVERY_S)
    finally:
        nodes.close()
