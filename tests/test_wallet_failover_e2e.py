"""Wallets fail over between the nodes of one center (issue 15, point 3), through the real CLI.

One center (`center init`, SQLite) served by two `center serve` processes on the same data
directory and two ports, as two nodes of the center are. The cases share it (each center start
costs seconds) and leave both nodes up and the wallets' lists as they found them:
- enroll with --center twice; `status --json` lists both, in order;
- node 1 killed (SIGKILL): a payment goes through node 2, booked once, its receipt in the log
  (`wallet audit check`); node 1 back and node 2 killed: the next one goes through node 1;
- a URL of another center (a second `center init`) in the list is refused at enroll and at operator
  attach, naming it, before anything is signed or queued;
- `sync --center` repeated replaces the list; a malformed or foreign URL in it changes nothing;
- every node down: the message is queued, and `wallet sync` with a node back delivers the same signed
  bytes (same message id and payload hash, no new counter), booked once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from relay_support import Relay
from sqlalchemy import create_engine, func, select
from support import CenterProcess, free_port, run_cli
from test_payments_e2e import center_cli
from test_wallet_e2e import WalletUser

from center.storage.db import messages, normalise_url, payments, topups
from paywire.envelope import Envelope
from token_wallet.vault import Vault

pytestmark = pytest.mark.slow

TOPUPS, PAYMENTS = "/v1/topups", "/v1/payments"
MEMBER_DETAILS = ("--name", "Hanako Yamada", "--address", "1-1 Chiyoda", "--birth-date", "1985-06-15")


class TwoNodes:
    """Two `center serve` processes of one center: the same data directory, two ports."""

    def __init__(self, base: Path, name: str = "center"):
        self.data_dir = base / name
        db_url = f"sqlite:///{base / f'{name}.db'}"
        result = run_cli(
            "center", ["init", "--data-dir", str(self.data_dir), "--db", db_url, "--currency", "JPY"]
        )
        assert result.returncode == 0, result.stderr
        self.nodes = [CenterProcess(data_dir=self.data_dir, port=free_port()) for _ in range(2)]
        self.db_url = db_url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def cert(self) -> Path:
        return self.data_dir / "center-cert.pem"

    def up(self) -> None:
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                node.start()

    def kill(self, index: int) -> None:
        """Node loss: SIGKILL, no shutdown of any kind."""
        self.nodes[index].stop(signal.SIGKILL)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def count(self, statement) -> int:
        engine = create_engine(normalise_url(self.db_url))
        try:
            with engine.connect() as conn:
                return conn.execute(statement).scalar_one()
        finally:
            engine.dispose()

    def payments(self) -> int:
        return self.count(select(func.count()).select_from(payments))

    def requests(self, index: int, route: str) -> list[tuple[int, str | None]]:
        """(status, msg_id) of each request on `route` that node `index` logged, oldest first (a
        503 at the request deadline is logged without its msg_id)."""
        log = self.data_dir.parent / f"center-{self.nodes[index].port}.log"
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return [
            (event["status"], event.get("msg_id"))
            for event in events
            if event.get("event") == "request" and event.get("route") == route
        ]

    def message_hash(self, msg_id: str) -> list[str]:
        engine = create_engine(normalise_url(self.db_url))
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(messages.c.payload_sha256).where(messages.c.msg_id == msg_id))
                return [row[0] for row in rows]
        finally:
            engine.dispose()


class WriterLock:
    """Another connection holding SQLite's one write lock, as a commit stuck in a database that is
    failing over would: a node answers 503 database_unavailable at its deadline. The lock goes once
    node `index` has logged a 503 on `route` (and at the latest after MAX_HOLD_S)."""

    MAX_HOLD_S = 30.0

    def __init__(self, nodes: TwoNodes, index: int, route: str):
        self.nodes, self.index, self.route = nodes, index, route
        self.seen = self._unavailable()
        self.conn = sqlite3.connect(
            nodes.db_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
        )
        self.conn.execute("BEGIN IMMEDIATE")
        threading.Thread(target=self._release_after_503, daemon=True).start()

    def _unavailable(self) -> int:
        return [status for status, _msg_id in self.nodes.requests(self.index, self.route)].count(503)

    def _release_after_503(self) -> None:
        deadline = time.monotonic() + self.MAX_HOLD_S
        while time.monotonic() < deadline and self._unavailable() == self.seen:
            time.sleep(0.1)
        time.sleep(0.3)  # the wallet is on to its next attempt, which waits for the lock
        self.conn.rollback()
        self.conn.close()


@contextlib.contextmanager
def request_deadline(data_dir: Path, deadline_s: float):
    """config.json with a short `request_deadline_s`, for a node started inside (read at start)."""
    config_file = data_dir / "config.json"
    original = config_file.read_text()
    config_file.write_text(json.dumps(json.loads(original) | {"request_deadline_s": deadline_s}))
    try:
        yield
    finally:
        config_file.write_text(original)


def enroll(user: WalletUser, urls: list[str], cert: Path, *details: str):
    center_args = [arg for url in urls for arg in ("--center", url)]
    return user.run("enroll", *center_args, "--center-cert", str(cert), *details, "--json")


def error_line(result) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def outbox_entry(user: WalletUser, msg_id: str) -> dict:
    vault = Vault.open(user.vault, Path(user.files["a"]).read_text().strip())
    try:
        return next(entry for entry in vault.document()["outbox"] if entry["msg_id"] == msg_id)
    finally:
        vault.close()


@pytest.fixture(scope="module")
def center(tmp_path_factory):
    nodes = TwoNodes(tmp_path_factory.mktemp("failover"))
    nodes.up()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def wallets(tmp_path_factory, make_softhsm_token, center):
    """A member (funded) and a store, both enrolled with the two nodes' URLs."""
    base = tmp_path_factory.mktemp("wallets")
    member, store = WalletUser(base, make_softhsm_token, "m"), WalletUser(base, make_softhsm_token, "s")
    member.init()
    store.init("--key-type", "ed25519")
    enrolled = enroll(member, center.urls, center.cert, *MEMBER_DETAILS)
    assert enrolled.returncode == 0 and json.loads(enrolled.stdout)["status"] == "enrolled", enrolled.stderr
    shop = (
        "--store",
        "--name",
        "Corner Shop",
        "--address",
        "2-2 Shibuya",
        "--bank-account",
        "JP-0009-7654321",
    )
    opened = enroll(store, center.urls, center.cert, *shop)
    assert opened.returncode == 0, opened.stderr
    topup_id = member.json("topup", "10000", "--method", "bank")["topup_id"]
    assert center_cli(center.nodes[0], "operator", "confirm-topup", topup_id)["status"] == "confirmed"
    return member, store, json.loads(opened.stdout)["member_id"]


@pytest.fixture
def both_up(center, wallets):
    center.up()
    yield center
    center.up()


def test_enroll_takes_several_urls_and_status_lists_them(both_up, wallets):
    member, store, _store_id = wallets
    for user in (member, store):
        status = user.json("status")
        assert status["center_urls"] == both_up.urls
        assert status["center"]["url"] == both_up.urls[0], "the one-URL field stays: the first"
        assert status["member_id"]
    plain = member.run("status")
    assert plain.returncode == 0, plain.stderr
    assert f"at {both_up.urls[0]} (then {both_up.urls[1]})" in plain.stdout


def test_a_killed_node_is_passed_over_and_the_next_one_back_takes_over(both_up, wallets):
    member, _store, store_id = wallets
    before = both_up.payments()

    both_up.kill(0)
    paid = member.json("pay", "--store", store_id, "--amount", "1200", "--order", "F-1", "--yes")
    assert paid["status"] == "accepted" and paid["payment_id"].startswith("P-"), paid
    assert both_up.payments() == before + 1
    assert len(both_up.message_hash(paid["msg_id"])) == 1
    assert (200, paid["msg_id"]) in both_up.requests(1, PAYMENTS), "node 2 took it"

    both_up.nodes[0].start()
    both_up.kill(1)
    again = member.json("pay", "--store", store_id, "--amount", "300", "--order", "F-2", "--yes")
    assert again["status"] == "accepted" and again["balance_minor"] == paid["balance_minor"] - 300
    assert both_up.payments() == before + 2
    assert (200, again["msg_id"]) in both_up.requests(0, PAYMENTS), "node 1 took it"

    # Both receipts (signed by either node with the one center key) verify and are in the log.
    assert member.json("history")["outbox"] == []
    audit = member.run("audit", "check", "--json")
    report = json.loads(audit.stdout)
    assert audit.returncode == 0 and report["ok"] is True, audit.stderr
    assert report["receipts_checked"] == report["receipts_total"] >= 4
    both_up.up()
    assert center_cli(both_up.nodes[1], "ledger", "check")["ok"] is True


def test_a_url_of_another_center_is_refused_before_anything_is_signed(both_up, tmp_path, make_softhsm_token):
    other = CenterProcess(data_dir=tmp_path / "other", port=free_port())
    made = run_cli(
        "center", ["init", "--data-dir", str(other.data_dir), "--db", f"sqlite:///{tmp_path / 'o.db'}"]
    )
    assert made.returncode == 0, made.stderr
    other.start()
    try:
        user = WalletUser(tmp_path, make_softhsm_token, "x")
        user.init()
        before = user.vault.read_bytes()
        for urls in ([both_up.urls[0], other.url], [other.url, *both_up.urls]):
            message = error_line(enroll(user, urls, both_up.cert, *MEMBER_DETAILS))
            assert f"--center {other.url} is not the center of the pinned certificate" in message
            assert "nothing was signed" in message
        centers = ("--center", both_up.urls[1], "--center", other.url, "--center-cert", str(both_up.cert))
        message = error_line(user.run("operator", "attach", *centers))
        assert f"--center {other.url} is not the center" in message
        assert user.vault.read_bytes() == before, "nothing signed, queued or pinned"
        assert user.json("history")["outbox"] == [] and user.json("status")["center_urls"] == []
    finally:
        other.stop()


def test_repeated_center_on_sync_replaces_the_list_and_a_bad_one_changes_nothing(both_up, wallets):
    _member, store, _store_id = wallets
    first, second = both_up.urls
    silent = f"https://127.0.0.1:{free_port()}"  # no node there: accepted, tried last
    moved = store.json("sync", "--center", second, "--center", first, "--center", silent)
    assert moved["pending"] == 0
    assert store.json("status")["center_urls"] == [second, first, silent]

    for bad in ("http://127.0.0.1:1", "127.0.0.1:8443", "https://"):
        message = error_line(store.run("sync", "--center", first, "--center", bad))
        assert "--center" in message and "nothing was signed or changed" in message, message
        assert store.json("status")["center_urls"] == [second, first, silent]

    assert store.json("notices")["new"] >= 0, "works through the reordered list"
    restored = store.json("sync", "--center", first, "--center", second)
    assert restored["pending"] == 0 and store.json("status")["center_urls"] == both_up.urls


def test_all_nodes_down_queues_and_sync_delivers_the_same_signed_bytes_once(both_up, wallets):
    member, _store, store_id = wallets
    first, second = both_up.urls
    # Node 1 through a gate that passes the list check (connection 1) and the store look-up (2), then
    # closes: the payment finds no node answering. Node 2 is killed.
    gate = Relay(both_up.nodes[0].port, lambda number: "pass" if number in (1, 2) else "close")
    try:
        member.json("sync", "--center", gate.url, "--center", second)
        both_up.kill(1)
        before = both_up.payments()
        queued = member.json("pay", "--store", store_id, "--amount", "700", "--order", "Q-1", "--yes")
        assert queued["status"] == "queued", queued
        assert gate.url in queued["reason"] and second in queued["reason"], queued["reason"]
        entry = outbox_entry(member, queued["msg_id"])
        counter = member.json("status")["counter"]
        assert both_up.payments() == before and both_up.message_hash(queued["msg_id"]) == []

        both_up.nodes[1].start()
        synced = member.json("sync")
        assert [(d["type"], d["msg_id"]) for d in synced["delivered"]] == [("pay", queued["msg_id"])]
        payload = Envelope.from_json(entry["envelope"]).payload
        assert both_up.message_hash(queued["msg_id"]) == [hashlib.sha256(payload).hexdigest()]
        assert both_up.payments() == before + 1
        assert member.json("status")["counter"] == counter, "delivered without a new signature"
        assert member.json("sync")["delivered"] == []
    finally:
        gate.close()
        member.json("sync", "--center", first, "--center", second)

    # Both nodes really down (SIGKILL): a top-up (no look-up before signing) waits, then goes once.
    both_up.kill(0)
    both_up.kill(1)
    waiting = member.json("topup", "500", "--method", "bank")
    assert waiting["status"] == "queued" and first in waiting["reason"] and second in waiting["reason"]
    offline = member.run("sync", "--json")
    assert offline.returncode == 3 and json.loads(offline.stdout)["pending"] == 1
    both_up.nodes[1].start()
    delivered = member.json("sync")
    assert [d["msg_id"] for d in delivered["delivered"]] == [waiting["msg_id"]]
    assert len(both_up.message_hash(waiting["msg_id"])) == 1


def test_a_node_answering_503_is_passed_over_with_the_same_bytes_and_its_wait_is_kept(both_up, wallets):
    """Node 1 answers 503 database_unavailable (retry_after 2) at a 2 s deadline while another
    connection holds the database's write lock; node 2 waits for the lock and answers. A top-up: it is
    sent as soon as it is signed (a payment first looks the store up, which the lock blocks too)."""
    member, _store, _store_id = wallets
    first, second = both_up.urls
    both_up.nodes[0].stop()
    with request_deadline(both_up.data_dir, 2.0):
        both_up.nodes[0].start()  # node 2 keeps the default deadline (20 s)
    before = both_up.count(select(func.count()).select_from(topups))

    seen = [len(both_up.requests(index, TOPUPS)) for index in (0, 1)]
    counter = member.json("status")["counter"]
    WriterLock(both_up, 0, TOPUPS)
    asked = member.json("topup", "200", "--method", "bank")
    assert asked["status"] == "pending" and asked["topup_id"], asked
    assert [status for status, _ in both_up.requests(0, TOPUPS)[seen[0] :]] == [503], "node 1 first"
    assert both_up.requests(1, TOPUPS)[seen[1] :] == [(200, asked["msg_id"])], "then node 2"
    assert both_up.count(select(func.count()).select_from(topups)) == before + 1
    assert member.json("status")["counter"] == counter + 1, "one signature, sent to both nodes"
    assert len(both_up.message_hash(asked["msg_id"])) == 1

    # Node 1 alone: after its 503 the wallet waits retry_after, then sends the same bytes again.
    member.json("sync", "--center", first)
    try:
        seen = len(both_up.requests(0, TOPUPS))
        WriterLock(both_up, 0, TOPUPS)
        started = time.monotonic()
        again = member.json("topup", "100", "--method", "bank")
        elapsed_s = time.monotonic() - started
    finally:
        member.json("sync", "--center", first, "--center", second)
    assert again["status"] == "pending", again
    answers = both_up.requests(0, TOPUPS)[seen:]
    assert answers[0][0] == 503 and answers[-1] == (200, again["msg_id"]) and len(answers) <= 4, answers
    assert elapsed_s >= 2.0 + 2.0, "the deadline, then retry_after, before the resend"
    assert both_up.count(select(func.count()).select_from(topups)) == before + 2
