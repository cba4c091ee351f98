"""Helpers for the stress and crash-safety tests: a real center process on
SQLite or PostgreSQL, a pinned HTTPS client, funding, concurrent sending, and
the database-level checks (ledger replay in commit order, payment/transfer
pairing). Plain functions and classes; the fixtures live in the test files.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import Engine, create_engine, func, select
from support import CenterProcess, SoftwareSigner, free_port, run_cli

from center.ledger.book import party_account
from center.ledger.funding import webhook_signature
from center.storage.db import accounts, audit_log, normalise_url, payments, transfers
from paywire.center_cert import CenterIdentity, read_center_certificate
from paywire.envelope import Envelope
from paywire.receipts import check_receipt
from token_wallet.client import pinned_ssl_context

CURRENCY = "JPY"
STORE_NAME = "Hot Store"


@dataclass
class Answer:
    """One HTTP answer to one signed request."""

    status: int
    body: bytes
    elapsed_s: float = 0.0

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        document = self.json
        return document.get("error", {}).get("code") if isinstance(document, dict) else None


@dataclass
class LiveCenter:
    """A center made by `center init` and served by `center serve --workers N` over HTTPS."""

    process: CenterProcess
    db_url: str
    identity: CenterIdentity
    _engine: Engine | None = None
    _ssl = None

    @classmethod
    def create(cls, root: Path, db_url: str) -> LiveCenter:
        data_dir = root / "center"
        result = run_cli(
            "center", ["init", "--data-dir", str(data_dir), "--db", db_url, "--currency", CURRENCY]
        )
        assert result.returncode == 0, result.stderr
        process = CenterProcess(data_dir=data_dir, port=free_port())
        return cls(
            process=process, db_url=db_url, identity=read_center_certificate(process.cert.read_bytes())
        )

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def data_dir(self) -> Path:
        return self.process.data_dir

    @property
    def center_id(self) -> str:
        return self.identity.center_id

    def ssl_context(self):
        if self._ssl is None:
            self._ssl = pinned_ssl_context(self.identity.cert_pem)
        return self._ssl

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(normalise_url(self.db_url))
        return self._engine

    def close(self) -> None:
        self.process.stop()
        if self._engine is not None:
            self._engine.dispose()

    # --- the operator's command line ------------------------------------------------

    def cli(self, *args: str, ok: bool = True) -> dict:
        result = run_cli("center", [*args, "--data-dir", str(self.data_dir), "--json"])
        if ok:
            assert result.returncode == 0, f"center {' '.join(args)}: {result.stdout}{result.stderr}"
        return json.loads(result.stdout)

    def ledger_check(self) -> dict:
        report = self.cli("ledger", "check")
        assert report["ok"] is True and report["problems"] == [] and report["total_minor"] == 0, report
        return report

    def audit_verify(self) -> dict:
        report = self.cli("audit", "verify")
        assert report["ok"] is True, report
        return report

    # --- receipts --------------------------------------------------------------------

    def result_of(self, request: Envelope, answer: Answer) -> dict:
        """Verify the receipt against the key named by the pinned certificate; return its result."""
        assert answer.status == 200, (answer.status, answer.body[:300])
        receipt = answer.json["receipt"]
        body = check_receipt(
            receipt,
            center_spki=self.identity.receipt_spki,
            center_alg=self.identity.receipt_alg,
            request=request,
            center_id=self.identity.center_id,
        )
        assert Envelope.from_json(receipt["tree_head"]).kid == self.identity.receipt_kid
        assert body["for_kid"] == request.kid and body["for_msg_id"] == json.loads(request.payload)["msg_id"]
        assert body["log"] is not None  # a log receipt: entry, inclusion proof, signed tree head
        return body["result"]

    # --- database facts ----------------------------------------------------------------

    def balance(self, party_id: str) -> int:
        with self.engine().connect() as conn:
            return conn.execute(
                select(accounts.c.balance_minor).where(accounts.c.id == party_account(party_id))
            ).scalar_one()

    def count(self, table, *where) -> int:
        with self.engine().connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

    def webhook_secret(self) -> bytes:
        return (self.data_dir / "secrets" / "webhook-secret").read_bytes().strip()


def endpoint(msg_type: str) -> str:
    return {"enroll": "/v1/enroll", "topup": "/v1/topups", "pay": "/v1/payments", "balance": "/v1/balance"}[
        msg_type
    ]


class Api:
    """A synchronous pinned HTTPS client for set-up steps."""

    def __init__(self, center: LiveCenter, timeout_s: float = 60.0):
        self.center = center
        self.client = httpx.Client(
            base_url=center.url, verify=center.ssl_context(), timeout=timeout_s, trust_env=False
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_exc) -> None:
        self.client.close()

    def post(self, path: str, envelope: Envelope) -> Answer:
        started = time.monotonic()
        response = self.client.post(path, json=envelope.to_json())
        return Answer(response.status_code, response.content, time.monotonic() - started)

    def submit(self, signer: SoftwareSigner, msg_type: str, body: dict) -> dict:
        request = signer.envelope(msg_type, body, aud=self.center.center_id)
        return self.center.result_of(request, self.post(endpoint(msg_type), request))

    def enroll(self, role: str = "member", **fields) -> tuple[SoftwareSigner, str]:
        signer = SoftwareSigner()
        request = enrollment(self.center, signer, role, **fields)
        return signer, self.center.result_of(request, self.post("/v1/enroll", request))["member_id"]

    def topup(self, signer: SoftwareSigner, amount_minor: int) -> str:
        result = self.submit(
            signer, "topup", {"amount_minor": amount_minor, "currency": CURRENCY, "method": "bank"}
        )
        assert result["status"] == "pending"
        return result["topup_id"]

    def confirm_by_operator(self, topup_id: str) -> None:
        """`center operator confirm-topup ID --data-dir D`, the operator's console."""
        assert self.center.cli("operator", "confirm-topup", topup_id)["status"] == "confirmed"

    def confirm_by_webhook(self, topup_id: str, amount_minor: int) -> None:
        """The funding company's signed webhook (fast enough to confirm dozens of top-ups)."""
        body = json.dumps(
            {
                "topup_id": topup_id,
                "decision": "confirm",
                "amount_minor": amount_minor,
                "reference": f"bank-{topup_id}",
            }
        ).encode()
        timestamp = str(int(time.time()))
        response = self.client.post(
            "/v1/funding/webhook",
            content=body,
            headers={
                "content-type": "application/json",
                "x-tokenpay-timestamp": timestamp,
                "x-tokenpay-signature": "sha256="
                + webhook_signature(self.center.webhook_secret(), timestamp, body),
            },
        )
        assert response.status_code == 200 and response.json()["status"] == "confirmed", response.text


def enrollment(center: LiveCenter, signer: SoftwareSigner, role: str = "member", **fields) -> Envelope:
    return signer.envelope("enroll", signer.enroll_body(role, **fields), aud=center.center_id)


def pay_body(store_id: str, amount_minor: int, order_ref: str, payee_name: str = STORE_NAME) -> dict:
    return {
        "payee": store_id,
        "payee_name": payee_name,
        "amount_minor": amount_minor,
        "currency": CURRENCY,
        "order_ref": order_ref,
    }


def send_concurrently(
    center: LiveCenter,
    requests: list[tuple[str, Envelope]],
    *,
    connections: int = 48,
    timeout_s: float = 120.0,
) -> tuple[list[Answer], float]:
    """POST every (path, envelope) with `connections` requests in flight at once (asyncio + httpx).

    The envelopes are signed before this is called: the concurrent phase only
    sends bytes. Returns the answers in request order and the wall time."""

    async def run() -> list[Answer]:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        gate = asyncio.Semaphore(connections)
        async with httpx.AsyncClient(
            base_url=center.url,
            verify=center.ssl_context(),
            limits=limits,
            timeout=timeout_s,
            trust_env=False,
        ) as client:

            async def one(path: str, envelope: Envelope) -> Answer:
                async with gate:
                    started = time.monotonic()
                    try:
                        response = await client.post(path, json=envelope.to_json())
                    except httpx.TransportError as error:
                        # No answer at all: status 0, kept for the assertion.
                        return Answer(
                            0,
                            json.dumps(
                                {
                                    "error": {
                                        "code": f"transport:{type(error).__name__}",
                                        "message": str(error),
                                    }
                                }
                            ).encode(),
                            time.monotonic() - started,
                        )
                    return Answer(response.status_code, response.content, time.monotonic() - started)

            return await asyncio.gather(*(one(path, envelope) for path, envelope in requests))

    started = time.monotonic()
    answers = asyncio.run(asyncio.wait_for(run(), timeout=timeout_s))
    return answers, time.monotonic() - started


def fund_members(api: Api, count: int, amount_minor: int) -> list[tuple[SoftwareSigner, str]]:
    """Enroll `count` members concurrently, top each up and confirm by webhook."""
    center = api.center
    signers = [SoftwareSigner() for _ in range(count)]
    requests = [enrollment(center, s, "member", name=f"Buyer {i}") for i, s in enumerate(signers)]
    answers, _ = send_concurrently(center, [("/v1/enroll", r) for r in requests], connections=16)
    members = [
        (s, center.result_of(r, a)["member_id"]) for s, r, a in zip(signers, requests, answers, strict=True)
    ]
    topup_requests = [
        s.envelope(
            "topup",
            {"amount_minor": amount_minor, "currency": CURRENCY, "method": "bank"},
            aud=center.center_id,
        )
        for s, _ in members
    ]
    answers, _ = send_concurrently(center, [("/v1/topups", r) for r in topup_requests], connections=16)
    for request, answer in zip(topup_requests, answers, strict=True):
        api.confirm_by_webhook(center.result_of(request, answer)["topup_id"], amount_minor)
    return members


# --- checks on the database -------------------------------------------------------------


def replay_party_in_commit_order(center: LiveCenter, party_id: str) -> dict:
    """Replay every transfer that touches the party's account in commit order and
    check the running balance never went below zero.

    Commit order is the audit chain's order: each accepted request appends its
    entry inside the transaction that moved the money, holding the chain head's
    row lock until commit. Every transfer touching the party must be reached
    exactly once through an audit entry (a pay entry names its payment id, a
    top-up decision names the top-up id)."""
    account = party_account(party_id)
    with center.engine().connect() as conn:
        touching = conn.execute(
            select(transfers).where(
                (transfers.c.debit_account == account) | (transfers.c.credit_account == account)
            )
        ).all()
        entries = conn.execute(
            select(audit_log.c.seq, audit_log.c.msg_type, audit_log.c.msg_id, audit_log.c.action).order_by(
                audit_log.c.seq
            )
        ).all()
        final = conn.execute(select(accounts.c.balance_minor).where(accounts.c.id == account)).scalar_one()
    by_ref: dict[str, list] = {}
    for row in touching:
        by_ref.setdefault(row.ref, []).append(row)
    running, lowest, seen = 0, 0, Counter()
    for entry in entries:
        action = json.loads(entry.action)
        ref = (
            action.get("payment_id")
            if entry.msg_type == "pay"
            else (
                entry.msg_id
                if entry.msg_type.startswith("topup_")
                else action.get("refund_id") or action.get("payout_id")
            )
        )
        for row in by_ref.get(ref, ()):
            seen[row.id] += 1
            if row.debit_account == account:
                running -= row.amount_minor
            if row.credit_account == account:
                running += row.amount_minor
            lowest = min(lowest, running)
            assert running >= 0, f"after audit entry {entry.seq} the balance of {party_id} would be {running}"
    assert set(seen) == {row.id for row in touching} and set(seen.values()) <= {1}, (
        "a transfer touching the party is not covered exactly once by the audit chain"
    )
    assert running == final, (running, final)
    return {"transfers": len(touching), "lowest": lowest, "final": final}


def payment_pairing_problems(center: LiveCenter) -> list[str]:
    """Every payment row has exactly one payment transfer, with its amount, buyer and store; and
    vice versa."""
    problems = []
    with center.engine().connect() as conn:
        rows = conn.execute(select(payments)).all()
        moved = conn.execute(select(transfers).where(transfers.c.kind == "payment")).all()
    by_ref: dict[str, list] = {}
    for transfer in moved:
        by_ref.setdefault(transfer.ref, []).append(transfer)
    for payment in rows:
        found = by_ref.pop(payment.id, [])
        if len(found) != 1:
            problems.append(f"payment {payment.id} has {len(found)} payment transfers")
            continue
        t = found[0]
        if (t.amount_minor, t.debit_account, t.credit_account) != (
            payment.amount_minor,
            party_account(payment.buyer_id),
            party_account(payment.store_id),
        ):
            problems.append(f"payment {payment.id}: transfer {t.id} does not match it")
    problems.extend(
        f"payment transfer(s) {[t.id for t in ts]} for unknown payment {ref}" for ref, ts in by_ref.items()
    )
    return problems
