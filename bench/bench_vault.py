"""Vault benchmark: the record store (v2) at 1,000 / 100,000 / 1,000,000 payments, against the
single-file format (v1) measured in the same run where v1 still works.

    .venv/bin/python bench/bench_vault.py [--sizes 1000,100000,1000000] [--v1-sizes 1000,10000]
                                          [--runs 21] [--work-dir /tmp/tokenpay-bench-vault]

A payment leaves two records: a history entry shaped like token_wallet.document.add_history's
(~0.3 KB) and a receipt record shaped like the wallet's (message id; the log receipt with a 20-hash
proof and the signed tree head, 2,128 B as bench_receipts builds it; the "log" facts: ~2.4 KB),
with random base64 content. A v2 vault of N payments is built with Vault.create (MINIMUM_KDF) and
saves of BATCH_PAYMENTS payments each, and cached in --work-dir as v2-<N>.tpv so reruns skip the
build (each run adds its timed payments to it).
v1 vaults are written fresh each run with VaultV1.create (its whole document in one sealed file).

Per size it prints (medians of --runs runs; the machine is shared, so v1 and v2 run in one process):
- open beyond KDF: Vault.open's path with the Argon2id derivation taken out: Vault._open_with_keys
  with keys derived beforehand (connect, schema and header check, key unwrap, state decrypt, record
  counts). As a cross-check, median(Vault.open) - median(derive_keys alone, same parameters).
- one payment's vault work, as `wallet pay` does it in a fresh process: open (not timed), then save 1
  with the outbox entry added (Wallet.sign_and_queue), then save 2 with the history entry and
  receipt appended and the outbox entry removed (Wallet._deliver_one); the time of the two saves,
  median and p90.
- a history page of 50: page(50) (newest) and page(50, since_ms=...) in the middle (bisection).
- the file size: the .tpv plus its -wal, after the timed payments and one more, before close.
Not part of the test suite. Page cache warm (the same files are read again and again).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hostkit.sealing import MINIMUM_KDF, derive_keys
from token_wallet import vault_store as store
from token_wallet.document import add_history
from token_wallet.vault import Vault
from token_wallet.vault_base import password_a_bytes
from token_wallet.vault_v1 import FILE_MAX_BYTES as V1_FILE_MAX_BYTES
from token_wallet.vault_v1 import VaultV1

PASSWORD_A = "bench password A"
BATCH_PAYMENTS = 10_000
SIZE_MAX = 10_000_000
# Payments one every 30 s from Nov 2023: a million end in 2024, before any payment timed now.
START_MS = 1_700_000_000_000
STEP_MS = 30_000
PROOF_HASHES = 20  # a log of ~1M entries
TREE_HEAD_PAYLOAD_BYTES = 477  # a real tree head payload (canonical JSON) at a 1M-entry log
PAY_PAYLOAD_BYTES = 346  # a real pay request payload
MEMBER_KID = "3f" * 32
CENTER_KID = "a1" * 32
TARGET_PAY_MS = 20.0
TARGET_OPEN_MS = 50.0
FLAT_RATIO_MAX = 1.5  # "flat" from 100,000 to 1,000,000: median work grows less than this


# --- what a payment writes --------------------------------------------------------------------------


def _b64url(size_bytes: int) -> str:
    return base64.urlsafe_b64encode(os.urandom(size_bytes)).rstrip(b"=").decode("ascii")


def _msg_id() -> str:
    return os.urandom(16).hex()


def pay_details(seq: int) -> dict:
    """The center's pay result the wallet keeps as the history entry's details (~250 bytes)."""
    return {
        "action": "paid",
        "payment_id": f"P-{os.urandom(8).hex()}",
        "amount_minor": 100 + seq % 5000,
        "balance_minor": 1_000_000 - seq % 900_000,
        "currency": "JPY",
        "payee": "S-0123456789abcdef",
        "payee_name": "Corner Shop",
        "order_ref": f"order-{seq:010d}",
        "created_at_ms": START_MS + seq * STEP_MS,
    }


def history_entry(seq: int, msg_id: str) -> dict:
    return {
        "at_ms": START_MS + seq * STEP_MS,
        "type": "pay",
        "msg_id": msg_id,
        "outcome": "accepted",
        "details": pay_details(seq),
    }


def receipt_record(seq: int, msg_id: str, at_ms: int) -> dict:
    """What Wallet._deliver_one appends to doc["receipts"] for an accepted payment."""
    receipt = {
        "format": "tokenpay-log-receipt",
        "v": 1,
        "entry": {
            "seq": seq,
            "created_at_ms": at_ms,
            "kid": MEMBER_KID,
            "alg": "ES256",
            "msg_type": "pay",
            "msg_id": msg_id,
            "action": {
                "action": "paid",
                "payment_id": f"P-{os.urandom(8).hex()}",
                "amount_minor": 100 + seq % 5000,
                "balance_minor": 1_000_000 - seq % 900_000,
            },
        },
        "proof": [_b64url(32) for _ in range(PROOF_HASHES)],
        "tree_head": {
            "payload": _b64url(TREE_HEAD_PAYLOAD_BYTES),
            "alg": "ES256",
            "kid": CENTER_KID,
            "sig": _b64url(71),
        },
    }
    log = {
        "index": seq - 1,
        "leaf_hash": os.urandom(32).hex(),
        "tree_size": seq,
        "root_hash": os.urandom(32).hex(),
    }
    return {"msg_id": msg_id, "type": "pay", "receipt": receipt, "log": log}


def outbox_entry(msg_id: str) -> dict:
    """What Wallet.sign_and_queue puts in the outbox: the signed request envelope."""
    return {
        "msg_id": msg_id,
        "type": "pay",
        "envelope": {
            "payload": _b64url(PAY_PAYLOAD_BYTES),
            "alg": "ES256",
            "kid": MEMBER_KID,
            "sig": _b64url(71),
        },
        "queued_at_ms": time.time_ns() // 1_000_000,
        "attempts": 0,
    }


def core_document() -> dict:
    """A wallet document without records (token_wallet.document.new_document, enrolled)."""
    return {
        "version": 1,
        "token": {"kind": "software", "path": "/home/member/.tokenpay/token.json"},
        "key": {
            "algorithm": "ES256",
            "wrapped": _b64url(200),
            "spki": _b64url(91),
            "created_at_ms": START_MS,
        },
        "kid": MEMBER_KID,
        "counter": 0,
        "center": {
            "center_id": "center.example",
            "url": "https://center.example:8443",
            "certificate": _b64url(700),
            "spki": _b64url(91),
            "alg": "ES256",
            "currency": "JPY",
        },
        "member_id": "B-0123456789abcdef",
        "role": "buyer",
        "balance_minor": 1_000_000,
        "history": [],
        "receipts": [],
        "outbox": [],
        "topups": {},
        "notices": [],
        "notices_cursor": 0,
        "history_at_ms": 0,
        "credit_totals": {"paid_minor": 0, "refunded_minor": 0},
    }


def append_payments(doc: dict, first_seq: int, count: int) -> None:
    """Payments first_seq.. as the wallet records them (history times rise: STEP_MS apart)."""
    for seq in range(first_seq, first_seq + count):
        msg_id = _msg_id()
        entry = history_entry(seq, msg_id)
        doc["history"].append(entry)
        doc["receipts"].append(receipt_record(seq, msg_id, entry["at_ms"]))
        doc["counter"] = seq
        doc["history_at_ms"] = entry["at_ms"]
        doc["credit_totals"]["paid_minor"] += entry["details"]["amount_minor"]


# --- building -----------------------------------------------------------------------------------


def v2_path(work_dir: Path, size: int) -> Path:
    return work_dir / f"v2-{size}.tpv"


def files_of(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def build_v2(work_dir: Path, size: int) -> float | None:
    """The cached vault of `size` payments, built if missing; the build's seconds (None if cached)."""
    path = v2_path(work_dir, size)
    if path.exists():
        return None
    building = work_dir / f"v2-{size}.building.tpv"
    for stale in files_of(building):
        stale.unlink(missing_ok=True)  # a build that was interrupted
    started = time.perf_counter()
    vault = Vault.create(building, PASSWORD_A, core_document(), kdf=MINIMUM_KDF)
    try:
        for first in range(1, size + 1, BATCH_PAYMENTS):
            append_payments(vault.data, first, min(BATCH_PAYMENTS, size + 1 - first))
            vault.save()
            if size >= 100_000 and (first - 1) % 100_000 == 0:
                print(f"  ... {first - 1:,} of {size:,} payments", file=sys.stderr)
    finally:
        vault.close()
    elapsed_s = time.perf_counter() - started
    os.rename(building, path)  # closed: SQLite has folded the journal in and removed it
    return elapsed_s


def write_v1(work_dir: Path, size: int) -> Path:
    path = work_dir / f"v1-{size}.tpv"
    for suffix in ("", ".prev", ".tmp"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    doc = core_document()
    append_payments(doc, 1, size)
    VaultV1.create(path, PASSWORD_A, doc, kdf=MINIMUM_KDF)
    return path


# --- measuring ----------------------------------------------------------------------------------


def _ms(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e6


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def measure_open(path: Path, runs: int) -> dict:
    """Open path without the KDF, Vault.open whole and the KDF alone, interleaved run by run."""
    vault = Vault.open(path, PASSWORD_A)
    keys = vault._keys  # the bench's own vault: what the derivation yields, to time the path after it
    vault.close()
    password = password_a_bytes(PASSWORD_A)
    beyond, whole, kdf = [], [], []
    for _ in range(runs):
        start = time.perf_counter_ns()
        Vault._open_with_keys(path, keys).close()
        beyond.append(_ms(start))
        start = time.perf_counter_ns()
        Vault.open(path, PASSWORD_A).close()
        whole.append(_ms(start))
        start = time.perf_counter_ns()
        derive_keys(password, keys.kdf, keys.salt)
        kdf.append(_ms(start))
    return {
        "beyond_ms": statistics.median(beyond),
        "whole_ms": statistics.median(whole),
        "kdf_ms": statistics.median(kdf),
        "subtracted_ms": statistics.median(whole) - statistics.median(kdf),
    }


def measure_v1_open(path: Path, runs: int) -> float:
    """VaultV1.open minus the KDF alone (v1 has no path without the KDF to time directly)."""
    vault = VaultV1.open(path, PASSWORD_A)
    keys, password = vault.keys, password_a_bytes(PASSWORD_A)
    whole, kdf = [], []
    for _ in range(runs):
        start = time.perf_counter_ns()
        VaultV1.open(path, PASSWORD_A)
        whole.append(_ms(start))
        start = time.perf_counter_ns()
        derive_keys(password, keys.kdf, keys.salt)
        kdf.append(_ms(start))
    return statistics.median(whole) - statistics.median(kdf)


def one_payment(doc: dict, save) -> tuple[float, float]:
    """The vault side of one payment: (save 1 ms, save 2 ms); building the dicts is not timed."""
    msg_id = _msg_id()
    entry = outbox_entry(msg_id)
    seq = doc["counter"] + 1
    details, receipt = pay_details(seq), receipt_record(seq, msg_id, time.time_ns() // 1_000_000)
    start = time.perf_counter_ns()
    doc["counter"] = seq
    doc["outbox"].append(entry)
    save()  # sign_and_queue: the signed request is on disk before it is sent
    first_ms = _ms(start)
    start = time.perf_counter_ns()
    doc["balance_minor"] = details["balance_minor"]
    add_history(doc, "pay", msg_id, "accepted", details)
    doc["receipts"].append(receipt)
    doc["outbox"].pop(0)
    save()  # _deliver_one: the receipt recorded, the entry out of the outbox
    return first_ms, _ms(start)


def summarize_payments(saves: list[tuple[float, float]]) -> dict:
    totals = [first + second for first, second in saves]
    return {
        "pay_ms": statistics.median(totals),
        "pay_p90_ms": p90(totals),
        "save1_ms": statistics.median(first for first, _ in saves),
        "save2_ms": statistics.median(second for _, second in saves),
    }


def v2_payment(path: Path) -> tuple[float, float]:
    vault = Vault.open(path, PASSWORD_A)  # each `wallet pay` is a new process: a fresh open
    try:
        return one_payment(vault.data, vault.save)
    finally:
        vault.close()


def v1_payment(path: Path) -> tuple[float, float]:
    vault = VaultV1.open(path, PASSWORD_A)
    return one_payment(vault.data, vault.save)


def commit_floor(path: Path) -> tuple[float, float]:
    """Two commits of one 2.4 KB row each, with the vault's pragmas (WAL, synchronous=FULL): what
    the disk alone asks of two saves."""
    conn = store.connect(path, create=True)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, value BLOB NOT NULL)")
        times = []
        for _ in range(2):
            value = os.urandom(2400)
            start = time.perf_counter_ns()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (value) VALUES (?)", (value,))
            conn.execute("COMMIT")
            times.append(_ms(start))
        return times[0], times[1]
    finally:
        conn.close()


def payment_rounds(targets: list[tuple[dict, object]], runs: int) -> None:
    """One payment in every vault per round, round after round: a busy spell of the shared machine
    hits all sizes and both formats alike. Fills each row's payment figures."""
    saves = [[] for _ in targets]
    for _ in range(runs):
        for done, (_row, pay) in zip(saves, targets, strict=True):
            done.append(pay())
    for (row, _pay), done in zip(targets, saves, strict=True):
        row |= summarize_payments(done)


def measure_pages(path: Path, runs: int) -> dict:
    """page(50) newest, page(50, since_ms=) at the middle; the result is checked once."""
    vault = Vault.open(path, PASSWORD_A)
    try:
        history = vault.data["history"]
        total = len(history)
        since_ms = history[total // 2]["at_ms"]
        newest = history.page(50)
        middle = history.page(50, since_ms=since_ms)
        assert newest.first_index == total - 50 and len(newest.items) == 50
        assert middle.items[0]["at_ms"] >= since_ms and len(middle.items) == 50
        assert middle.first_index == 0 or history[middle.first_index - 1]["at_ms"] < since_ms
        newest_ms, middle_ms = [], []
        for _ in range(runs):
            start = time.perf_counter_ns()
            history.page(50)
            newest_ms.append(_ms(start))
            start = time.perf_counter_ns()
            history.page(50, since_ms=since_ms)
            middle_ms.append(_ms(start))
        return {"page_new_ms": statistics.median(newest_ms), "page_mid_ms": statistics.median(middle_ms)}
    finally:
        vault.close()


def v2_file_bytes(path: Path) -> tuple[int, int, int]:
    """(.tpv bytes, -wal bytes, payments in it) as a wallet process has it: open, just after a
    payment (one more, not timed), before close folds the journal in."""
    vault = Vault.open(path, PASSWORD_A)
    try:
        one_payment(vault.data, vault.save)
        wal = path.with_name(path.name + "-wal")
        return path.stat().st_size, wal.stat().st_size if wal.exists() else 0, len(vault.data["receipts"])
    finally:
        vault.close()


def prepare_v2(work_dir: Path, size: int, runs: int) -> dict:
    """Build (or reuse) the vault; open and page figures (CPU and page cache: measured alone)."""
    built_s = build_v2(work_dir, size)
    path = v2_path(work_dir, size)
    row = {"format": "v2", "size": size, "built_s": built_s, "path": path}
    row |= measure_open(path, runs)
    return row | measure_pages(path, runs)


def prepare_v1(work_dir: Path, size: int, runs: int) -> dict:
    started = time.perf_counter()
    path = write_v1(work_dir, size)
    row = {"format": "v1", "size": size, "built_s": time.perf_counter() - started, "path": path}
    row["beyond_ms"] = measure_v1_open(path, runs)
    return row


def add_file_sizes(row: dict) -> None:
    """After the timed payments: v2 with its journal as an open wallet has it; v1 is one file."""
    if row["format"] == "v2":
        tpv, wal, payments = v2_file_bytes(row["path"])
        row |= {"tpv_bytes": tpv, "wal_bytes": wal, "payments": payments}
    else:
        payments = len(VaultV1.open(row["path"], PASSWORD_A).data["receipts"])
        row |= {"tpv_bytes": row["path"].stat().st_size, "wal_bytes": 0, "payments": payments}


# --- printing -----------------------------------------------------------------------------------


def print_table(rows: list[dict], v1_cap: int | None) -> None:
    print(
        f"{'payments':>10} {'fmt':>3} {'open>KDF':>9} {'(open-KDF)':>10} {'payment':>8} {'p90':>7} "
        f"{'save1+save2':>13} {'page new':>9} {'page mid':>9} {'file MB':>8} {'B/payment':>10}"
    )
    for row in rows:
        cells = [f"{row['size']:>10,}", f"{row['format']:>3}", f"{row['beyond_ms']:9.2f}"]
        cells.append(f"{row['subtracted_ms']:10.2f}" if "subtracted_ms" in row else f"{'-':>10}")
        cells += [f"{row['pay_ms']:8.2f}", f"{row['pay_p90_ms']:7.2f}"]
        cells.append(f"{row['save1_ms']:6.2f}+{row['save2_ms']:<6.2f}")
        if "page_new_ms" in row:
            cells += [f"{row['page_new_ms']:9.2f}", f"{row['page_mid_ms']:9.2f}"]
        else:
            cells += [f"{'-':>9}", f"{'-':>9}"]
        size_bytes = row["tpv_bytes"] + row["wal_bytes"]
        cells += [f"{size_bytes / 1e6:8.1f}", f"{size_bytes / row['payments']:10.0f}"]
        print(" ".join(cells))
    print("(times in ms; open>KDF = Vault._open_with_keys with keys derived beforehand; (open-KDF) =")
    print(" median Vault.open - median derive_keys alone, a cross-check within the KDF's own jitter of a few")
    print(" ms; v1's open>KDF is that subtraction (v1 reads and decrypts the whole file);")
    print(" payment = save 1 (outbox entry) + save 2 (history + receipt, outbox entry out), each run after")
    print(" a fresh open; file = .tpv + -wal just after a payment, open; KDF = MINIMUM_KDF)")
    if v1_cap is not None:
        print(f"v1 stops at about {v1_cap:,} payments: its file limit is {V1_FILE_MAX_BYTES // 2**20} MiB")


def print_ratios(rows: list[dict], floor: dict) -> None:
    v2 = {row["size"]: row for row in rows if row["format"] == "v2"}
    for size, row in v2.items():
        print(f"at {size:,} payments, v2 payment work / disk floor: {row['pay_ms'] / floor['pay_ms']:.1f} x")
    for row in rows:
        other = v2.get(row["size"]) if row["format"] == "v1" else None
        if other is not None:
            print(
                f"at {row['size']:,} payments, v1 / v2: payment work "
                f"{row['pay_ms'] / other['pay_ms']:.1f} x, open beyond KDF "
                f"{row['beyond_ms'] / other['beyond_ms']:.1f} x"
            )


def print_targets(rows: list[dict]) -> None:
    v2 = {row["size"]: row for row in rows if row["format"] == "v2"}
    worst_open = max(row["beyond_ms"] for row in v2.values())
    print(
        f"target open beyond KDF <= {TARGET_OPEN_MS:.0f} ms at every size: worst {worst_open:.2f} ms, "
        f"{'met' if worst_open <= TARGET_OPEN_MS else 'NOT met'}"
    )
    if 100_000 in v2:
        work_ms = v2[100_000]["pay_ms"]
        print(
            f"target payment work <= {TARGET_PAY_MS:.0f} ms at 100,000: {work_ms:.2f} ms, "
            f"{'met' if work_ms <= TARGET_PAY_MS else 'NOT met'}"
        )
    if 100_000 in v2 and 1_000_000 in v2:
        ratio = v2[1_000_000]["pay_ms"] / v2[100_000]["pay_ms"]
        print(
            f"target flat from 100,000 to 1,000,000 (ratio < {FLAT_RATIO_MAX}): {ratio:.2f} x, "
            f"{'met' if ratio < FLAT_RATIO_MAX else 'NOT met'}"
        )


def v1_payments_max(rows: list[dict]) -> int | None:
    """Where v1's file reaches its limit, extrapolated from the two largest v1 files measured."""
    v1 = sorted((row for row in rows if row["format"] == "v1"), key=lambda row: row["payments"])
    if len(v1) < 2:
        return None
    low, high = v1[-2], v1[-1]
    per_payment = (high["tpv_bytes"] - low["tpv_bytes"]) / (high["payments"] - low["payments"])
    return int(high["payments"] + (V1_FILE_MAX_BYTES - high["tpv_bytes"]) / per_payment)


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    assert sizes and all(BATCH_PAYMENTS // 100 <= size <= SIZE_MAX for size in sizes), "sizes: 100 .. 10M"
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="payments in the v2 vaults")
    parser.add_argument(
        "--v1-sizes", default="1000,10000", help="payments in the v1 vaults (v2 is measured there too)"
    )
    parser.add_argument("--runs", type=int, default=21, help="runs per figure (median; p90 of payments)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/tokenpay-bench-vault"))
    args = parser.parse_args()
    assert 5 <= args.runs <= 1000
    v1_sizes = parse_sizes(args.v1_sizes) if args.v1_sizes else []
    sizes = sorted(set(parse_sizes(args.sizes)) | set(v1_sizes))
    args.work_dir.mkdir(parents=True, exist_ok=True)

    print(f"(load average before: {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores; {args.runs} runs)")
    rows = []
    for size in sizes:
        print(f"v2, {size:,} payments: build or reuse, open, pages ...", file=sys.stderr)
        rows.append(prepare_v2(args.work_dir, size, args.runs))
        built_s = rows[-1]["built_s"]
        built = "reused (cached)" if built_s is None else f"built in {built_s:.1f} s"
        print(f"v2 vault of {size:,} payments: {built} ({rows[-1]['path']})")
        if size in v1_sizes:
            print(f"v1, {size:,} payments: write, open ...", file=sys.stderr)
            rows.append(prepare_v1(args.work_dir, size, args.runs))
            print(f"v1 vault of {size:,} payments: written in {rows[-1]['built_s']:.1f} s")
    print(f"payments, {args.runs} rounds over {len(rows)} vaults ...", file=sys.stderr)
    floor = {"format": "sql", "size": 0}
    floor_path = args.work_dir / "commit-floor.db"
    for stale in files_of(floor_path):
        stale.unlink(missing_ok=True)
    targets = [(floor, lambda: commit_floor(floor_path))]
    for row in rows:
        pay = v2_payment if row["format"] == "v2" else v1_payment
        targets.append((row, lambda pay=pay, path=row["path"]: pay(path)))
    payment_rounds(targets, args.runs)
    for row in rows:
        add_file_sizes(row)
    print()
    print_table(rows, v1_payments_max(rows))
    print(
        f"disk floor, two bare SQLite commits of 2.4 KB (WAL, synchronous=FULL): {floor['pay_ms']:.2f} ms "
        f"(p90 {floor['pay_p90_ms']:.2f})"
    )
    print_ratios(rows, floor)
    print_targets(rows)
    print(f"(load average after: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
