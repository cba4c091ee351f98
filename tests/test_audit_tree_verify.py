"""`center audit verify` and `verify-export` over the Merkle tree and the signed tree heads.

The attacker here has the database (triggers dropped as someone with write access could) but not
the center's token key. The strongest rewrite recomputes everything the database holds: the
changed entries' chain hashes, every leaf and node, the frontier and the head row. Only the signed
tree heads are left, and they must give it away, in the database and in an export made from it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from types import SimpleNamespace

import pytest
from receipt_support import receipt_result
from sqlalchemy import select, text
from support import SoftwareSigner, run_cli

from center.keys.identity import CenterSigner, make_tls_certificate
from center.ledger import audit, audit_verify, log_tree
from center.ledger.audit_export import export_audit
from center.ledger.audit_export_verify import verify_export
from center.ledger.audit_snapshot import read_snapshot
from center.ledger.audit_tree_check import CenterKey
from center.ledger.audit_verify import verify_log
from center.storage.db import audit_log, log_nodes, tree_heads
from paywire import merkle
from paywire.envelope import Envelope, b64url_decode, b64url_encode
from paywire.log_entry import entry_bytes, entry_fields

PAYMENTS = 6
TRIGGERED_TABLES = ("audit_log", "log_nodes", "tree_heads")


# --- helpers ----------------------------------------------------------------------------------------


def traffic(center, payments: int = PAYMENTS) -> dict:
    """Enrollments, a top-up confirmed by an operator (unsigned entry) and payments: one head each."""
    member, store = SoftwareSigner(), SoftwareSigner("Ed25519")
    center.enroll(member.envelope("enroll", member.enroll_body("member"), aud=center.center_id))
    store_id = receipt_result(
        center.enroll(
            store.envelope("enroll", store.enroll_body("store", name="Kissa Shop"), aud=center.center_id)
        )
    )["member_id"]
    topup = {"amount_minor": 50_000, "currency": "JPY", "method": "bank"}
    topup_id = receipt_result(center.submit(member.envelope("topup", topup, aud=center.center_id), "topup"))[
        "topup_id"
    ]
    center.decide_topup(topup_id, "confirm", decided_by="operator:test")
    for number in range(payments):
        pay(center, member, store_id, number)
    return {"member": member, "store_id": store_id}


def pay(center, member, store_id: str, number: int) -> dict:
    body = {
        "payee": store_id,
        "payee_name": "Kissa Shop",
        "amount_minor": 100,
        "currency": "JPY",
        "order_ref": f"o-{number}",
    }
    return center.submit(member.envelope("pay", body, aud=center.center_id), "pay")


def center_key(center) -> CenterKey:
    return CenterKey(center_id=center.center_id, spki=center.signer.spki, alg=center.signer.alg)


def verify(center, **options) -> dict:
    return verify_log(center.engine, center_key(center), **options).to_json()


def cert_pem(center) -> bytes:
    return make_tls_certificate(center.center_id, center.signer.spki, ["localhost"], [])[0]


def export(center, path):
    export_audit(center.engine, path, center_id=center.center_id, cert_pem=cert_pem(center))
    return path


def attacker_sql(engine, *statements, params: list | None = None) -> None:
    """Statements run with the append-only triggers off, as someone with write access could."""
    with engine.begin() as conn:
        for table in TRIGGERED_TABLES:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_update")
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            else:
                conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
        for statement in statements:
            conn.execute(text(statement), params or {})


def head_sizes(engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(tree_heads.c.tree_size).order_by(tree_heads.c.tree_size)).scalars())


def rewrite_history(engine, seq: int, change, *, keep_entries: int | None = None) -> None:
    """Change entry `seq` (change(action) -> action) and recompute every hash the database holds:
    chain, leaves, nodes, frontier, head row. Entries after keep_entries are dropped. Heads stay."""
    with engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings()]
    rows = rows[:keep_entries] if keep_entries is not None else rows
    prev_hash, leaves = audit.GENESIS_HASH, []
    for row in rows:
        action = json.loads(row["action"])
        if row["seq"] == seq:
            action = change(action)
            row["action"] = json.dumps(action)
        encoded = entry_bytes(entry_fields(row, action))
        row["prev_hash"], row["entry_hash"] = (
            prev_hash,
            hashlib.sha256(bytes.fromhex(prev_hash) + encoded).hexdigest(),
        )
        prev_hash = row["entry_hash"]
        leaves.append(merkle.leaf_hash(encoded))
    tree = merkle.append(0, [], leaves)
    attacker_sql(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM log_nodes"))
        conn.execute(text("DELETE FROM audit_log WHERE seq > :n"), {"n": len(rows)})
        for row in rows:
            conn.execute(
                text("UPDATE audit_log SET action = :a, prev_hash = :p, entry_hash = :h WHERE seq = :s"),
                {"a": row["action"], "p": row["prev_hash"], "h": row["entry_hash"], "s": row["seq"]},
            )
        conn.execute(
            log_nodes.insert(),
            [{"level": lv, "idx": ix, "hash": digest} for (lv, ix), digest in tree.nodes.items()],
        )
        conn.execute(
            text("UPDATE audit_head SET seq = :s, entry_hash = :h, frontier = :f WHERE id = 1"),
            {"s": len(rows), "h": prev_hash, "f": log_tree.frontier_text(tree.frontier)},
        )


def more_money(action: dict) -> dict:
    return action | {"amount_minor": action.get("amount_minor", 0) + 900_000}


# --- the database -------------------------------------------------------------------------------------


def test_clean_log_verifies_and_reports_the_unsigned_tail(center):
    traffic(center)
    report = verify(center)
    size = report["tree_size"]
    assert report == {
        "ok": True,
        "entries": size,
        "first_bad_seq": None,
        "problem": None,
        "tree_size": size,
        "heads_checked": len(head_sizes(center.engine)),
        "unsigned_entries": size - head_sizes(center.engine)[-1],
    }
    assert size == 4 + PAYMENTS and report["heads_checked"] >= PAYMENTS
    with center.engine.begin() as conn:  # an operator action appends without a head: information only
        audit.append_local(
            conn, actor="operator:t", request={"n": 1}, msg_type="key_bind", msg_id="x", action={}, now_ms=1
        )
    after = verify(center)
    assert (after["ok"], after["tree_size"], after["unsigned_entries"]) == (
        True,
        size + 1,
        report["unsigned_entries"] + 1,
    )


def test_empty_log_verifies(center):
    assert verify(center) == {
        "ok": True,
        "entries": 0,
        "first_bad_seq": None,
        "problem": None,
        "tree_size": 0,
        "heads_checked": 0,
        "unsigned_entries": 0,
    }


def test_rewritten_history_with_every_hash_recomputed_is_caught_by_the_heads(center, tmp_path):
    traffic(center)
    target = 6  # a payment: its head and every later one were signed over the true entry
    sizes = head_sizes(center.engine)
    rewrite_history(center.engine, target, more_money)
    with center.engine.connect() as conn:
        assert audit.verify_chain(conn)[1] is None  # the chain alone is fooled
    report = verify(center)
    assert report["ok"] is False
    assert "does not match the entries: history was rewritten after it was signed" in report["problem"]
    first_head = min(size for size in sizes if size >= target)
    assert f"tree head at size {first_head} " in report["problem"]
    assert report["first_bad_seq"] <= target <= first_head
    exported = verify_export(export(center, tmp_path / "rewritten.jsonl"))
    assert exported["ok"] is False and "history was rewritten" in exported["problem"], exported


def test_rewritten_history_re_signed_with_another_key_fails_the_signature(center):
    traffic(center)
    rewrite_history(center.engine, 5, more_money)
    forger = SoftwareSigner()
    signer = CenterSigner(
        forger.sign, SimpleNamespace(spki_der=forger.spki, algorithm="ES256"), center.center_id
    )
    attacker_sql(center.engine, "DELETE FROM tree_heads", "UPDATE audit_head SET signed_size = 0")
    with center.engine.begin() as conn:
        log_tree.sign_pending(conn, signer.sign_tree_head)
    report = verify(center)
    assert report["ok"] is False and "is not a tree head signed by the center" in report["problem"], report


def test_removed_tail_with_the_tree_recomputed_is_caught_by_a_later_head(center):
    traffic(center)
    size = verify(center)["tree_size"]
    rewrite_history(center.engine, 0, lambda action: action, keep_entries=size - 2)
    report = verify(center)
    assert report["ok"] is False and "entries were removed after it was signed" in report["problem"], report
    assert report["first_bad_seq"] == size - 1


def test_removed_tail_alone_is_caught_by_the_chain(center):
    traffic(center)
    size = verify(center)["tree_size"]
    attacker_sql(center.engine, f"DELETE FROM audit_log WHERE seq = {size}")
    report = verify(center)
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, size, size - 1)
    assert "removed" in report["problem"]


def test_changed_head_signature_is_caught(center, tmp_path):
    traffic(center)
    middle = head_sizes(center.engine)[2]
    with center.engine.connect() as conn:
        document = json.loads(
            conn.execute(select(tree_heads.c.envelope).where(tree_heads.c.tree_size == middle)).scalar()
        )
    signature = bytearray(b64url_decode(document["sig"], "sig", 256))
    signature[10] ^= 1
    document["sig"] = b64url_encode(bytes(signature))
    attacker_sql(
        center.engine,
        "UPDATE tree_heads SET envelope = :e WHERE tree_size = :s",
        params={"e": json.dumps(document), "s": middle},
    )
    report = verify(center)
    assert report["ok"] is False
    assert (
        f"the tree head stored at size {middle} is not a tree head signed by the center" in report["problem"]
    )
    exported = verify_export(export(center, tmp_path / "bad-head.jsonl"))
    assert exported["ok"] is False and "is not a tree head signed by the center" in exported["problem"]


def test_head_dropped_from_the_middle_breaks_the_chain_of_heads(center):
    traffic(center)
    sizes = head_sizes(center.engine)
    attacker_sql(center.engine, f"DELETE FROM tree_heads WHERE tree_size = {sizes[2]}")
    report = verify(center)
    assert report["ok"] is False
    assert (
        f"tree head at size {sizes[3]} does not name the head before it (size {sizes[1]})"
        in report["problem"]
    )


def test_newest_head_dropped_is_caught_through_the_head_row(center):
    traffic(center)
    attacker_sql(center.engine, f"DELETE FROM tree_heads WHERE tree_size = {head_sizes(center.engine)[-1]}")
    report = verify(center)
    assert report["ok"] is False and "tree heads were removed" in report["problem"]


def test_a_changed_stored_node_or_leaf_is_named(center):
    traffic(center)
    attacker_sql(
        center.engine,
        "UPDATE log_nodes SET hash = :h WHERE level = 1 AND idx = 1",
        params={"h": b"\x07" * 32},
    )
    report = verify(center)
    assert (report["ok"], report["first_bad_seq"]) == (False, 3)
    assert "node (1, 1) is not the hash of its children" in report["problem"]
    attacker_sql(
        center.engine,
        "UPDATE log_nodes SET hash = :h WHERE level = 0 AND idx = 4",
        params={"h": b"\x07" * 32},
    )
    report = verify(center)
    assert (report["ok"], report["first_bad_seq"]) == (False, 5)
    assert "stored leaf of entry 5" in report["problem"]
    attacker_sql(center.engine, "DELETE FROM log_nodes WHERE level = 2 AND idx = 0")
    assert "log_nodes lacks node (2, 0)" in verify(center)["problem"]


@pytest.mark.parametrize("tamper", ["none", "payload", "rewrite"])
def test_helper_processes_find_what_one_process_finds(center, tamper, monkeypatch):
    traffic(center, payments=12)
    if tamper == "payload":
        with center.engine.connect() as conn:
            payload = conn.execute(select(audit_log.c.payload).where(audit_log.c.seq == 11)).scalar()
        attacker_sql(
            center.engine,
            "UPDATE audit_log SET payload = :p WHERE seq = 11",
            params={"p": payload[:-1] + b" "},
        )
    elif tamper == "rewrite":
        rewrite_history(center.engine, 9, more_money)
    monkeypatch.setattr(audit_verify, "PARALLEL_MIN_ENTRIES", 1)
    alone = verify(center, workers=1, range_entries=4)
    assert verify(center, workers=2, range_entries=4) == alone
    assert alone["ok"] is (tamper == "none")


def test_verify_reads_a_snapshot_and_a_payment_commits_meanwhile(center, monkeypatch):
    people = traffic(center)
    size = verify(center)["tree_size"]
    inside, release = threading.Event(), threading.Event()
    stored_levels = audit_verify._stored_levels

    def paused(snapshot, tree_size):  # verification holds its snapshot open here
        levels = stored_levels(snapshot, tree_size)
        inside.set()
        assert release.wait(60)
        return levels

    monkeypatch.setattr(audit_verify, "_stored_levels", paused)
    reports = []
    walker = threading.Thread(target=lambda: reports.append(verify(center, workers=1)))
    walker.start()
    try:
        assert inside.wait(60)
        started = time.monotonic()
        answer = pay(center, people["member"], people["store_id"], 99)  # commits while verify reads
        waited_s = time.monotonic() - started
    finally:
        release.set()
        walker.join(60)
    assert answer["receipt"]["entry"]["seq"] == size + 1
    assert waited_s < 5, f"the payment waited {waited_s:.1f} s for the verification"
    assert reports[0]["ok"] is True and reports[0]["tree_size"] == size  # the snapshot's view
    assert verify(center)["tree_size"] == size + 1


def test_a_snapshot_does_not_see_later_commits(center):
    traffic(center, payments=1)
    with read_snapshot(center.engine) as snapshot:
        (before,) = snapshot.one("SELECT seq FROM audit_head WHERE id = 1")
        with center.engine.begin() as conn:
            audit.append_local(
                conn, actor="operator:t", request={}, msg_type="key_bind", msg_id="y", action={}, now_ms=1
            )
        assert snapshot.one("SELECT seq FROM audit_head WHERE id = 1") == (before,)
        assert snapshot.one("SELECT MAX(seq) FROM audit_log") == (before,)


# --- the export ---------------------------------------------------------------------------------------


def test_export_carries_the_heads_and_verifies(center, tmp_path):
    traffic(center)
    path = export(center, tmp_path / "audit.jsonl")
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    kinds = [next(iter(record)) for record in records[1:]]
    assert records[0]["format_version"] == 3
    assert kinds == sorted(kinds, key=["key", "entry", "tree_head"].index)  # keys, entries, heads
    assert kinds.count("tree_head") == len(head_sizes(center.engine))
    report = verify_export(path)
    database = verify(center)
    assert report["ok"] is True, report
    assert (report["tree_size"], report["heads_checked"], report["entries_after_newest_head"]) == (
        database["tree_size"],
        database["heads_checked"],
        database["unsigned_entries"],
    )
    assert verify_export(path, center_cert_pem=cert_pem(center))["ok"] is True
    other = make_tls_certificate(center.center_id, SoftwareSigner().spki, ["localhost"], [])[0]
    pinned = verify_export(path, center_cert_pem=other)
    assert pinned["ok"] is False and "not the pinned one" in pinned["problem"]


def test_format_2_files_still_verify(center, tmp_path):
    traffic(center)
    lines = export(center, tmp_path / "v3.jsonl").read_bytes().splitlines()
    header = json.loads(lines[0]) | {"format_version": 2}
    old = [json.dumps(header).encode()] + [line for line in lines[1:] if not line.startswith(b'{"tree_head"')]
    (tmp_path / "v2.jsonl").write_bytes(b"".join(line + b"\n" for line in old))
    report = verify_export(tmp_path / "v2.jsonl")
    assert (report["ok"], report["heads_checked"]) == (True, 0)
    with_head = [*old, next(line for line in lines if line.startswith(b'{"tree_head"'))]
    (tmp_path / "v2-head.jsonl").write_bytes(b"".join(line + b"\n" for line in with_head))
    assert verify_export(tmp_path / "v2-head.jsonl")["ok"] is False  # format 2 has no tree heads


def edit_lines(path, target, change):
    lines = path.read_bytes().splitlines()
    change(lines)
    target.write_bytes(b"".join(line + b"\n" for line in lines))
    return target


def head_line_indexes(lines) -> list[int]:
    return [i for i, line in enumerate(lines) if line.startswith(b'{"tree_head"')]


def flip_payload_byte(lines):
    index = next(i for i, line in enumerate(lines) if b'"seq":9,' in line)
    record = json.loads(lines[index])
    payload = bytearray(b64url_decode(record["entry"]["payload"], "payload", 1 << 20))
    payload[25] ^= 1
    record["entry"]["payload"] = b64url_encode(bytes(payload))
    lines[index] = json.dumps(record).encode()


EXPORT_TAMPERING = {
    "none": lambda lines: None,
    "payload": flip_payload_byte,
    "head dropped": lambda lines: lines.pop(head_line_indexes(lines)[3]),
    "heads swapped": lambda lines: lines.insert(
        head_line_indexes(lines)[2], lines.pop(head_line_indexes(lines)[4])
    ),
    "entry after heads": lambda lines: lines.append(lines[head_line_indexes(lines)[0] - 1]),
    "garbage among heads": lambda lines: lines.insert(head_line_indexes(lines)[1], b"garbage"),
    "cut off": lambda lines: lines.__setitem__(-1, lines[-1][:-5]),
    "head not an envelope": lambda lines: lines.__setitem__(
        head_line_indexes(lines)[1], b'{"tree_head":[1]}'
    ),
}


# SQLite only: an export file is the same whichever database it was made from (and a skipped
# PostgreSQL case would read as a skip in CI, where nothing may skip).
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("tamper", sorted(EXPORT_TAMPERING))
def test_verify_export_in_parts_matches_one_pass(center, tmp_path, tamper):
    traffic(center, payments=12)
    path = edit_lines(
        export(center, tmp_path / "audit.jsonl"), tmp_path / "edited.jsonl", EXPORT_TAMPERING[tamper]
    )
    if tamper == "cut off":
        path.write_bytes(path.read_bytes()[:-1])
    one_pass = verify_export(path, workers=1)
    assert one_pass["ok"] is (tamper == "none"), one_pass
    for part_bytes in (1, 900):  # a part per line; a few lines per part
        assert verify_export(path, workers=2, part_bytes=part_bytes) == one_pass, part_bytes


def test_export_reads_a_snapshot_and_never_blocks_a_payment(center, tmp_path, monkeypatch):
    from center.ledger import audit_export

    people = traffic(center)
    inside, release = threading.Event(), threading.Event()
    write_records = audit_export._write_records

    def paused(out, kind, items):
        if kind == "entry":
            inside.set()
            assert release.wait(60)
        return write_records(out, kind, items)

    monkeypatch.setattr(audit_export, "_write_records", paused)
    walker = threading.Thread(target=lambda: export(center, tmp_path / "audit.jsonl"))
    walker.start()
    try:
        assert inside.wait(60)
        started = time.monotonic()
        pay(center, people["member"], people["store_id"], 77)
        waited_s = time.monotonic() - started
    finally:
        release.set()
        walker.join(60)
    assert waited_s < 5
    assert verify_export(tmp_path / "audit.jsonl")["ok"] is True


# --- the command line ---------------------------------------------------------------------------------


def test_cli_verify_reports_the_tree(tmp_path):
    data_dir = tmp_path / "center"
    assert run_cli("center", ["init", "--data-dir", str(data_dir), "--currency", "JPY"]).returncode == 0
    result = run_cli("center", ["audit", "verify", "--data-dir", str(data_dir), "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "ok": True,
        "entries": 0,
        "first_bad_seq": None,
        "problem": None,
        "tree_size": 0,
        "heads_checked": 0,
        "unsigned_entries": 0,
    }
    exported = tmp_path / "audit.jsonl"
    assert run_cli("center", ["audit", "export", str(exported), "--data-dir", str(data_dir)]).returncode == 0
    pinned = ["--center-cert", str(data_dir / "center-cert.pem")]
    check = run_cli("center", ["audit", "verify-export", str(exported), "--json", *pinned])
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["heads_checked"] == 0


def test_envelope_of_a_stored_head_is_what_the_export_carries(center, tmp_path):
    traffic(center, payments=1)
    lines = export(center, tmp_path / "audit.jsonl").read_bytes().splitlines()
    heads = [json.loads(line)["tree_head"] for line in lines if line.startswith(b'{"tree_head"')]
    with center.engine.connect() as conn:
        stored = [
            json.loads(e)
            for e in conn.execute(select(tree_heads.c.envelope).order_by(tree_heads.c.tree_size)).scalars()
        ]
    assert heads == stored
    assert all(Envelope.from_json(head).payload for head in heads)


def test_export_fields_are_the_hashed_fields():
    # The verifier hashes an exported entry's own texts; they must be exactly entry_fields' names.
    from center.ledger.audit_export_records import HASHED_FIELDS

    row = dict.fromkeys(HASHED_FIELDS, 1) | {"payload": b"p", "signature": b"s"}
    assert tuple(entry_fields(row, {})) == HASHED_FIELDS
