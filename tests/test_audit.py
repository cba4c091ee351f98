"""The audit trail: the hash chain in the database, and the offline export.

Tampering tests play an attacker with database access: the append-only
triggers stop ordinary UPDATE/DELETE, so the attacker first drops (SQLite) or
disables (PostgreSQL) them, then edits rows; the chain must still name the
first entry that was changed, removed or reordered.
"""

from __future__ import annotations

import base64
import functools
import json
import sqlite3
from pathlib import Path

import pytest
import rfc8785
from receipt_support import receipt_result
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from support import SoftwareSigner, run_cli

from center.errors import ApiError
from center.keys.identity import make_tls_certificate
from center.ledger import audit, audit_export, audit_export_verify
from center.ledger.audit import chain_hash, verify_chain
from center.ledger.audit_export import export_audit
from center.ledger.audit_export_verify import verify_export
from center.storage.config import CenterConfig
from center.storage.db import audit_log, make_engine
from paywire.envelope import b64url_encode

# What `traffic` writes: enroll member, enroll store, top-up, operator
# confirmation (unsigned), two payments.
ENTRIES = 6
SIGNED_ENTRIES = 5
OPERATOR_SEQ = 4
KEYS = 2
# One signed tree head per commit group: each signed request is a group; the operator's decision
# is covered by the next payment's head. The newest head covers every entry.
HEADS = SIGNED_ENTRIES


# --- helpers ----------------------------------------------------------------------


def traffic(center) -> dict:
    member, store = SoftwareSigner(), SoftwareSigner("Ed25519")
    center.enroll(member.envelope("enroll", member.enroll_body("member"), aud=center.center_id))
    store_id = receipt_result(
        center.enroll(
            store.envelope("enroll", store.enroll_body("store", name="Kissa Shop"), aud=center.center_id)
        )
    )["member_id"]
    topup = {"amount_minor": 5000, "currency": "JPY", "method": "bank"}
    topup_id = receipt_result(center.submit(member.envelope("topup", topup, aud=center.center_id), "topup"))[
        "topup_id"
    ]
    center.decide_topup(topup_id, "confirm", decided_by="operator:test")
    for order in ("o-1", "o-2"):
        pay = {
            "payee": store_id,
            "payee_name": "Kissa Shop",
            "amount_minor": 1200,
            "currency": "JPY",
            "order_ref": order,
        }
        center.submit(member.envelope("pay", pay, aud=center.center_id), "pay")
    return {"member": member, "store": store, "store_id": store_id}


def cert_pem(center) -> bytes:
    return _cert_pem(center.center_id, center.signer.spki)


@functools.cache
def _cert_pem(center_id: str, receipt_spki: bytes) -> bytes:
    # One certificate per center identity, as `center init` writes once.
    return make_tls_certificate(center_id, receipt_spki, ["localhost"], ["127.0.0.1"])[0]


def attacker_sql(engine, *statements: str) -> None:
    """Run statements after switching off the append-only triggers, as someone with DB access could."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_update")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_delete")
        else:
            conn.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        for statement in statements:
            conn.exec_driver_sql(statement)


def attacker_update(engine, seq: int, **values) -> None:
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(**values))


def stored_entry(engine, seq: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(audit_log).where(audit_log.c.seq == seq)).mappings().one())


def check_chain(engine):
    with engine.connect() as conn:
        return verify_chain(conn)


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def export(center, path: Path) -> dict:
    return export_audit(center.engine, path, center_id=center.center_id, cert_pem=cert_pem(center))


def export_lines(path: Path) -> list[bytes]:
    """The export's lines without their newlines: header, KEYS key lines, then entry `seq` at index
    KEYS + seq."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def write_lines(target: Path, lines: list[bytes]) -> Path:
    target.write_bytes(b"".join(line + b"\n" for line in lines))
    return target


def load_document(path: Path) -> dict:
    """The export gathered into one dict: the header's fields plus "keys" and "entries" lists."""
    header, *records = map(json.loads, export_lines(path))
    return header | {
        "keys": [r["key"] for r in records if "key" in r],
        "entries": [r["entry"] for r in records if "entry" in r],
    }


def rewrite(source: Path, target: Path, change) -> Path:
    document = load_document(source)
    change(document)
    keys, entries = document.pop("keys"), document.pop("entries")
    records = [document] + [{"key": k} for k in keys] + [{"entry": e} for e in entries]
    return write_lines(target, [json.dumps(record).encode() for record in records])


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def entry(document: dict, seq: int) -> dict:
    return next(e for e in document["entries"] if e["seq"] == seq)


# --- the chain in the database ---------------------------------------------------------------


def test_clean_chain_verifies_with_signed_and_local_entries(center):
    traffic(center)
    assert check_chain(center.engine) == (ENTRIES, None)
    operator = stored_entry(center.engine, OPERATOR_SEQ)
    assert (operator["kid"], operator["alg"], operator["msg_type"]) == (
        "operator:test",
        "none",
        "topup_confirm",
    )


def test_a_local_entry_is_stored_as_the_copies_it_replaced_stored_it(center):
    # Operators' decisions, payouts runs: kid = actor, alg "none", the request's RFC 8785 bytes,
    # no signature, kid and msg_id cut to their 64-character columns. Chains kept before verify.
    request = {"kid": "k" * 70, "decided_by": "operator:" + "x" * 70, "note": "Jürgen"}
    with center.engine.begin() as conn:
        seq = audit.append_local(
            conn,
            actor=request["decided_by"],
            request=request,
            msg_type="key_bind",
            msg_id=request["kid"],
            action={"action": "key_bound"},
            now_ms=1_000,
        )
    row = stored_entry(center.engine, seq)
    assert (row["kid"], row["alg"], row["msg_id"]) == (request["decided_by"][:64], "none", "k" * 64)
    assert (bytes(row["payload"]), bytes(row["signature"])) == (rfc8785.dumps(request), b"")
    assert check_chain(center.engine) == (seq, None)


def test_append_only_triggers_refuse_update_and_delete(center):
    traffic(center)
    for statement in (
        "UPDATE audit_log SET action = '{}' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
        f"DELETE FROM audit_log WHERE seq = {ENTRIES}",
    ):
        with pytest.raises(DBAPIError, match="append-only"), center.engine.begin() as conn:
            conn.exec_driver_sql(statement)
    assert check_chain(center.engine) == (ENTRIES, None)


@pytest.mark.parametrize("seq", [1, 3, ENTRIES])
def test_one_changed_payload_byte_is_found_at_its_entry(center, seq):
    traffic(center)
    attacker_sql(center.engine)
    attacker_update(center.engine, seq, payload=flip_byte(stored_entry(center.engine, seq)["payload"], 40))
    checked, problem = check_chain(center.engine)
    assert (checked, problem.seq) == (seq - 1, seq)
    assert "changed" in problem.reason


def test_changed_action_text_is_found_at_its_entry(center):
    traffic(center)
    action = json.loads(stored_entry(center.engine, OPERATOR_SEQ)["action"])
    attacker_sql(center.engine)
    attacker_update(center.engine, OPERATOR_SEQ, action=json.dumps(action | {"amount_minor": 500000}))
    _checked, problem = check_chain(center.engine)
    assert problem.seq == OPERATOR_SEQ


def test_deleted_entry_is_reported_at_its_seq(center):
    traffic(center)
    attacker_sql(center.engine, "DELETE FROM audit_log WHERE seq = 3")
    checked, problem = check_chain(center.engine)
    assert (checked, problem.seq) == (2, 3)
    assert "missing" in problem.reason


def test_swapped_entries_are_reported(center):
    traffic(center)
    # Reorder: entries 2 and 3 trade places (seq is the primary key: via -1).
    attacker_sql(
        center.engine,
        "UPDATE audit_log SET seq = -1 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = -1",
    )
    checked, problem = check_chain(center.engine)
    assert (checked, problem.seq) == (1, 2)


def test_deleted_last_entry_is_reported_through_the_head(center):
    traffic(center)
    attacker_sql(center.engine, f"DELETE FROM audit_log WHERE seq = {ENTRIES}")
    checked, problem = check_chain(center.engine)
    assert (checked, problem.seq) == (ENTRIES - 1, ENTRIES)
    assert "removed" in problem.reason


# --- export and offline verification ----------------------------------------------------------


def test_export_verifies_offline_in_process_and_without_a_data_dir(center, tmp_path):
    traffic(center)
    path = tmp_path / "audit.jsonl"
    assert export(center, path) == {"entries": ENTRIES, "keys": 2, "tree_heads": HEADS, "file": str(path)}
    assert path.stat().st_mode & 0o077 == 0  # names, addresses and birth dates inside
    report = verify_export(path)
    assert report | {"head_entry_hash": None} == {
        "ok": True,
        "entries": ENTRIES,
        "signatures_checked": SIGNED_ENTRIES,
        "unsigned_entries": 1,
        "first_bad_seq": None,
        "problem": None,
        "center_id": center.center_id,
        "head_entry_hash": None,
        "tree_size": ENTRIES,
        "heads_checked": HEADS,
        "entries_after_newest_head": 0,
    }
    assert report["head_entry_hash"] == stored_entry(center.engine, ENTRIES)["entry_hash"]
    # A separate process with no data dir, no database, no center config.
    result = run_cli("center", ["audit", "verify-export", str(path), "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == report


def test_export_contents(center, tmp_path):
    people = traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    lines = export_lines(path)
    assert all(
        json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":")).encode() == line
        for line in lines
    )  # compact, one object per line
    header, *records = map(json.loads, lines)
    assert set(header) == {
        "format",
        "format_version",
        "center_id",
        "center_cert_pem",
        "exported_at_ms",
        "head",
    }
    # Keys first, then the entries, then the signed tree heads.
    assert [list(record) for record in records] == [["key"]] * KEYS + [["entry"]] * ENTRIES + [
        ["tree_head"]
    ] * HEADS
    document = load_document(path)
    assert (document["format"], document["format_version"], document["center_id"]) == (
        "tokenpay-audit-export",
        3,
        center.center_id,
    )
    assert document["head"] == {"seq": ENTRIES, "entry_hash": document["entries"][-1]["entry_hash"]}
    assert {k["kid"]: k["algorithm"] for k in document["keys"]} == {
        people["member"].kid: "ES256",
        people["store"].kid: "Ed25519",
    }
    assert [e["seq"] for e in document["entries"]] == list(range(1, ENTRIES + 1))
    first = document["entries"][0]
    assert b64url_decode(first["payload"]) == stored_entry(center.engine, 1)["payload"]
    assert first["action"]["action"] == "enrolled"


def test_streamed_in_small_batches(center, tmp_path):
    traffic(center)
    whole, batched = tmp_path / "whole.jsonl", tmp_path / "batched.jsonl"
    export(center, whole)
    export_audit(center.engine, batched, center_id=center.center_id, cert_pem=cert_pem(center), batch_rows=1)

    def without_time(path: Path) -> dict:
        return {k: v for k, v in load_document(path).items() if k != "exported_at_ms"}

    assert without_time(whole) == without_time(batched)
    assert export_lines(whole)[1:] == export_lines(batched)[1:]
    assert verify_export(batched)["ok"] is True


def test_line_over_the_cap_is_refused_at_its_entry(center, tmp_path, monkeypatch):
    traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    lines = export_lines(path)
    longest = max(map(len, lines))
    monkeypatch.setattr(audit_export_verify, "MAX_LINE_BYTES", longest)  # the cap leaves out the newline
    assert verify_export(path)["ok"] is True
    # Entry 3 padded with JSON whitespace: still valid JSON, but one byte over the cap.
    lines[KEYS + 3] += b" " * (longest + 1 - len(lines[KEYS + 3]))
    report = verify_export(write_lines(tmp_path / "long.jsonl", lines))
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, 3, 2)
    assert f"longer than {longest} bytes" in report["problem"]
    monkeypatch.setattr(audit_export_verify, "MAX_LINE_BYTES", 200)  # even the header is longer
    report = verify_export(path)
    assert (report["ok"], report["first_bad_seq"]) == (False, None)
    assert "line 1" in report["problem"] and "longer than 200 bytes" in report["problem"]


def test_key_line_after_an_entry_line_is_refused(center, tmp_path):
    people = traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    lines = export_lines(path)
    store_key = next(line for line in lines[1 : KEYS + 1] if people["store"].kid.encode() in line)
    lines.remove(store_key)
    lines.insert(KEYS + 1, store_key)  # after entry 1 (the member's), before entry 2 (the store's)
    report = verify_export(write_lines(tmp_path / "late-key.jsonl", lines))
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, 2, 1)
    assert "before the entries" in report["problem"]


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   ",
        b"garbage",
        b"[1]",
        b'{"entry": {}, "key": {}}',
        b'{"other": {}}',
        b'{"entry": {"seq": 3, "seq": 3}}',
        b'{"key": NaN}',
        b"\xff",
    ],
)
def test_blank_or_garbage_line_is_reported_at_its_place(center, tmp_path, line):
    traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    lines = export_lines(path)
    lines.insert(KEYS + 3, line)  # after entry 2, on line KEYS + 4
    report = verify_export(write_lines(tmp_path / "among-entries.jsonl", lines))
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, 3, 2), report
    assert f"line {KEYS + 4}" in report["problem"]
    lines = export_lines(path)
    lines.insert(1, line)  # between the header and the keys: no entry to blame
    report = verify_export(write_lines(tmp_path / "among-keys.jsonl", lines))
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, None, 0), report
    assert "line 2" in report["problem"]


@pytest.mark.parametrize("cut", [1, 30])
def test_truncated_last_line_is_reported_at_its_entry(center, tmp_path, cut):
    traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    truncated = tmp_path / "truncated.jsonl"
    # Cut within the last entry's line (the tree head lines after it go too); 1: only its newline.
    entries_end = KEYS + ENTRIES + 1
    truncated.write_bytes(b"".join(line + b"\n" for line in export_lines(path)[:entries_end])[:-cut])
    report = verify_export(truncated)
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, ENTRIES, ENTRIES - 1)
    assert "cut off" in report["problem"]


@pytest.mark.parametrize("field", ["payload", "signature"])
@pytest.mark.parametrize("seq", [2, 5])
def test_flipped_byte_in_exported_entry_is_found(center, tmp_path, field, seq):
    traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)

    def change(document):
        target = entry(document, seq)
        target[field] = b64url_encode(flip_byte(b64url_decode(target[field]), 20))

    report = verify_export(rewrite(path, tmp_path / "bad.jsonl", change))
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, seq, seq - 1)


def test_forged_payload_with_recomputed_chain_fails_its_signature(center, tmp_path):
    # The attacker rewrites the file consistently: the chain and head then
    # match, but nobody but the member can sign the forged bytes.
    traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    forged_seq = 5

    def change(document):
        target = entry(document, forged_seq)
        target["payload"] = b64url_encode(b64url_decode(target["payload"]).replace(b"1200", b"9900"))
        prev = entry(document, forged_seq - 1)["entry_hash"]
        for later in document["entries"][forged_seq - 1 :]:
            row = later | {
                "payload": b64url_decode(later["payload"]),
                "signature": b64url_decode(later["signature"]),
                "action": json.dumps(later["action"]),
                "prev_hash": prev,
            }
            later["prev_hash"], later["entry_hash"] = prev, chain_hash(prev, row)
            prev = later["entry_hash"]
        document["head"]["entry_hash"] = prev

    report = verify_export(rewrite(path, tmp_path / "forged.jsonl", change))
    assert (report["ok"], report["first_bad_seq"]) == (False, forged_seq)
    assert "signature" in report["problem"]


def test_entry_whose_key_is_not_exported_is_refused(center, tmp_path):
    people = traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)

    def drop_store_key(document):
        document["keys"] = [k for k in document["keys"] if k["kid"] != people["store"].kid]

    report = verify_export(rewrite(path, tmp_path / "nokey.jsonl", drop_store_key))
    assert (report["ok"], report["first_bad_seq"]) == (False, 2)  # the store's enrollment
    assert "not among the exported keys" in report["problem"]


def test_signed_entry_passed_off_as_local_is_refused(center, tmp_path):
    traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    report = verify_export(rewrite(path, tmp_path / "bad.jsonl", lambda d: entry(d, 3).update(alg="none")))
    assert (report["ok"], report["first_bad_seq"]) == (False, 3)


def test_cut_tail_in_export_is_found_through_the_head(center, tmp_path):
    traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    report = verify_export(rewrite(path, tmp_path / "cut.jsonl", lambda d: d["entries"].pop()))
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, ENTRIES, ENTRIES - 1)


def test_export_of_tampered_database_is_caught_offline(center, tmp_path):
    traffic(center)
    action = json.loads(stored_entry(center.engine, 3)["action"])
    attacker_sql(center.engine)
    attacker_update(center.engine, 3, action=json.dumps(action | {"amount_minor": 999999}))
    path = tmp_path / "audit.jsonl"
    export(center, path)
    report = verify_export(path)
    assert (report["ok"], report["first_bad_seq"]) == (False, 3)


def test_export_refuses_to_overwrite(center, tmp_path):
    traffic(center)
    path = tmp_path / "out" / "audit.jsonl"
    path.parent.mkdir()
    path.write_text("keep me")
    with pytest.raises(ApiError) as refused:
        export(center, path)
    assert refused.value.code == "file_exists"
    assert path.read_text() == "keep me"


def test_export_refuses_a_file_that_appears_while_it_writes(center, tmp_path, monkeypatch):
    traffic(center)
    path = tmp_path / "out" / "audit.jsonl"
    path.parent.mkdir()
    write_document = audit_export._write_document

    def racing_writer(*args):
        path.write_text("written meanwhile")
        return write_document(*args)

    monkeypatch.setattr(audit_export, "_write_document", racing_writer)
    with pytest.raises(ApiError) as refused:
        export(center, path)
    assert refused.value.code == "file_exists"
    assert path.read_text() == "written meanwhile"
    assert [p.name for p in path.parent.iterdir()] == ["audit.jsonl"]  # no temporary file left behind


def test_export_of_empty_chain_verifies(center, tmp_path):
    path = tmp_path / "audit.jsonl"
    assert export(center, path)["entries"] == 0
    report = verify_export(path)
    assert (report["ok"], report["entries"], report["signatures_checked"]) == (True, 0, 0)


def test_export_refuses_a_certificate_of_another_center(center, tmp_path):
    other = make_tls_certificate("center-other", center.signer.spki, ["localhost"], [])[0]
    with pytest.raises(ApiError):
        export_audit(center.engine, tmp_path / "a.jsonl", center_id=center.center_id, cert_pem=other)
    assert not (tmp_path / "a.jsonl").exists()


V2_HEADER = b'{"format": "tokenpay-audit-export", "format_version": 2'


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        b"not json\n",
        b"[]\n",
        b"{\n",
        V2_HEADER + b"\n",
        V2_HEADER + b"}",
        V2_HEADER + b"}\n",
        b'{"format": NaN}\n',
        b"\xff\xfe\n",
        b'{"a": 1} trailing\n',
        b"[" * 100_000 + b"\n",
        V2_HEADER + b', "format_version": 2}\n',  # a repeated name
        b'{\n"format": "tokenpay-audit-export",\n"format_version": 1\n}\n',  # the old one-document format
    ],
)
def test_malformed_files_are_reported_not_raised(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    report = verify_export(path)
    assert report["ok"] is False and report["problem"]


def test_malformed_entry_names_its_seq(center, tmp_path):
    traffic(center)
    path = tmp_path / "audit.jsonl"
    export(center, path)
    for change in (
        lambda d: entry(d, 3).pop("action"),
        lambda d: entry(d, 3).update(payload="!!"),
        lambda d: entry(d, 3).update(seq="3"),
        lambda d: entry(d, 3).update(action=[1]),
    ):
        report = verify_export(rewrite(path, tmp_path / "bad.jsonl", change))
        assert (report["ok"], report["first_bad_seq"]) == (False, 3), report


def test_missing_and_oversized_files(tmp_path, monkeypatch):
    assert verify_export(tmp_path / "absent.jsonl")["ok"] is False
    big = tmp_path / "big.jsonl"
    big.write_text("{" + " " * 100 + "}")
    monkeypatch.setattr(audit_export_verify, "MAX_EXPORT_FILE_BYTES", 50)
    report = verify_export(big)
    assert report["ok"] is False and "50 bytes" in report["problem"]


# --- the command line -------------------------------------------------------------------------------


def test_cli_verify_finds_tampering_in_a_center_data_dir(tmp_path):
    data_dir = tmp_path / "center"
    result = run_cli("center", ["init", "--data-dir", str(data_dir), "--currency", "JPY"])
    assert result.returncode == 0, result.stderr
    verify = run_cli("center", ["audit", "verify", "--data-dir", str(data_dir), "--json"])
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout) == {
        "ok": True,
        "entries": 0,
        "first_bad_seq": None,
        "problem": None,
        "tree_size": 0,
        "heads_checked": 0,
        "unsigned_entries": 0,
    }

    db_url = CenterConfig.load(data_dir).db_url
    engine = make_engine(db_url)
    with engine.begin() as conn:  # three local entries, as an operator's decisions would write
        for number in range(1, 4):
            audit.append(
                conn,
                kid="operator:test",
                alg="none",
                payload=b'{"n":%d}' % number,
                signature=b"",
                msg_type="topup_confirm",
                msg_id=f"U-{number:016x}",
                action={"n": number},
                now_ms=number,
            )
    engine.dispose()

    exported = tmp_path / "audit.jsonl"
    result = run_cli("center", ["audit", "export", str(exported), "--data-dir", str(data_dir), "--json"])
    assert result.returncode == 0, result.stderr
    check = run_cli("center", ["audit", "verify-export", str(exported), "--json"])
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["unsigned_entries"] == 3

    db_file = db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db_file) as db:  # the attacker edits the file directly
        db.execute("DROP TRIGGER audit_log_no_update")
        db.execute("UPDATE audit_log SET action = '{\"n\":20}' WHERE seq = 2")
    db.close()
    verify = run_cli("center", ["audit", "verify", "--data-dir", str(data_dir), "--json"])
    assert verify.returncode == 1, verify.stderr
    report = json.loads(verify.stdout)
    assert (report["ok"], report["entries"], report["first_bad_seq"]) == (False, 1, 2)
