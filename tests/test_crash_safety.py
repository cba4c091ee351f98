"""Crash safety: the center's whole process group is SIGKILLed repeatedly under a
payment load, on SQLite and PostgreSQL; and a wallet is SIGKILLed between
signing a payment and hearing the answer.

The center must never acknowledge a payment it then loses, never apply one
twice, never leave half a transfer, and answer every resend of an
acknowledged request with exactly the first receipt.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from relay_support import Relay
from sqlalchemy import select
from stress_support import (
    STORE_NAME,
    Answer,
    Api,
    LiveCenter,
    fund_members,
    pay_body,
    payment_pairing_problems,
    replay_party_in_commit_order,
)
from support import SoftwareSigner, create_pg_database, drop_pg_database
from test_payments_e2e import count_payments, enrolled_pair, fund

from center.storage.db import messages, payments
from paywire.envelope import Envelope
from token_wallet.vault import Vault

pytestmark = pytest.mark.slow

SEED = random.randrange(2**32)
CLIENTS = 4
KILLS = 4
WORKERS = 2
FUNDING = 10_000_000
MAX_PAYMENTS_PER_CLIENT = 400  # bounds the load by count ...
LOAD_DEADLINE_S = 60.0  # ... and by time
MAX_ATTEMPTS = 150  # per request, with backoff: covers a restart (~1.5-2.5 s) many times over
REQUEST_DEADLINE_S = 30.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def crash_db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'center.db'}"
        return
    if not request.getfixturevalue("postgres_available"):
        pytest.skip("PostgreSQL is not running (the README's test command starts one)")
    url = create_pg_database()
    yield url
    drop_pg_database(url)


# --- the harness ---------------------------------------------------------------------------------


@dataclass
class Sent:
    """One signed payment and everything the center answered to it."""

    envelope: Envelope
    member_id: str
    amount: int
    answers: list[Answer] = field(default_factory=list)
    transport_errors: int = 0
    first: Answer | None = None  # the first definitive answer (200 or 4xx)
    acknowledged_at: float = 0.0

    @property
    def msg_id(self) -> str:
        return json.loads(self.envelope.payload)["msg_id"]


class CrashHarness:
    """CLIENTS threads pay the store (each its own buyer, retrying the same bytes
    until answered) while a killer thread SIGKILLs the center's process group
    KILLS times at random moments and restarts it."""

    def __init__(
        self, center: LiveCenter, buyers: list[tuple[SoftwareSigner, str]], store_id: str, seed: int
    ):
        self.center, self.buyers, self.store_id = center, buyers, store_id
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.sent: list[list[Sent]] = [[] for _ in buyers]
        self.unanswered: list[Sent] = []
        self.kill_times: list[float] = []
        self.restart_times: list[float] = []
        self.errors: list[BaseException] = []
        self.resends_checked = 0

    def run(self) -> float:
        clients = [
            threading.Thread(target=self._guard, args=(self._client, i), daemon=True)
            for i in range(len(self.buyers))
        ]
        killer = threading.Thread(target=self._guard, args=(self._killer,), daemon=True)
        started = time.monotonic()
        for thread in clients:
            thread.start()
        killer.start()
        killer.join(LOAD_DEADLINE_S)
        time.sleep(0.5)  # some calm load after the last restart
        self.stop.set()
        for thread in clients:
            thread.join(REQUEST_DEADLINE_S + 5)
        assert not killer.is_alive() and not any(t.is_alive() for t in clients), (
            "the harness did not finish in time"
        )
        return time.monotonic() - started

    def _guard(self, target, *args) -> None:
        try:
            target(*args)
        except BaseException as error:  # reported by the test
            self.errors.append(error)
            self.stop.set()

    def _killer(self) -> None:
        rng = random.Random(self.rng.random())
        for _ in range(KILLS):
            if self.stop.wait(rng.uniform(0.4, 1.6)):
                return
            self.kill_times.append(time.time())
            self.center.process.stop(signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 0.3))
            self.center.process.start(workers=WORKERS)
            self.restart_times.append(time.time())

    def _client(self, index: int) -> None:
        signer, member_id = self.buyers[index]
        rng = random.Random(self.rng.random())
        timeout = httpx.Timeout(10.0, connect=2.0)
        with httpx.Client(
            base_url=self.center.url, verify=self.center.ssl_context(), timeout=timeout, trust_env=False
        ) as client:
            for n in range(MAX_PAYMENTS_PER_CLIENT):
                if self.stop.is_set():
                    return
                amount = rng.randint(1, 500)
                envelope = signer.envelope(
                    "pay", pay_body(self.store_id, amount, f"K{index}-{n}"), aud=self.center.center_id
                )
                sent = Sent(envelope, member_id, amount)
                self.sent[index].append(sent)
                if not self._send_until_answered(client, sent, rng):
                    self.unanswered.append(sent)
                    return
                sent.first = sent.answers[-1]
                sent.acknowledged_at = time.time()
                # In one of five payments, an immediate resend of the same bytes.
                if rng.random() < 0.2 and not self._send_until_answered(client, sent, rng):
                    self.unanswered.append(sent)
                    return

    def _send_until_answered(self, client: httpx.Client, sent: Sent, rng: random.Random) -> bool:
        """POST the same signed bytes until a definitive answer (200 or 4xx); bounded."""
        deadline = time.monotonic() + REQUEST_DEADLINE_S
        body = sent.envelope.to_json()
        for attempt in range(MAX_ATTEMPTS):
            try:
                response = client.post("/v1/payments", json=body)
                if response.status_code < 500:
                    sent.answers.append(Answer(response.status_code, response.content))
                    return True
            except httpx.TransportError:
                pass
            sent.transport_errors += 1
            if time.monotonic() > deadline:
                return False
            time.sleep(min(0.02 * 1.5**attempt, 0.25) * rng.uniform(0.5, 1.0))
        return False

    # --- after the load --------------------------------------------------------------------

    @property
    def all_sent(self) -> list[Sent]:
        return [s for per_client in self.sent for s in per_client]

    def resend_all_acknowledged(self) -> list[str]:
        """Every acknowledged request once more, after the last restart: the same bytes back."""
        acknowledged = [s for s in self.all_sent if s.first is not None and s.first.status == 200]

        def resend(sent: Sent) -> str | None:
            with httpx.Client(
                base_url=self.center.url, verify=self.center.ssl_context(), timeout=30.0, trust_env=False
            ) as client:
                response = client.post("/v1/payments", json=sent.envelope.to_json())
            if response.status_code != 200 or response.content != sent.first.body:
                return f"{sent.msg_id}: {response.status_code} {response.content[:120]!r}"
            return None

        with ThreadPoolExecutor(8) as pool:
            problems = [p for p in pool.map(resend, acknowledged) if p]
        self.resends_checked += len(acknowledged)
        return problems


def test_center_killed_repeatedly_under_payment_load(tmp_path, crash_db_url, record_property):
    center = LiveCenter.create(tmp_path, crash_db_url)
    center.process.start(workers=WORKERS)
    try:
        with Api(center) as api:
            _, store_id = api.enroll("store", name=STORE_NAME)
            buyers = fund_members(api, CLIENTS, FUNDING)
        harness = CrashHarness(center, buyers, store_id, SEED)
        load_s = harness.run()
        assert not harness.errors, harness.errors
        assert len(harness.kill_times) == KILLS, "the center was not killed as often as planned"
        assert not harness.unanswered, f"{len(harness.unanswered)} request(s) never answered (seed {SEED})"
        check_after_crashes(center, harness, store_id, buyers)

        sent = harness.all_sent
        interrupted = [s for s in sent if s.transport_errors]
        with center.engine().connect() as conn:
            applied_at = dict(
                conn.execute(
                    select(messages.c.msg_id, messages.c.created_at_ms).where(messages.c.msg_type == "pay")
                ).all()
            )
        # Applied before a kill, answered only after the restart: the idempotency record answered the retry.
        recovered = sum(
            1
            for s in interrupted
            if any(applied_at[s.msg_id] / 1000 < k < s.acknowledged_at for k in harness.kill_times)
        )
        figures = {
            "db": center.db_url.split(":")[0],
            "kills": len(harness.kill_times),
            "payments": len(sent),
            "payments_per_s": round(len(sent) / load_s, 1),
            "load_s": round(load_s, 1),
            "requests_interrupted": len(interrupted),
            "answered_from_record_after_kill": recovered,
            "resends_checked": harness.resends_checked,
            "seed": SEED,
        }
        record_property("crash_figures", figures)
        print(f"[crash] {figures}")
        assert interrupted, "no request was in flight when the center was killed: the test proved nothing"
    finally:
        center.close()


def check_after_crashes(center: LiveCenter, harness: CrashHarness, store_id: str, buyers) -> None:
    sent = harness.all_sent
    # Every answer was a receipt: nobody ran out of money, nothing was refused.
    refused = Counter((a.status, a.code) for s in sent for a in s.answers if a.status != 200)
    assert not refused, f"refusals under the crash load: {refused}"
    acknowledged = {s.msg_id: s for s in sent}
    assert len(acknowledged) == len(sent)
    results = {s.msg_id: center.result_of(s.envelope, s.first) for s in sent}

    # Every answer to the same request (retries during the load) is the same bytes.
    for s in sent:
        assert {a.body for a in s.answers} == {s.first.body}, f"{s.msg_id}: different answers to one request"
    # After the last restart, every acknowledged request once more: exactly the original receipt.
    assert harness.resend_all_acknowledged() == []

    with center.engine().connect() as conn:
        rows = {r.id: r for r in conn.execute(select(payments)).all()}
        pay_messages = Counter(
            r.msg_id for r in conn.execute(select(messages.c.msg_id).where(messages.c.msg_type == "pay"))
        )
    # Every acknowledged payment is in the table exactly once, as acknowledged.
    payment_ids = Counter(r["payment_id"] for r in results.values())
    assert set(payment_ids.values()) == {1}
    for msg_id, result in results.items():
        row = rows.get(result["payment_id"])
        assert row is not None, f"acknowledged payment {result['payment_id']} ({msg_id}) is missing"
        s = acknowledged[msg_id]
        assert (row.amount_minor, row.buyer_id, row.store_id) == (s.amount, s.member_id, store_id)
    # Nothing applied that was not acknowledged, nothing applied twice.
    assert len(rows) == len(acknowledged)
    assert pay_messages == Counter(acknowledged.keys())
    assert payment_pairing_problems(center) == []

    spent = Counter()
    for s in sent:
        spent[s.member_id] += s.amount
    for _, member_id in buyers:
        assert center.balance(member_id) == FUNDING - spent[member_id]
        replay = replay_party_in_commit_order(center, member_id)
        assert replay["lowest"] >= 0 and replay["transfers"] == 1 + sum(
            1 for s in sent if s.member_id == member_id
        )
    assert center.balance(store_id) == sum(spent.values())
    center.ledger_check()
    center.audit_verify()


# --- the wallet killed between signing and hearing the answer -------------------------------------------


def test_wallet_killed_between_signing_and_the_answer_then_sync_applies_it_once(tmp_path, make_softhsm_token):
    center = LiveCenter.create(tmp_path, f"sqlite:///{tmp_path / 'center.db'}")
    center.process.start()
    try:
        member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, center.process)
        fund(member, center.process, "5000")
        balance = 5000
        # Each round applies exactly one payment: the rounds before this one applied `paid_before`.
        for paid_before, (mode, amount) in enumerate((("silent", 1200), ("withhold", 700))):
            # Connection 1 looks up the store's registered name; connection 2 carries the signed payment.
            proxy = Relay(center.process.port, lambda number, mode=mode: "pass" if number < 2 else mode)
            try:
                assert member.json("sync", "--center", proxy.url)["delivered"] == []  # only moves the URL
                wallet = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "token_wallet",
                        "pay",
                        "--store",
                        store_id,
                        "--amount",
                        str(amount),
                        "--order",
                        f"KILL-{mode}",
                        "--yes",
                        "--json",
                    ],
                    env=member.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                try:
                    deadline = time.monotonic() + 30
                    while not proxy.stalled.wait(0.05):
                        assert wallet.poll() is None, f"wallet pay ended early: {wallet.communicate()}"
                        assert time.monotonic() < deadline, "the payment never reached the proxy"
                    if mode == "withhold":
                        while count_payments(center.process) != paid_before + 1:
                            assert time.monotonic() < deadline, (
                                "the center never applied the forwarded payment"
                            )
                            time.sleep(0.05)
                    assert wallet.poll() is None, "the wallet must still be waiting for the answer"
                    wallet.send_signal(signal.SIGKILL)
                    wallet.communicate(timeout=10)
                finally:
                    if wallet.poll() is None:
                        wallet.kill()
                        wallet.wait()
                assert wallet.returncode == -signal.SIGKILL
            finally:
                proxy.close()
            assert proxy.connections == 2, f"the wallet opened {proxy.connections} connection(s), expected 2"
            # The signed payment was saved (in the outbox) before it was sent.
            waiting = Vault.open(member.vault, Path(member.files["a"]).read_text().strip()).document()
            assert [entry["type"] for entry in waiting["outbox"]] == ["pay"], "not saved before sending"
            if mode == "silent":
                assert count_payments(center.process) == paid_before, "the silent proxy forwarded it"

            # Killed: the signed payment waits in the vault's outbox (password A is enough to see it).
            outbox = member.json("history", WALLET_PASSWORD_B_FILE="")["outbox"]
            assert [e["type"] for e in outbox] == ["pay"], outbox
            msg_id = outbox[0]["msg_id"]

            synced = member.json("sync", "--center", center.url)
            assert [(d["type"], d["msg_id"]) for d in synced["delivered"]] == [("pay", msg_id)]
            assert synced["pending"] == 0 and synced["refused"] == []
            balance -= amount
            assert synced["delivered"][0]["result"]["balance_minor"] == balance
            assert member.json("sync")["delivered"] == [], "a second sync must deliver nothing"
            assert count_payments(center.process) == paid_before + 1
            assert center.count(messages, messages.c.msg_id == msg_id) == 1
            assert member.json("balance")["balance_minor"] == balance
            assert member.json("history")["outbox"] == []
        pays = [e for e in member.json("history")["entries"] if e["type"] == "pay"]
        assert [e["outcome"] for e in pays] == ["accepted", "accepted"], pays
        center.ledger_check()
        center.audit_verify()
    finally:
        center.close()
