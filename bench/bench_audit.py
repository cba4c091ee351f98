"""Audit benchmark: `center audit verify`, `export` and `verify-export` over a big log, as real commands.

    .venv/bin/python bench/bench_audit.py [--entries 1000000] [--db sqlite|postgres] [--keys 1000]

Builds a center data directory (config, certificate of a software center key, migrated database)
whose audit log holds `--entries` signed payments: distinct payloads, each signed with one of
`--keys` enrolled P-256 member keys (so every signature verifies in verify-export), chained,
with the Merkle tree stored and a tree head signed by the center key every `--head-every` entries,
as the center writes them. The building is direct inserts, signed on both cores; not timed.
Then it runs `center audit verify`, `center audit export` and `center audit verify-export` as
separate processes and prints each one's seconds and entries per second. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from center.keys.identity import CenterSigner, make_tls_certificate
from center.ledger.audit import GENESIS_HASH
from center.ledger.log_tree import frontier_text
from center.storage.config import CERT_NAME, CenterConfig
from center.storage.db import make_engine, migrate
from paywire import merkle
from paywire.algorithms import ecdsa_der_low_s, key_id
from paywire.canonical import canonical_bytes, jcs_bytes
from paywire.log_entry import entry_bytes, entry_fields
from paywire.messages import PAY, build_payload
from paywire.tree_head import GENESIS_HEAD_SHA256, head_sha256

CENTER_ID = "center-bench"
MAX_ENTRIES = 8_000_000
BATCH_ENTRIES = 10_000
START_MS = 1_764_000_000_000


def member_keys(count: int) -> list[ec.EllipticCurvePrivateKey]:
    # Derived from the index, so helper processes make the same keys without being sent them.
    return [ec.derive_private_key(1_000_003 + i, ec.SECP256R1()) for i in range(count)]


def spki(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


_keys: list = []


def _start(count: int) -> None:
    _keys.extend((key, key_id(spki(key))) for key in member_keys(count))


def signed_rows(first_seq: int, count: int) -> list[tuple]:
    """Entries first_seq.. : (row dict, the entry's canonical bytes), each a distinct signed payment."""
    rows = []
    for seq in range(first_seq, first_seq + count):
        key, kid = _keys[seq % len(_keys)]
        now_ms = START_MS + seq
        payload = canonical_bytes(
            build_payload(
                PAY,
                aud=CENTER_ID,
                kid=kid,
                msg_id=f"M-{seq:016x}",
                ctr=seq,
                body={
                    "payee": "S-0000000000000001",
                    "payee_name": "Kissa Shop",
                    "amount_minor": 100 + seq % 5000,
                    "currency": "JPY",
                    "order_ref": f"order-{seq}",
                },
                now_s=now_ms // 1000,
            )
        )
        signature = ecdsa_der_low_s(*decode_dss_signature(key.sign(payload, ec.ECDSA(hashes.SHA256()))))
        action = {"action": "paid", "payment_id": f"P-{seq:016x}", "amount_minor": 100 + seq % 5000}
        row = {
            "seq": seq,
            "created_at_ms": now_ms,
            "kid": kid,
            "alg": "ES256",
            "msg_type": PAY,
            "msg_id": f"M-{seq:016x}",
            "payload": payload,
            "signature": signature,
            "action": jcs_bytes(action).decode(),
        }
        rows.append((row, entry_bytes(entry_fields(row, action))))
    return rows


def build(data_dir: Path, db_url: str, entries: int, key_count: int, head_every: int) -> None:
    data_dir.mkdir(parents=True)
    center_key = ec.generate_private_key(ec.SECP256R1())
    center_spki = spki(center_key)
    (data_dir / CERT_NAME).write_bytes(make_tls_certificate(CENTER_ID, center_spki, ["localhost"], [])[0])
    CenterConfig(data_dir, CENTER_ID, "JPY", db_url, "", "", "", None).save()
    engine = make_engine(db_url)
    migrate(engine)

    def sign(data: bytes) -> bytes:
        return ecdsa_der_low_s(*decode_dss_signature(center_key.sign(data, ec.ECDSA(hashes.SHA256()))))

    signer = CenterSigner(sign, SimpleNamespace(spki_der=center_spki, algorithm="ES256"), CENTER_ID)
    raw = engine.raw_connection()
    cursor = raw.cursor()
    mark = "?" if engine.dialect.name == "sqlite" else "%s"

    def insert(table: str, columns: str, values: list[tuple]) -> None:
        if values:
            marks = ",".join([mark] * len(values[0]))
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)

    def begin() -> None:
        if engine.dialect.name == "sqlite":  # the driver is in autocommit mode (center.storage.db)
            cursor.execute("BEGIN")

    keys = member_keys(key_count)
    begin()
    insert(
        "parties",
        "id, role, name, address, birth_date, bank_account, status, created_at_ms",
        [
            (f"M-{i:016x}", "member", f"Member {i}", "1 Bench St", None, None, "active", START_MS)
            for i in range(key_count)
        ],
    )
    insert(
        "keys",
        "kid, party_id, algorithm, spki, status, last_ctr, created_at_ms",
        [
            (key_id(spki(k)), f"M-{i:016x}", "ES256", spki(k), "active", 0, START_MS)
            for i, k in enumerate(keys)
        ],
    )
    size, prev_hash, frontier, prev_head, head_ms = 0, GENESIS_HASH, (), GENESIS_HEAD_SHA256, START_MS
    started = time.monotonic()
    with ProcessPoolExecutor(
        2, mp_context=get_context("spawn"), initializer=_start, initargs=(key_count,)
    ) as pool:
        batches = pool.map(
            signed_rows,
            range(1, entries + 1, BATCH_ENTRIES),
            [min(BATCH_ENTRIES, entries - s + 1) for s in range(1, entries + 1, BATCH_ENTRIES)],
        )
        raw.commit()
        for batch in batches:
            begin()
            rows, nodes, heads = [], [], []
            for offset in range(0, len(batch), head_every):
                group = batch[offset : offset + head_every]
                leaves = []
                for row, encoded in group:
                    entry_hash = hashlib.sha256(bytes.fromhex(prev_hash) + encoded).hexdigest()
                    rows.append(
                        (
                            row["seq"],
                            prev_hash,
                            entry_hash,
                            row["created_at_ms"],
                            row["kid"],
                            row["alg"],
                            row["msg_type"],
                            row["msg_id"],
                            row["payload"],
                            row["signature"],
                            row["action"],
                        )
                    )
                    leaves.append(merkle.leaf_hash(encoded))
                    prev_hash = entry_hash
                tree = merkle.append(size, frontier, leaves)
                size, frontier = tree.size, tree.frontier
                nodes.extend((level, idx, digest) for (level, idx), digest in tree.nodes.items())
                head_ms += 1
                envelope = signer.sign_tree_head(
                    tree_size=size, root_hash=tree.root, timestamp_ms=head_ms, prev_head_sha256=prev_head
                )
                heads.append(
                    (
                        size,
                        tree.root,
                        head_ms,
                        prev_head,
                        head_sha256(envelope),
                        json.dumps(envelope.to_json(), separators=(",", ":")),
                    )
                )
                prev_head = heads[-1][4]
            insert(
                "audit_log",
                "seq, prev_hash, entry_hash, created_at_ms, kid, alg, msg_type, msg_id, payload, signature, "
                "action",
                rows,
            )
            insert("log_nodes", "level, idx, hash", nodes)
            insert(
                "tree_heads",
                "tree_size, root_hash, timestamp_ms, prev_head_sha256, head_sha256, envelope",
                heads,
            )
            raw.commit()
            print(
                f"\r  built {size} entries ({time.monotonic() - started:.0f} s)",
                end="",
                file=sys.stderr,
                flush=True,
            )
    begin()
    cursor.execute(
        f"UPDATE audit_head SET seq = {mark}, entry_hash = {mark}, frontier = {mark}, "
        f"signed_size = {mark} WHERE id = 1",
        (size, prev_hash, frontier_text(frontier), size),
    )
    raw.commit()
    raw.close()
    engine.dispose()
    print(file=sys.stderr)


def timed(args: list[str]) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds (the command and its helper processes: on a shared machine, the
    figure that does not depend on what else runs) and the command's JSON answer."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "center", *args, "--json"], capture_output=True, text=True, check=False
    )
    elapsed_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        sys.exit(f"center {' '.join(args)} failed ({result.returncode}): {result.stderr or result.stdout}")
    return elapsed_s, cpu_s, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--keys", type=int, default=1000, help="member keys the entries are signed with")
    parser.add_argument("--head-every", type=int, default=100, help="entries per signed tree head")
    parser.add_argument(
        "--keep", type=Path, help="build in this new directory and keep it (default: a temporary one)"
    )
    args = parser.parse_args()
    assert 1 <= args.entries <= MAX_ENTRIES and 1 <= args.keys <= 100_000 and 1 <= args.head_every <= 1000
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        data_dir = work / "center"
        pg_url = None
        if args.db == "postgres":
            from support import create_pg_database

            pg_url = create_pg_database()
        db_url = pg_url or f"sqlite:///{data_dir / 'center.db'}"
        try:
            print(
                f"building {args.entries} entries on {args.db} ({os.cpu_count()} cores) ...", file=sys.stderr
            )
            build(data_dir, db_url, args.entries, args.keys, args.head_every)
            export_file = work / "audit.jsonl"
            figures = [
                ("center audit verify", timed(["audit", "verify", "--data-dir", str(data_dir)])),
                (
                    "center audit export",
                    timed(["audit", "export", str(export_file), "--data-dir", str(data_dir)]),
                ),
                ("center audit verify-export", timed(["audit", "verify-export", str(export_file)])),
            ]
            print(
                f"(load average before: {os.getloadavg()[0]:.1f}; "
                "cpu: user + system of the command and its helpers)"
            )
            for name, (elapsed_s, cpu_s, report) in figures:
                if report.get("ok") is False:
                    sys.exit(f"{name} found a problem: {report}")
                print(
                    f"{name:28s} {elapsed_s:8.1f} s  {args.entries / elapsed_s:10.0f} entries/s  "
                    f"cpu {cpu_s:7.1f} s  {cpu_s / args.entries * 1e6:6.1f} us cpu/entry"
                )
            print(
                f"(export file {export_file.stat().st_size / 1e6:.0f} MB; db {args.db}; "
                f"{args.entries} entries)"
            )
        finally:
            if pg_url is not None:
                from support import drop_pg_database

                drop_pg_database(pg_url)


if __name__ == "__main__":
    main()
