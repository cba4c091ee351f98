"""Two `center serve` processes on one data directory, and serves that fail to start beside them
(issue 15, point 2): each running server counts only its own payments, their counts add up to the
payments in the database, and a failing start (its port taken, or its metrics port taken) removes
only the metrics directory it made, never a running server's counters.

Before the per-server metrics directories, a failed second serve emptied D/metrics and the running
server then reported 0 payments; test_attack_exposure.py covers that one case, this the general one.
"""

from __future__ import annotations

import pytest
from metrics_support import MetricsCenter, value
from ops_support import STORE_NAME, SignedClient, funded_member, pay_body
from sqlalchemy import create_engine, func, select
from support import free_port, run_cli

from center.storage.db import payments

FAILED_START_TIMEOUT_S = 60  # a refused start exits within seconds; one that serves would hang here


def payments_total(metrics_center: MetricsCenter) -> float:
    return value(metrics_center.scrape(), "tokenpay_payments_total")


def metrics_dirs(data_dir) -> list[str]:
    return sorted(path.name for path in (data_dir / "metrics").iterdir() if path.is_dir())


@pytest.mark.slow
def test_two_serves_on_one_data_dir_count_their_own_and_failed_starts_leave_them(tmp_path):
    data_dir = tmp_path / "center"
    made = run_cli("center", ["init", "--data-dir", str(data_dir), "--json"])
    assert made.returncode == 0, made.stderr
    first = MetricsCenter(data_dir=data_dir, port=free_port())
    second = MetricsCenter(data_dir=data_dir, port=free_port())
    clients = []
    try:
        first.start()
        second.start()  # starting sweeps D/metrics: the first server's directory is held, so it stays
        client1, client2 = SignedClient(first), SignedClient(second)
        clients += [client1, client2]
        _store, store_id = client1.enroll("store", name=STORE_NAME)
        member, _member_id = funded_member(client1, first, 100_000)
        for number in range(3):
            client1.result(member, "pay", pay_body(store_id, 100, f"first-{number}"))
        for number in range(2):
            client2.result(member, "pay", pay_body(store_id, 100, f"second-{number}"))
        assert (payments_total(first), payments_total(second)) == (3, 2)
        assert payments_total(first) + payments_total(second) == payments_in_database(data_dir)
        running = metrics_dirs(data_dir)
        assert len(running) == 2
        files = sorted((data_dir / "metrics").rglob("*.db"))
        assert files

        # A third serve whose HTTPS port is taken: its metrics directory is made, then uvicorn fails.
        port_taken = run_cli(
            "center",
            [
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(first.port),
                "--metrics-port",
                str(free_port()),
            ],
            timeout_s=FAILED_START_TIMEOUT_S,
        )
        assert port_taken.returncode != 0
        # A fourth whose metrics port is taken: the listener fails after its directory is made.
        metrics_port_taken = run_cli(
            "center",
            [
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(free_port()),
                "--metrics-port",
                str(second.metrics_port),
            ],
            timeout_s=FAILED_START_TIMEOUT_S,
        )
        assert metrics_port_taken.returncode != 0 and "--metrics-port" in metrics_port_taken.stderr

        # Each failed start removed what it made and nothing else.
        assert metrics_dirs(data_dir) == running
        assert all(path.exists() for path in files)
        assert (payments_total(first), payments_total(second)) == (3, 2)
        client2.result(member, "pay", pay_body(store_id, 100, "second-after"))
        client1.result(member, "pay", pay_body(store_id, 100, "first-after"))
        assert (payments_total(first), payments_total(second)) == (4, 3)
        assert payments_in_database(data_dir) == 7
    finally:
        for client in clients:
            client.close()
        first.stop()
        second.stop()


def payments_in_database(data_dir) -> int:
    engine = create_engine(f"sqlite:///{data_dir / 'center.db'}")
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(payments)).scalar_one()
    finally:
        engine.dispose()
