"""Payments benchmark: verified, durably committed payments with signed receipts per second.

    .venv/bin/python bench/bench_payments.py [--db sqlite|postgres|both] [--members 1000]
        [--payments 2000] [--concurrency 32] [--workers 2]

Each result is printed as a ratio to the raw ECDSA P-256 verification rate measured in the same run
on all cores, the baseline the targets of issue 5 are stated in. Everything runs on loopback: a real
`center serve` over HTTPS, requests signed beforehand by in-memory member keys (the client's signing
is not what is measured), sent by an asyncio + httpx client with a bounded number of connections.
Members beyond the paying ones are bulk-inserted filler rows, to see how the cost grows with the
number of enrolled members. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the test helpers start centers and sign requests

import httpx  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from center.db import accounts, keys, parties  # noqa: E402
from stress_support import Api, LiveCenter, pay_body  # noqa: E402
from support import PG_ADMIN_URL, create_pg_database, drop_pg_database  # noqa: E402

VERIFY_SECONDS = 3.0
FILLER_BATCH_ROWS = 5_000
MAX_PAYMENTS = 100_000
BATCH_SIZE = 100  # center.batch.MAX_BATCH_ITEMS
BATCHES_IN_FLIGHT = 4


def verify_worker(seconds: float) -> int:
    key = ec.generate_private_key(ec.SECP256R1())
    message = b"x" * 400
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    public, done, deadline = key.public_key(), 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        done += 100
    return done


def raw_verify_rate() -> float:
    """ECDSA P-256 verifications per second on all cores (one process per core)."""
    cores = os.cpu_count() or 1
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        counts = pool.map(verify_worker, [VERIFY_SECONDS] * cores)
    return sum(counts) / VERIFY_SECONDS


def add_filler_members(center: LiveCenter, count: int) -> None:
    """Enrolled members that never pay: rows as enrollment makes them, inserted in bulk."""
    engine, now, spki = center.engine(), int(time.time() * 1000), b"\x30" * 91
    for start in range(0, count, FILLER_BATCH_ROWS):
        size = min(FILLER_BATCH_ROWS, count - start)
        ids = [f"M-{secrets.token_hex(8)}" for _ in range(size)]
        with engine.begin() as conn:
            conn.execute(insert(parties), [{"id": i, "role": "member", "name": "Filler", "address": "-",
                                            "birth_date": "1990-01-01", "bank_account": None, "status": "active",
                                            "created_at_ms": now} for i in ids])
            conn.execute(insert(keys), [{"kid": secrets.token_hex(32), "party_id": i, "algorithm": "ES256",
                                         "spki": spki, "status": "active", "last_ctr": 1, "created_at_ms": now}
                                        for i in ids])
            conn.execute(insert(accounts), [{"id": f"party:{i}", "kind": "member", "party_id": i, "balance_minor": 0,
                                             "created_at_ms": now} for i in ids])


def presigned_payments(center: LiveCenter, api: Api, store_id: str, payers: int, payments: int) -> list:
    signers = []
    per_payer = -(-payments // payers)
    for _ in range(payers):
        signer, _member = api.enroll()
        api.confirm_by_webhook(api.topup(signer, per_payer * 10), per_payer * 10)
        signers.append(signer)
    envelopes = []
    for index in range(payments):
        signer = signers[index % payers]
        envelopes.append(signer.envelope("pay", pay_body(store_id, 10, f"b-{index}"), aud=center.center_id,
                                         lifetime_s=3600))
    return envelopes


async def send_all(center: LiveCenter, envelopes: list, concurrency: int, rate_per_s: float | None) -> tuple:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue = asyncio.Queue()
    for envelope in envelopes:
        queue.put_nowait(envelope.to_json())
    started = time.monotonic()

    async def worker(client: httpx.AsyncClient, index: int) -> None:
        nonlocal failures
        sent = 0
        while not queue.empty():
            body = queue.get_nowait()
            if rate_per_s:  # open-loop pacing: each worker sends its share of the rate
                due = started + (sent * concurrency + index) / rate_per_s
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            sent += 1
            begin = time.monotonic()
            response = await client.post("/v1/payments", json=body)
            latencies.append(time.monotonic() - begin)
            failures += response.status_code != 200

    async with httpx.AsyncClient(base_url=center.url, verify=center.ssl_context(), limits=limits, timeout=60,
                                 trust_env=False) as client:
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
    return time.monotonic() - started, latencies, failures


async def send_batches(center: LiveCenter, envelopes: list, batch_size: int, in_flight: int) -> tuple:
    """POST the envelopes as batches of `batch_size`, `in_flight` batches at a time; (elapsed, latencies, failures)."""
    bodies = [{"payments": [e.to_json() for e in envelopes[i:i + batch_size]]}
              for i in range(0, len(envelopes), batch_size)]
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    latencies: list[float] = []
    failures = 0
    started = time.monotonic()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while bodies:
            body = bodies.pop()
            begin = time.monotonic()
            response = await client.post("/v1/payments/batch", json=body)
            latencies.append(time.monotonic() - begin)
            if response.status_code != 200:
                failures += len(body["payments"])
                continue
            failures += sum("receipt" not in item for item in response.json()["results"])

    async with httpx.AsyncClient(base_url=center.url, verify=center.ssl_context(), limits=limits, timeout=120,
                                 trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(in_flight)))
    return time.monotonic() - started, latencies, failures


def percentile_ms(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_one(db: str, members: int, payments: int, concurrency: int, workers: int, verify_rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/center.db" if db == "sqlite" else create_pg_database()
        center = LiveCenter.create(Path(tmp), url)
        try:
            center.process.start(workers=workers)
            with Api(center) as api:
                _store_signer, store_id = api.enroll("store", name="Hot Store")
                payers = min(50, max(1, payments // 20))
                add_filler_members(center, max(0, members - payers - 1))
                envelopes = presigned_payments(center, api, store_id, payers, payments)
            third = len(envelopes) // 3
            elapsed, latencies, failures = asyncio.run(send_all(center, envelopes[:third], concurrency, None))
            rate = len(latencies) / elapsed
            _, paced, paced_failures = asyncio.run(send_all(center, envelopes[third:2 * third], concurrency,
                                                            rate / 2))
            batch_elapsed, batch_latencies, batch_failures = asyncio.run(
                send_batches(center, envelopes[2 * third:], BATCH_SIZE, BATCHES_IN_FLIGHT))
            batch_rate = (len(envelopes) - 2 * third) / batch_elapsed
            center.ledger_check()
        finally:
            center.close()
            if db != "sqlite":
                drop_pg_database(url)
    return {"db": db, "members": members, "payments_per_s": rate, "ratio": rate / verify_rate,
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": percentile_ms(latencies, 0.99),
            "p99_half_load_ms": percentile_ms(paced, 0.99), "failures": failures + paced_failures,
            "batch_per_s": batch_rate, "batch_ratio": batch_rate / verify_rate,
            "batch_p99_ms": percentile_ms(batch_latencies, 0.99), "batch_failures": batch_failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--members", type=int, nargs="+", default=[1000])
    parser.add_argument("--payments", type=int, default=3000, help="split in thirds: full load, half load, batches")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not 10 <= args.payments <= MAX_PAYMENTS:
        parser.error(f"--payments must be in [10, {MAX_PAYMENTS}]")
    os.environ.setdefault("TOKENPAY_TEST_PG_URL", PG_ADMIN_URL)
    verify_rate = raw_verify_rate()
    print(f"raw ECDSA P-256 verify, {os.cpu_count()} cores: {verify_rate:,.0f}/s (baseline 1.00)")
    for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
        for members in args.members:
            r = run_one(db, members, args.payments, args.concurrency, args.workers, verify_rate)
            print(f"{r['db']:8} members={r['members']:>9,} single-payment path: {r['payments_per_s']:7.0f}/s "
                  f"= {r['ratio']:.3f} x verify (target 0.08), p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"p99 at half load {r['p99_half_load_ms']:.1f} ms (target < 50), failures {r['failures']}")
            print(f"{r['db']:8} members={r['members']:>9,} batch path ({BATCH_SIZE} per request, {BATCHES_IN_FLIGHT} "
                  f"in flight): {r['batch_per_s']:7.0f}/s = {r['batch_ratio']:.3f} x verify (target 0.20), "
                  f"p99 per batch {r['batch_p99_ms']:.1f} ms, failures {r['batch_failures']}", flush=True)


if __name__ == "__main__":
    main()
