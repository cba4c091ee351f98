"""Read-path benchmark: what members, stores and operators wait for once the books are large.

    .venv/bin/python bench/bench_queries.py [--db sqlite|postgres|both] [--payments 1000000]

Fills a migrated schema with `--payments` payments (and their transfers), a tenth as many top-ups,
members and stores in proportion, refunds and payouts, generated in the database with SQL (fast; the
rows are shaped as the center writes them, balances are not meant to add up), then times the reads
the center serves with its own functions: a member's statement page, a member's balance answer (the
recent top-ups and refunds in it), a store's payment notices, the console's payment list for one
buyer, its pending top-ups and its statistics. Each is printed in milliseconds (median of
REPEATS runs) and as a ratio to a primary-key lookup of one payment measured in the same run: a read
that grows with the books shows a ratio that grows with `--payments`. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The repository and its test helpers (the row generator, throwaway databases), ahead of site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scale_rows import BASELINE, fill, reads
from support import create_pg_database, drop_pg_database

from center.storage.db import make_engine, migrate

REPEATS = 7
MAX_PAYMENTS = 10_000_000


def median_ms(call) -> float:
    call()  # warm: plan cache, pages
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def run(db: str, payments_count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/center.db" if db == "sqlite" else create_pg_database()
        engine = make_engine(url)
        try:
            migrate(engine)
            started = time.perf_counter()
            with engine.begin() as conn:
                sizes = fill(conn, payments_count)
            print(f"{db}: filled {sizes} in {time.perf_counter() - started:.0f} s")
            with engine.connect() as conn:
                timings = {name: median_ms(call) for name, call in reads(conn).items()}
        finally:
            engine.dispose()
            if db != "sqlite":
                drop_pg_database(url)
    baseline = timings[BASELINE]
    for name, ms in timings.items():
        print(
            f"{db:8} payments={payments_count:>9,} {name:42} {ms:9.2f} ms = {ms / baseline:8.1f} x baseline"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--payments", type=int, default=1_000_000)
    args = parser.parse_args()
    if not 1 <= args.payments <= MAX_PAYMENTS:
        parser.error(f"--payments must be 1..{MAX_PAYMENTS:,}")
    for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        run(db, args.payments)


if __name__ == "__main__":
    main()
