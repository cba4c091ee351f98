"""Payments benchmark: verified, durably committed payments with signed receipts per second.

    .venv/bin/python bench/bench_payments.py [--db sqlite|postgres|both] [--members 1000 1000000]
        [--payments 9000] [--concurrency 32] [--workers 2] [--runs 5] [--db-url URL]

`--db-url URL` (a PostgreSQL cluster, e.g. `bash scripts/ha-cluster.sh url postgres`: three nodes, a
synchronous standby) adds a "cluster" case run beside the single PostgreSQL server at
TOKENPAY_TEST_PG_URL, alternating run by run, and prints the cluster's throughput as a ratio to the
single server's in the same invocation: the measured cost of the synchronous standby. Each run
creates its own database on the cluster (through URL's primary) and drops it afterwards.

Each result is printed as a ratio to the raw ECDSA P-256 verification rate on all cores, the
baseline the targets of issues 5 and 13 are stated in, measured again just before each run: on a
shared machine the verify rate moves with the load as much as the payment rates do, and the ratio of
two figures taken together is steadier than either. `--runs` (default 5) repeats each case and
prints the median of the ratios (and of the rates, with their range); the load average is printed
next to every run. Everything runs on loopback: a real
`center serve --workers N` over HTTPS; payments signed beforehand by in-memory member keys (the
client's signing is not what is measured) and sent by wrk (C, epoll; an asyncio + httpx client
topped out near 300 requests/s on this machine, far below the server) with bench/wrk_bodies.lua,
each body exactly once. The payments are split in thirds: one payment per request at full load
(`--concurrency` connections), the same at half that rate (connections pacing themselves), and the
batch path (/v1/payments/batch, 100 payments per request, 4 requests in flight). Afterwards
`center ledger check` must pass and every payment must be in the books. It also prints the CPU time
the center's processes spent per payment (user + system, from /proc; PostgreSQL's own is not
included), the figure to watch when the machine is shared. Members beyond the paying
ones are bulk-inserted filler rows, to see how the cost grows with the number of enrolled members.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The repository and its test helpers (they start centers and sign requests), ahead of site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import insert
from stress_support import Api, LiveCenter, pay_body
from support import PG_ADMIN_URL, create_pg_database, drop_pg_database

from center.storage.db import accounts, keys, parties
from center.storage.db import payments as payments_table

ROOT = Path(__file__).resolve().parents[1]

VERIFY_SECONDS = 3.0
FILLER_BATCH_ROWS = 5_000
MAX_PAYMENTS = 100_000
BATCH_SIZE = 100  # center.pipeline.batch.MAX_BATCH_ITEMS
BATCHES_IN_FLIGHT = 4
WRK_THREADS = 2
# SQLite takes one writer at a time and a waiting process sleeps in SQLite's busy handler: a second
# worker process only adds lock waits (measured: p99 1.5-6.6 s with 2 workers, 0.13 s with 1).
DEFAULT_WORKERS = {"sqlite": 1, "postgres": 2}
WRK_MAX_SECONDS = 900
MAX_RUNS = 20
# --db-url: the "cluster" case's admin URL (databases are made and dropped through it).
CLUSTER_URL: dict[str, str] = {}


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
            conn.execute(
                insert(parties),
                [
                    {
                        "id": i,
                        "role": "member",
                        "name": "Filler",
                        "address": "-",
                        "birth_date": "1990-01-01",
                        "bank_account": None,
                        "status": "active",
                        "created_at_ms": now,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                insert(keys),
                [
                    {
                        "kid": secrets.token_hex(32),
                        "party_id": i,
                        "algorithm": "ES256",
                        "spki": spki,
                        "status": "active",
                        "last_ctr": 1,
                        "created_at_ms": now,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                insert(accounts),
                [
                    {
                        "id": f"party:{i}",
                        "kind": "member",
                        "party_id": i,
                        "balance_minor": 0,
                        "created_at_ms": now,
                    }
                    for i in ids
                ],
            )


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
        envelopes.append(
            signer.envelope(
                "pay", pay_body(store_id, 10, f"b-{index}"), aud=center.center_id, lifetime_s=3600
            )
        )
    return envelopes


def write_bodies(path: Path, bodies: list[dict]) -> None:
    path.write_text("".join(json.dumps(body, separators=(",", ":")) + "\n" for body in bodies))


def run_wrk(center: LiveCenter, route: str, bodies_file: Path, connections: int, delay_ms: int) -> dict:
    """Send every body once with wrk (C, epoll: the client must not be what is measured)."""
    threads = min(WRK_THREADS, connections)
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{WRK_MAX_SECONDS}s",
        "--timeout",
        "60s",
        "-s",
        str(ROOT / "bench" / "wrk_bodies.lua"),
        center.url,
        "--",
        route,
        str(bodies_file),
        str(threads),
        str(delay_ms),
    ]
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output, finished_threads = [], 0
    for line in wrk.stdout:  # wrk sleeps for all of -d; interrupt it once every thread is done
        output.append(line)
        finished_threads += line.strip() == "thread finished"
        if finished_threads == threads:
            wrk.send_signal(signal.SIGINT)
    wrk.wait(timeout=60)
    lines = [line for line in output if line.startswith("{")]
    if not lines:
        raise SystemExit(
            f"wrk failed ({wrk.returncode}): {wrk.stderr.read().strip() or ''.join(output)[-500:]}"
        )
    result = json.loads(lines[-1])
    if result["answers"] != result["bodies"]:
        raise SystemExit(
            f"wrk got {result['answers']} answers to {result['bodies']} bodies within {WRK_MAX_SECONDS} s"
        )
    return result


def process_group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group (the center)."""
    total_ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # the process ended meanwhile
        if int(fields[2]) == pgid:  # fields after "(comm)": state, ppid, pgrp, ... utime (12th), stime (13th)
            total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / os.sysconf("SC_CLK_TCK")


def run_measured(
    center: LiveCenter, route: str, bodies_file: Path, connections: int, delay_ms: int, payments: int
) -> dict:
    """run_wrk, plus the center's CPU time per payment (all its worker processes; not PostgreSQL's)."""
    pgid = center.process.process.pid
    before_s = process_group_cpu_s(pgid)
    result = run_wrk(center, route, bodies_file, connections, delay_ms)
    result["center_cpu_ms_per_payment"] = 1000 * (process_group_cpu_s(pgid) - before_s) / payments
    return result


def run_one(db: str, members: int, payments: int, connections: int, workers: int) -> dict:
    verify_rate = raw_verify_rate()  # this run's own baseline (see the module docstring)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/center.db" if db == "sqlite" else create_pg_database(CLUSTER_URL.get(db))
        center = LiveCenter.create(Path(tmp), url)
        try:
            center.process.start(workers=workers)
            with Api(center) as api:
                _store_signer, store_id = api.enroll("store", name="Hot Store")
                payers = min(50, max(1, payments // 20))
                add_filler_members(center, max(0, members - payers - 1))
                envelopes = presigned_payments(center, api, store_id, payers, payments)
            third = len(envelopes) // 3
            full_file, half_file, batch_file = (
                Path(tmp) / name for name in ("full.jsonl", "half.jsonl", "batch.jsonl")
            )
            write_bodies(full_file, [e.to_json() for e in envelopes[:third]])
            write_bodies(half_file, [e.to_json() for e in envelopes[third : 2 * third]])
            batched = envelopes[2 * third :]
            write_bodies(
                batch_file,
                [
                    {"payments": [e.to_json() for e in batched[i : i + BATCH_SIZE]]}
                    for i in range(0, len(batched), BATCH_SIZE)
                ],
            )
            full = run_measured(center, "/v1/payments", full_file, connections, 0, third)
            rate = full["bodies"] / (full["duration_us"] / 1e6)
            # Half load: each connection waits between requests so that together they offer half
            # the rate measured above (closed loop with think time; slightly under half).
            half = run_wrk(center, "/v1/payments", half_file, connections, int(connections * 2000 / rate))
            batch = run_measured(center, "/v1/payments/batch", batch_file, BATCHES_IN_FLIGHT, 0, len(batched))
            batch_rate = len(batched) / (batch["duration_us"] / 1e6)
            center.ledger_check()
            committed = center.count(payments_table)
        finally:
            center.close()
            if db != "sqlite":
                drop_pg_database(url, CLUSTER_URL.get(db))
    assert committed == len(envelopes), f"{committed} payments committed, {len(envelopes)} sent"
    return {
        "db": db,
        "verify_per_s": verify_rate,
        "load_avg": (load_before, os.getloadavg()[0]),
        "members": members,
        "workers": workers,
        "payments_per_s": rate,
        "ratio": rate / verify_rate,
        "p50_ms": full["p50_us"] / 1000,
        "p99_ms": full["p99_us"] / 1000,
        "p99_half_load_ms": half["p99_us"] / 1000,
        "half_load_per_s": half["bodies"] / (half["duration_us"] / 1e6),
        "failures": full["non_200"] + half["non_200"],
        "batch_per_s": batch_rate,
        "batch_ratio": batch_rate / verify_rate,
        "half_load_ratio": half["bodies"] / (half["duration_us"] / 1e6) / verify_rate,
        "batch_p99_ms": batch["p99_us"] / 1000,
        "batch_failures": batch["non_200"],
        "cpu_ms": full["center_cpu_ms_per_payment"],
        "batch_cpu_ms": batch["center_cpu_ms_per_payment"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--members", type=int, nargs="+", default=[1000])
    parser.add_argument(
        "--payments", type=int, default=9000, help="split in thirds: full load, half load, batches"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5, help="repeat each case; prints the medians and ranges")
    parser.add_argument(
        "--workers", type=int, default=None, help=f"center serve --workers (default: {DEFAULT_WORKERS})"
    )
    parser.add_argument(
        "--db-url",
        default=None,
        help="a PostgreSQL cluster's URL (several hosts allowed): measured beside the single server",
    )
    args = parser.parse_args()
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be in [1, {MAX_RUNS}]")
    if not 10 <= args.payments <= MAX_PAYMENTS:
        parser.error(f"--payments must be in [10, {MAX_PAYMENTS}]")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `bash scripts/setup.sh` (or apt-get install wrk)")
    os.environ.setdefault("TOKENPAY_TEST_PG_URL", PG_ADMIN_URL)
    if args.db_url is not None:
        CLUSTER_URL["cluster"] = args.db_url
        DEFAULT_WORKERS["cluster"] = DEFAULT_WORKERS["postgres"]
        compare_cluster(args)
        return
    for db in ["sqlite", "postgres"] if args.db == "both" else [args.db]:
        for members in args.members:
            runs = []
            for _ in range(args.runs):
                runs.append(
                    run_one(
                        db,
                        members,
                        args.payments,
                        args.concurrency,
                        args.workers or DEFAULT_WORKERS[db],
                    )
                )
                print_run(runs[-1])
            if args.runs > 1:
                print_spread(runs)


def compare_cluster(args) -> None:
    """The single server and the cluster, alternating run by run (the machine's load moves: runs taken
    side by side are compared), then the ratio of their medians."""
    members = args.members[0]
    runs: dict[str, list[dict]] = {"postgres": [], "cluster": []}
    for _ in range(args.runs):
        for db in runs:
            runs[db].append(
                run_one(db, members, args.payments, args.concurrency, args.workers or DEFAULT_WORKERS[db])
            )
            print_run(runs[db][-1])
    for db_runs in runs.values():
        if args.runs > 1:
            print_spread(db_runs)
    for label, key in (("single-payment path", "payments_per_s"), ("batch path", "batch_per_s")):
        single = statistics.median(r[key] for r in runs["postgres"])
        cluster = statistics.median(r[key] for r in runs["cluster"])
        print(
            f"cluster (synchronous standby) / single server, {label}: {cluster:,.0f}/s / {single:,.0f}/s "
            f"= {cluster / single:.2f} (medians of {args.runs} runs each)",
            flush=True,
        )


def run_label(r: dict) -> str:
    """The start of every line about one run: database, workers, members."""
    return f"{r['db']:8} workers={r['workers']} members={r['members']:>9,}"


def print_run(r: dict) -> None:
    print(
        f"{run_label(r)} raw ECDSA P-256 verify, {os.cpu_count()} cores: {r['verify_per_s']:,.0f}/s "
        f"(baseline 1.00); load average {r['load_avg'][0]:.2f} before, {r['load_avg'][1]:.2f} after"
    )
    print(
        f"{run_label(r)} single-payment path: {r['payments_per_s']:7.0f}/s "
        f"= {r['ratio']:.3f} x verify (target 0.08), p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
        f"p99 at half load ({r['half_load_per_s']:.0f}/s) {r['p99_half_load_ms']:.1f} ms (target < 50), "
        f"center CPU {r['cpu_ms']:.2f} ms/payment, failures {r['failures']}"
    )
    print(
        f"{run_label(r)} batch path ({BATCH_SIZE} per request, {BATCHES_IN_FLIGHT} "
        f"in flight): {r['batch_per_s']:7.0f}/s = {r['batch_ratio']:.3f} x verify (target 0.20), "
        f"p99 per batch {r['batch_p99_ms']:.1f} ms, center CPU {r['batch_cpu_ms']:.2f} ms/payment, "
        f"failures {r['batch_failures']}",
        flush=True,
    )


def print_spread(runs: list[dict]) -> None:
    """Medians and ranges over the runs: one run is not a figure (the spread here is about +-20 %)."""
    first = runs[0]
    for label, key, unit, ratio_key, target in (
        ("raw verify", "verify_per_s", "/s", None, ""),
        ("single-payment path", "payments_per_s", "/s", "ratio", " (target 0.08)"),
        ("p99 at half load", "p99_half_load_ms", " ms", "half_load_ratio", " (target < 50 ms)"),
        ("batch path", "batch_per_s", "/s", "batch_ratio", " (target 0.20)"),
        ("center CPU, single", "cpu_ms", " ms/payment", None, ""),
        ("center CPU, batch", "batch_cpu_ms", " ms/payment", None, ""),
    ):
        values = sorted(r[key] for r in runs)
        ratio = ""
        if ratio_key is not None:
            ratios = sorted(r[ratio_key] for r in runs)
            what = "at" if key == "p99_half_load_ms" else "="
            ratio = (
                f" {what} median {statistics.median(ratios):.3f} x verify ({ratios[0]:.3f}-{ratios[-1]:.3f})"
            )
        print(
            f"{run_label(first)} {label}, {len(runs)} runs: median {statistics.median(values):,.1f}{unit}"
            f"{ratio}, range {values[0]:,.1f}-{values[-1]:,.1f}{unit}{target}"
        )
    loads = [load for r in runs for load in r["load_avg"]]
    print(f"{run_label(first)} load average during the runs: {min(loads):.2f}-{max(loads):.2f}", flush=True)


if __name__ == "__main__":
    main()
