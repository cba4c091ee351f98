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
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from center import audit, audit_export
from center.audit import chain_hash, verify_chain
from center.audit_export import export_audit, verify_export
from center.config import CenterConfig
from center.db import audit_log, make_engine
from center.errors import ApiError
from center.identity import make_tls_certificate
from paywire.envelope import Envelope, b64url_encode
from paywire.messages import parse_payload
from support import SoftwareSigner, run_cli

# What `traffic` writes: enroll member, enroll store, top-up, operator
# confirmation (unsigned), two payments.
ENTRIES = 6
SIGNED_ENTRIES = 5
OPERATOR_SEQ = 4


# --- helpers ----------------------------------------------------------------------

def receipt_result(response: dict) -> dict:
    _header, body = parse_payload(Envelope.from_json(response["receipt"]).payload)
    return body["result"]


def traffic(center) -> dict:
    member, store = SoftwareSigner(), SoftwareSigner("Ed25519")
    center.enroll(member.envelope("enroll", member.enroll_body("member"), aud=center.center_id))
    store_id = receipt_result(center.enroll(store.envelope(
        "enroll", store.enroll_body("store", name="Kissa Shop"), aud=center.center_id)))["member_id"]
    topup = {"amount_minor": 5000, "currency": "JPY", "method": "bank"}
    topup_id = receipt_result(center.submit(member.envelope("topup", topup, aud=center.center_id), "topup"))["topup_id"]
    center.decide_topup(topup_id, "confirm", decided_by="operator:test")
    for order in ("o-1", "o-2"):
        pay = {"payee": store_id, "payee_name": "Kissa Shop", "amount_minor": 1200, "currency": "JPY",
               "order_ref": order}
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
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def export(center, path: Path) -> dict:
    return export_audit(center.engine, path, center_id=center.center_id, cert_pem=cert_pem(center))


def rewrite(source: Path, target: Path, change) -> Path:
    document = json.loads(source.read_text())
    change(document)
    target.write_text(json.dumps(document, indent=1))
    return target


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def entry(document: dict, seq: int) -> dict:
    return next(e for e in document["entries"] if e["seq"] == seq)


# --- the chain in the database ---------------------------------------------------------------

def test_clean_chain_verifies_with_signed_and_local_entries(center):
    traffic(center)
    assert check_chain(center.engine) == (ENTRIES, None)
    operator = stored_entry(center.engine, OPERATOR_SEQ)
    assert (operator["kid"], operator["alg"], operator["msg_type"]) == ("operator:test", "none", "topup_confirm")


def test_append_only_triggers_refuse_update_and_delete(center):
    traffic(center)
    for statement in ("UPDATE audit_log SET action = '{}' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 2",
                      f"DELETE FROM audit_log WHERE seq = {ENTRIES}"):
        with pytest.raises(DBAPIError, match="append-only"):
            with center.engine.begin() as conn:
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
    attacker_sql(center.engine, "UPDATE audit_log SET seq = -1 WHERE seq = 2",
                 "UPDATE audit_log SET seq = 2 WHERE seq = 3", "UPDATE audit_log SET seq = 3 WHERE seq = -1")
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
    path = tmp_path / "audit.json"
    assert export(center, path) == {"entries": ENTRIES, "keys": 2, "file": str(path)}
    assert path.stat().st_mode & 0o077 == 0  # names, addresses and birth dates inside
    report = verify_export(path)
    assert report | {"head_entry_hash": None} == {
        "ok": True, "entries": ENTRIES, "signatures_checked": SIGNED_ENTRIES, "unsigned_entries": 1,
        "first_bad_seq": None, "problem": None, "center_id": center.center_id, "head_entry_hash": None}
    assert report["head_entry_hash"] == stored_entry(center.engine, ENTRIES)["entry_hash"]
    # A separate process with no data dir, no database, no center config.
    result = run_cli("center", ["audit", "verify-export", str(path), "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == report


def test_export_contents(center, tmp_path):
    people = traffic(center)
    path = tmp_path / "audit.json"
    export(center, path)
    document = json.loads(path.read_text())
    assert (document["format"], document["format_version"], document["center_id"]) == (
        "tokenpay-audit-export", 1, center.center_id)
    assert document["head"] == {"seq": ENTRIES, "entry_hash": document["entries"][-1]["entry_hash"]}
    assert {k["kid"]: k["algorithm"] for k in document["keys"]} == {people["member"].kid: "ES256",
                                                                    people["store"].kid: "Ed25519"}
    assert [e["seq"] for e in document["entries"]] == list(range(1, ENTRIES + 1))
    first = document["entries"][0]
    assert b64url_decode(first["payload"]) == stored_entry(center.engine, 1)["payload"]
    assert first["action"]["action"] == "enrolled"


def test_streamed_in_small_batches_and_read_in_small_chunks(center, tmp_path, monkeypatch):
    traffic(center)
    whole, batched = tmp_path / "whole.json", tmp_path / "batched.json"
    export(center, whole)
    export_audit(center.engine, batched, center_id=center.center_id, cert_pem=cert_pem(center), batch_rows=1)
    strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "exported_at_ms"}  # noqa: E731
    assert strip(whole) == strip(batched)
    monkeypatch.setattr(audit_export, "READ_CHUNK_CHARS", 7)  # values split across many reads
    assert verify_export(batched)["ok"] is True


def test_verifier_holds_one_element_at_a_time(center, tmp_path, monkeypatch):
    traffic(center)
    for _ in range(15):  # enough keys that the key list outgrows the per-value limit below
        signer = SoftwareSigner()
        center.enroll(signer.envelope("enroll", signer.enroll_body("member"), aud=center.center_id))
    path = tmp_path / "audit.json"
    export(center, path)
    document = json.loads(path.read_text())
    size = lambda value: len(json.dumps(value))  # noqa: E731
    limit = max(size(document["center_cert_pem"]), *map(size, document["keys"] + document["entries"])) + 100
    assert size(document["keys"]) > limit and size(document["entries"]) > limit
    monkeypatch.setattr(audit_export, "READ_CHUNK_CHARS", 64)  # the buffer holds one chunk plus one value
    monkeypatch.setattr(audit_export, "MAX_JSON_VALUE_CHARS", limit)
    assert verify_export(path)["ok"] is True
    monkeypatch.setattr(audit_export, "MAX_JSON_VALUE_CHARS", 200)  # smaller than one entry: refused clearly
    report = verify_export(path)
    assert report["ok"] is False and "longer than 200 characters" in report["problem"]


def test_reformatted_export_still_verifies(center, tmp_path):
    traffic(center)
    path = tmp_path / "audit.json"
    export(center, path)
    sorted_copy = tmp_path / "sorted.json"  # "entries" now comes before "head" and "keys"
    sorted_copy.write_text(json.dumps(json.loads(path.read_text()), indent=4, sort_keys=True))
    assert verify_export(sorted_copy)["ok"] is True


@pytest.mark.parametrize("field", ["payload", "signature"])
@pytest.mark.parametrize("seq", [2, 5])
def test_flipped_byte_in_exported_entry_is_found(center, tmp_path, field, seq):
    traffic(center)
    path = tmp_path / "audit.json"
    export(center, path)

    def change(document):
        target = entry(document, seq)
        target[field] = b64url_encode(flip_byte(b64url_decode(target[field]), 20))

    report = verify_export(rewrite(path, tmp_path / "bad.json", change))
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, seq, seq - 1)


def test_forged_payload_with_recomputed_chain_fails_its_signature(center, tmp_path):
    # The attacker rewrites the file consistently: the chain and head then
    # match, but nobody but the member can sign the forged bytes.
    traffic(center)
    path = tmp_path / "audit.json"
    export(center, path)
    forged_seq = 5

    def change(document):
        target = entry(document, forged_seq)
        target["payload"] = b64url_encode(b64url_decode(target["payload"]).replace(b"1200", b"9900"))
        prev = entry(document, forged_seq - 1)["entry_hash"]
        for later in document["entries"][forged_seq - 1:]:
            row = later | {"payload": b64url_decode(later["payload"]), "signature": b64url_decode(later["signature"]),
                           "action": json.dumps(later["action"]), "prev_hash": prev}
            later["prev_hash"], later["entry_hash"] = prev, chain_hash(prev, row)
            prev = later["entry_hash"]
        document["head"]["entry_hash"] = prev

    report = verify_export(rewrite(path, tmp_path / "forged.json", change))
    assert (report["ok"], report["first_bad_seq"]) == (False, forged_seq)
    assert "signature" in report["problem"]


def test_entry_whose_key_is_not_exported_is_refused(center, tmp_path):
    people = traffic(center)
    path = tmp_path / "audit.json"
    export(center, path)

    def drop_store_key(document):
        document["keys"] = [k for k in document["keys"] if k["kid"] != people["store"].kid]

    report = verify_export(rewrite(path, tmp_path / "nokey.json", drop_store_key))
    assert (report["ok"], report["first_bad_seq"]) == (False, 2)  # the store's enrollment
    assert "not among the exported keys" in report["problem"]


def test_signed_entry_passed_off_as_local_is_refused(center, tmp_path):
    traffic(center)
    path = tmp_path / "audit.json"
    export(center, path)
    report = verify_export(rewrite(path, tmp_path / "bad.json", lambda d: entry(d, 3).update(alg="none")))
    assert (report["ok"], report["first_bad_seq"]) == (False, 3)


def test_cut_tail_in_export_is_found_through_the_head(center, tmp_path):
    traffic(center)
    path = tmp_path / "audit.json"
    export(center, path)
    report = verify_export(rewrite(path, tmp_path / "cut.json", lambda d: d["entries"].pop()))
    assert (report["ok"], report["first_bad_seq"], report["entries"]) == (False, ENTRIES, ENTRIES - 1)


def test_export_of_tampered_database_is_caught_offline(center, tmp_path):
    traffic(center)
    action = json.loads(stored_entry(center.engine, 3)["action"])
    attacker_sql(center.engine)
    attacker_update(center.engine, 3, action=json.dumps(action | {"amount_minor": 999999}))
    path = tmp_path / "audit.json"
    export(center, path)
    report = verify_export(path)
    assert (report["ok"], report["first_bad_seq"]) == (False, 3)


def test_export_refuses_to_overwrite(center, tmp_path):
    traffic(center)
    path = tmp_path / "out" / "audit.json"
    path.parent.mkdir()
    path.write_text("keep me")
    with pytest.raises(ApiError) as refused:
        export(center, path)
    assert refused.value.code == "file_exists"
    assert path.read_text() == "keep me"


def test_export_refuses_a_file_that_appears_while_it_writes(center, tmp_path, monkeypatch):
    traffic(center)
    path = tmp_path / "out" / "audit.json"
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
    assert [p.name for p in path.parent.iterdir()] == ["audit.json"]  # no temporary file left behind


def test_export_of_empty_chain_verifies(center, tmp_path):
    path = tmp_path / "audit.json"
    assert export(center, path)["entries"] == 0
    report = verify_export(path)
    assert (report["ok"], report["entries"], report["signatures_checked"]) == (True, 0, 0)


def test_export_refuses_a_certificate_of_another_center(center, tmp_path):
    other = make_tls_certificate("center-other", center.signer.spki, ["localhost"], [])[0]
    with pytest.raises(ApiError):
        export_audit(center.engine, tmp_path / "a.json", center_id=center.center_id, cert_pem=other)
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b"{", b'{"format": "tokenpay-audit-export"', b'{"format": NaN}', b"\xff\xfe",
    b'{"format": "tokenpay-audit-export", "format_version": 1}', b'{"a": 1} trailing', b"[" * 100_000,
])
def test_malformed_files_are_reported_not_raised(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    report = verify_export(path)
    assert report["ok"] is False and report["problem"]


def test_malformed_entry_names_its_seq(center, tmp_path):
    traffic(center)
    path = tmp_path / "audit.json"
    export(center, path)
    for change in (lambda d: entry(d, 3).pop("action"), lambda d: entry(d, 3).update(payload="!!"),
                   lambda d: entry(d, 3).update(seq="3"), lambda d: entry(d, 3).update(action=[1])):
        report = verify_export(rewrite(path, tmp_path / "bad.json", change))
        assert (report["ok"], report["first_bad_seq"]) == (False, 3), report


def test_missing_and_oversized_files(tmp_path, monkeypatch):
    assert verify_export(tmp_path / "absent.json")["ok"] is False
    big = tmp_path / "big.json"
    big.write_text("{" + " " * 100 + "}")
    monkeypatch.setattr(audit_export, "MAX_EXPORT_FILE_BYTES", 50)
    report = verify_export(big)
    assert report["ok"] is False and "50 bytes" in report["problem"]


# --- the command line -------------------------------------------------------------------------------

def test_cli_verify_finds_tampering_in_a_center_data_dir(tmp_path):
    data_dir = tmp_path / "center"
    result = run_cli("center", ["init", "--data-dir", str(data_dir), "--currency", "JPY"])
    assert result.returncode == 0, result.stderr
    verify = run_cli("center", ["audit", "verify", "--data-dir", str(data_dir), "--json"])
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout) == {"ok": True, "entries": 0, "first_bad_seq": None, "problem": None}

    db_url = CenterConfig.load(data_dir).db_url
    engine = make_engine(db_url)
    with engine.begin() as conn:  # three local entries, as an operator's decisions would write
        for number in range(1, 4):
            audit.append(conn, kid="operator:test", alg="none", payload=b'{"n":%d}' % number, signature=b"",
                         msg_type="topup_confirm", msg_id=f"U-{number:016x}", action={"n": number}, now_ms=number)
    engine.dispose()

    exported = tmp_path / "audit.json"
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
