"""Store payouts: pain.001.001.09 export, settlement, crash windows and the CLI,
on SQLite and PostgreSQL, with data made through the real domain API."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import rfc8785
from fixtures_payouts import claim_payout, enroll, pay, store_with_payout, top_up
from sqlalchemy import func, select
from sqlalchemy import text as sa_text
from support import run_cli

from center.errors import ApiError
from center.keys.identity import CenterSigner
from center.ledger import audit as audit_module
from center.ledger import payouts as payouts_module
from center.ledger.audit import verify_chain
from center.ledger.book import PAYOUTS_PENDING, PAYOUTS_SETTLED, balance_of, check_ledger
from center.ledger.pain001 import PAIN_001_NS, format_decimal_amount
from center.ledger.payouts import MAX_PAYOUTS_PER_FILE, export_payouts, settle_payouts
from center.pipeline.service import Center
from center.storage.config import CenterConfig
from center.storage.db import audit_log, make_engine, payouts, transfers

NS = {"p": PAIN_001_NS}
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def export(center: Center, path: Path, **options) -> dict:
    return export_payouts(
        center.engine,
        path,
        center_id=center.center_id,
        currency=options.pop("currency", "JPY"),
        now_ms=options.pop("now_ms", NOW_MS),
        **options,
    )


def payout_rows(center: Center) -> dict[str, dict]:
    with center.engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(select(payouts)).mappings()}


def text(element: ET.Element, path: str) -> str:
    found = element.find(path, NS)
    assert found is not None, f"{path} missing"
    return found.text


def children(element: ET.Element) -> list[str]:
    return [child.tag.removeprefix("{" + PAIN_001_NS + "}") for child in element]


@pytest.fixture
def out(tmp_path) -> Path:
    """A directory for payout files only (the SQLite database lives in tmp_path)."""
    directory = tmp_path / "files"
    directory.mkdir()
    return directory


def assert_books_balanced(center: Center) -> None:
    with center.engine.connect() as conn:
        report = check_ledger(conn)
        assert report.ok, report.problems
        checked, problem = verify_chain(conn)
        assert problem is None and checked > 0


# --- amounts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount_minor, currency, expected",
    [
        (1500, "JPY", "1500"),
        (0, "JPY", "0"),
        (1250, "EUR", "12.50"),
        (5, "EUR", "0.05"),
        (100, "EUR", "1.00"),
        (10**12, "EUR", "10000000000.00"),
        (1, "KWD", "0.001"),
        (123456, "BHD", "123.456"),
    ],
)
def test_decimal_amount_uses_the_currency_exponent(amount_minor, currency, expected):
    assert format_decimal_amount(amount_minor, currency) == expected


@pytest.mark.parametrize(
    "amount_minor, currency, code",
    [(-1, "EUR", None), (1.5, "EUR", None), (True, "EUR", None), (100, "XXX", "invalid_request")],
)
def test_decimal_amount_refuses_negatives_floats_and_unknown_currencies(amount_minor, currency, code):
    with pytest.raises((ValueError, ApiError)) as caught:
        format_decimal_amount(amount_minor, currency)
    if code:
        assert caught.value.code == code


# --- export -------------------------------------------------------------------------


def test_export_writes_pain001_matching_the_rows(center, out):
    first, first_claim = store_with_payout(center, 1500, name="Corner Shop", bank_account="JP-0001-1111111")
    second, second_claim = store_with_payout(
        center, 2700, name="Ramen & Sons <Kanda>", bank_account="JP-0002-2222222"
    )
    path = out / "pain001.xml"

    summary = export(center, path)

    assert summary["count"] == 2 and summary["total_minor"] == 4200 and summary["currency"] == "JPY"
    assert (
        summary["file"] == str(path) and summary["more_pending"] is False and summary["held_payout_ids"] == []
    )
    root = ET.parse(path).getroot()
    assert root.tag == f"{{{PAIN_001_NS}}}Document"
    header = root.find("p:CstmrCdtTrfInitn/p:GrpHdr", NS)
    assert children(header) == ["MsgId", "CreDtTm", "NbOfTxs", "CtrlSum", "InitgPty"]  # the schema's order
    assert text(header, "p:MsgId") == summary["batch_id"]
    assert text(header, "p:CreDtTm") == "2026-01-01T00:00:00+00:00"
    assert (text(header, "p:NbOfTxs"), text(header, "p:CtrlSum")) == ("2", "4200")
    assert text(header, "p:InitgPty/p:Nm") == center.center_id
    info = root.find("p:CstmrCdtTrfInitn/p:PmtInf", NS)
    assert children(info) == [
        "PmtInfId",
        "PmtMtd",
        "NbOfTxs",
        "CtrlSum",
        "ReqdExctnDt",
        "Dbtr",
        "DbtrAcct",
        "DbtrAgt",
        "CdtTrfTxInf",
        "CdtTrfTxInf",
    ]
    assert (text(info, "p:PmtMtd"), text(info, "p:NbOfTxs"), text(info, "p:CtrlSum")) == ("TRF", "2", "4200")
    assert text(info, "p:ReqdExctnDt/p:Dt") == "2026-01-01"
    assert text(info, "p:Dbtr/p:Nm") == center.center_id
    assert text(info, "p:DbtrAcct/p:Id/p:Othr/p:Id") == center.center_id
    assert text(info, "p:DbtrAgt/p:FinInstnId/p:Othr/p:Id") == "NOTPROVIDED"

    rows = payout_rows(center)
    transactions = info.findall("p:CdtTrfTxInf", NS)
    assert [text(t, "p:PmtId/p:EndToEndId") for t in transactions] == [
        first_claim["payout_id"],
        second_claim["payout_id"],
    ]
    for transaction, store in zip(transactions, (first, second), strict=True):
        payout_id = text(transaction, "p:PmtId/p:EndToEndId")
        row = rows[payout_id]
        amount = transaction.find("p:Amt/p:InstdAmt", NS)
        assert (amount.text, amount.get("Ccy")) == (str(row["amount_minor"]), "JPY")
        assert text(transaction, "p:Cdtr/p:Nm") == store.name
        assert text(transaction, "p:CdtrAcct/p:Id/p:Othr/p:Id") == row["bank_account"] == store.bank_account
        assert text(transaction, "p:RmtInf/p:Ustrd") == f"tokenpay payout {payout_id}"
        assert (row["status"], row["batch_id"], row["exported_at_ms"]) == (
            "exported",
            summary["batch_id"],
            NOW_MS,
        )
    assert_books_balanced(center)


def test_export_audit_entry_records_the_batch_and_file_hash(center, out):
    store_with_payout(center, 900)
    path = out / "batch.xml"
    summary = export(center, path)
    with center.engine.connect() as conn:
        entry = (
            conn.execute(select(audit_log).where(audit_log.c.msg_type == "payouts_export")).mappings().one()
        )
    assert (entry["kid"], entry["alg"], entry["msg_id"]) == ("operator:payouts", "none", summary["batch_id"])
    action = json.loads(entry["action"])
    assert entry["payload"] == rfc8785.dumps(action)
    assert action["file_sha256"] == summary["file_sha256"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == summary["file_sha256"]
    assert action["payout_ids"] == summary["payout_ids"] and action["total_minor"] == 900


def test_export_in_a_two_decimal_currency_formats_minor_units(center, out):
    store_with_payout(center, 1250)
    store_with_payout(center, 5)
    path = out / "eur.xml"
    summary = export(center, path, currency="EUR")
    root = ET.parse(path).getroot()
    assert summary["total_minor"] == 1255
    assert text(root, "p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum") == "12.55"
    assert text(root, "p:CstmrCdtTrfInitn/p:PmtInf/p:CtrlSum") == "12.55"
    amounts = root.findall("p:CstmrCdtTrfInitn/p:PmtInf/p:CdtTrfTxInf/p:Amt/p:InstdAmt", NS)
    assert [(a.text, a.get("Ccy")) for a in amounts] == [("12.50", "EUR"), ("0.05", "EUR")]


def test_export_with_nothing_pending_writes_no_file(center, out):
    path = out / "empty.xml"
    summary = export(center, path)
    assert summary["count"] == 0 and summary["batch_id"] is None and summary["file"] is None
    assert not path.exists() and list(out.iterdir()) == []
    # Already exported payouts are not pending either.
    store_with_payout(center, 700)
    export(center, out / "first.xml")
    assert export(center, path)["count"] == 0 and not path.exists()
    with center.engine.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(audit_log).where(audit_log.c.msg_type == "payouts_export")
            ).scalar_one()
            == 1
        )


def test_export_refuses_to_overwrite_a_file(center, out):
    _store, claim = store_with_payout(center, 1200)
    path = out / "already.xml"
    path.write_bytes(b"the bank's copy")
    with pytest.raises(ApiError) as caught:
        export(center, path)
    assert caught.value.code == "file_exists" and caught.value.status == 409
    assert path.read_bytes() == b"the bank's copy"
    assert payout_rows(center)[claim["payout_id"]]["status"] == "pending"
    assert sorted(p.name for p in out.iterdir()) == ["already.xml"]


def test_export_takes_at_most_the_limit_per_file(center, out):
    assert MAX_PAYOUTS_PER_FILE == 10_000
    member = enroll(center, "member")
    top_up(center, member, 600)
    _a, first = store_with_payout(center, 100, member=member)
    _b, second = store_with_payout(center, 200, member=member)
    _c, third = store_with_payout(center, 300, member=member)

    one = export(center, out / "one.xml", max_payouts=2)
    two = export(center, out / "two.xml", max_payouts=2)

    assert (one["count"], one["more_pending"], one["payout_ids"]) == (
        2,
        True,
        [first["payout_id"], second["payout_id"]],
    )
    assert (two["count"], two["more_pending"], two["payout_ids"]) == (1, False, [third["payout_id"]])
    assert one["batch_id"] != two["batch_id"]
    with pytest.raises(ValueError):
        export(center, out / "big.xml", max_payouts=MAX_PAYOUTS_PER_FILE + 1)


def test_unusable_bank_account_is_held_back_not_truncated(center, out):
    _good, good_claim = store_with_payout(center, 400)
    _bad, bad_claim = store_with_payout(center, 500)
    # Enrollment refuses accounts over 34 characters; a row written before that
    # rule (or by hand) must still never be truncated into a wrong account.
    with center.engine.begin() as conn:
        conn.execute(
            sa_text("UPDATE payouts SET bank_account = :account WHERE id = :id"),
            {"account": "DE-" + "9" * 40, "id": bad_claim["payout_id"]},
        )
    summary = export(center, out / "held.xml")
    assert summary["payout_ids"] == [good_claim["payout_id"]]
    assert summary["held_payout_ids"] == [bad_claim["payout_id"]]
    assert payout_rows(center)[bad_claim["payout_id"]]["status"] == "pending"
    assert "9" * 40 not in (out / "held.xml").read_text()


def test_settlement_account_is_configurable_and_checked(center, out):
    store_with_payout(center, 800)
    with pytest.raises(ApiError) as caught:
        export(center, out / "bad.xml", settlement_account="x" * 35)
    assert caught.value.code == "invalid_request"
    path = out / "ok.xml"
    export(center, path, settlement_account="JP-9999-0000001")
    root = ET.parse(path).getroot()
    assert text(root, "p:CstmrCdtTrfInitn/p:PmtInf/p:DbtrAcct/p:Id/p:Othr/p:Id") == "JP-9999-0000001"


# --- crash windows --------------------------------------------------------------------


def test_failure_before_commit_leaves_no_file_and_payouts_pending(center, out, monkeypatch):
    _store, claim = store_with_payout(center, 1000)

    def power_cut(*_args, **_kwargs):
        raise RuntimeError("simulated crash before commit")

    monkeypatch.setattr(audit_module, "append", power_cut)
    with pytest.raises(RuntimeError):
        export(center, out / "lost.xml")
    monkeypatch.undo()

    assert list(out.iterdir()) == []  # neither the file nor its temporary copy
    row = payout_rows(center)[claim["payout_id"]]
    assert (row["status"], row["batch_id"], row["exported_at_ms"]) == ("pending", None, None)
    assert export(center, out / "retry.xml")["count"] == 1
    assert_books_balanced(center)


def test_file_lost_after_commit_is_recreated_from_the_batch_id(center, out, monkeypatch):
    _store, claim = store_with_payout(center, 3300)
    path = out / "batch.xml"

    def no_link(*_args, **_kwargs):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(payouts_module.os, "link", no_link)
    with pytest.raises(ApiError) as caught:
        export(center, path)
    monkeypatch.undo()
    assert caught.value.code == "file_not_written"
    assert list(out.iterdir()) == []
    row = payout_rows(center)[claim["payout_id"]]
    assert row["status"] == "exported"
    batch_id = row["batch_id"]
    assert batch_id in caught.value.message

    again = export(center, path, batch_id=batch_id, now_ms=NOW_MS + 60_000)
    assert (again["batch_id"], again["count"], again["total_minor"]) == (batch_id, 1, 3300)
    assert again["identical_to_original"] is True
    root = ET.parse(path).getroot()
    assert text(root, "p:CstmrCdtTrfInitn/p:GrpHdr/p:MsgId") == batch_id
    assert text(root, "p:CstmrCdtTrfInitn/p:PmtInf/p:CdtTrfTxInf/p:PmtId/p:EndToEndId") == claim["payout_id"]
    assert payout_rows(center)[claim["payout_id"]] == row  # re-creating changes nothing
    assert_books_balanced(center)


def test_reexport_is_byte_identical_and_refused_once_settled(center, out):
    store_with_payout(center, 1800)
    store_with_payout(center, 200)
    original = out / "original.xml"
    summary = export(center, original)
    copy = out / "copy.xml"
    again = export(center, copy, batch_id=summary["batch_id"], now_ms=NOW_MS + 3_600_000)
    assert copy.read_bytes() == original.read_bytes()
    assert again["file_sha256"] == summary["file_sha256"] and again["identical_to_original"] is True
    with pytest.raises(ApiError) as caught:
        export(center, out / "nope.xml", batch_id="B-0000000000000000")
    assert caught.value.code == "unknown_batch" and caught.value.status == 404
    with pytest.raises(ApiError) as caught:
        export(center, copy, batch_id=summary["batch_id"])
    assert caught.value.code == "file_exists"

    settle_payouts(center.engine, now_ms=NOW_MS + 7_200_000)
    with pytest.raises(ApiError) as caught:
        export(center, out / "twice.xml", batch_id=summary["batch_id"])
    assert caught.value.code == "batch_settled"
    assert not (out / "twice.xml").exists()
    assert_books_balanced(center)


# --- settle ---------------------------------------------------------------------------


def test_payouts_move_pending_exported_settled_and_the_ledger_balances(center, out):
    _a, first = store_with_payout(center, 1500)
    _b, second = store_with_payout(center, 2500)
    with center.engine.connect() as conn:
        assert balance_of(conn, PAYOUTS_PENDING) == 4000 and balance_of(conn, PAYOUTS_SETTLED) == 0
    assert {r["status"] for r in payout_rows(center).values()} == {"pending"}

    export(center, out / "batch.xml")
    assert {r["status"] for r in payout_rows(center).values()} == {"exported"}
    settled = settle_payouts(center.engine, now_ms=NOW_MS)
    assert settled["count"] == 2

    rows = payout_rows(center)
    assert {r["status"] for r in rows.values()} == {"settled"}
    assert {r["settled_at_ms"] for r in rows.values()} == {NOW_MS}
    assert settled["payout_ids"] == [first["payout_id"], second["payout_id"]]
    assert settled["total_minor"] == 4000 and settled["more_exported"] is False
    with center.engine.connect() as conn:
        assert balance_of(conn, PAYOUTS_PENDING) == 0
        assert balance_of(conn, PAYOUTS_SETTLED) == 4000
        settles = conn.execute(
            select(
                transfers.c.ref,
                transfers.c.amount_minor,
                transfers.c.debit_account,
                transfers.c.credit_account,
            ).where(transfers.c.kind == "settle")
        ).all()
    assert sorted(settles) == sorted(
        [
            (first["payout_id"], 1500, PAYOUTS_PENDING, PAYOUTS_SETTLED),
            (second["payout_id"], 2500, PAYOUTS_PENDING, PAYOUTS_SETTLED),
        ]
    )
    assert_books_balanced(center)


def test_settle_twice_settles_nothing_the_second_time(center, out):
    store_with_payout(center, 600)
    export(center, out / "batch.xml")
    first = settle_payouts(center.engine, now_ms=NOW_MS)
    with center.engine.connect() as conn:
        audit_entries = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
    second = settle_payouts(center.engine, now_ms=NOW_MS + 1)
    assert first["count"] == 1 and first["total_minor"] == 600
    assert (second["count"], second["total_minor"], second["payout_ids"]) == (0, 0, [])
    with center.engine.connect() as conn:
        assert balance_of(conn, PAYOUTS_SETTLED) == 600
        assert (
            conn.execute(
                select(func.count()).select_from(transfers).where(transfers.c.kind == "settle")
            ).scalar_one()
            == 1
        )
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == audit_entries
        entry = (
            conn.execute(select(audit_log).where(audit_log.c.msg_type == "payouts_settle")).mappings().one()
        )
    assert entry["kid"] == "operator:payouts" and json.loads(entry["action"])["count"] == 1
    assert_books_balanced(center)


def test_payouts_batches_and_settlements_have_ids_of_their_own(center, out):
    # Operators shared O- with payouts (operators are A- now: payouts keep O-, which store wallets
    # check) and settlements shared S- with stores (now C-): each kind has its own letter.
    _store, claim = store_with_payout(center, 700)
    batch_id = export(center, out / "batch.xml")["batch_id"]
    settle_payouts(center.engine, now_ms=NOW_MS)
    with center.engine.connect() as conn:
        settlement = conn.execute(
            select(audit_log.c.msg_id).where(audit_log.c.msg_type == "payouts_settle")
        ).scalar()
    assert re.fullmatch(r"O-[0-9a-f]{16}", claim["payout_id"])
    assert re.fullmatch(r"B-[0-9a-f]{16}", batch_id) and re.fullmatch(r"C-[0-9a-f]{16}", settlement)


def test_settle_leaves_pending_payouts_alone_and_can_take_one_batch(center, out):
    member = enroll(center, "member")
    top_up(center, member, 1000)
    _a, first = store_with_payout(center, 100, member=member)
    _b, second = store_with_payout(center, 200, member=member)
    one = export(center, out / "one.xml", max_payouts=1)
    export(center, out / "two.xml", max_payouts=1)
    _store, _third = store_with_payout(center, 300, member=member)  # still pending

    settled = settle_payouts(center.engine, now_ms=NOW_MS, batch_id=one["batch_id"])
    assert settled["payout_ids"] == [first["payout_id"]]
    statuses = {pid: r["status"] for pid, r in payout_rows(center).items()}
    assert statuses[first["payout_id"]] == "settled" and statuses[second["payout_id"]] == "exported"
    assert sorted(statuses.values()) == ["exported", "pending", "settled"]
    with center.engine.connect() as conn:
        assert balance_of(conn, PAYOUTS_PENDING) == 500 and balance_of(conn, PAYOUTS_SETTLED) == 100
    assert_books_balanced(center)


def test_a_store_can_claim_again_after_its_payout_was_exported(center, out):
    member = enroll(center, "member")
    top_up(center, member, 1000)
    store, _first = store_with_payout(center, 400, member=member)
    export(center, out / "one.xml")
    pay(center, member, store, 250)
    second = claim_payout(center, store)
    summary = export(center, out / "two.xml")
    assert summary["payout_ids"] == [second["payout_id"]] and summary["total_minor"] == 250
    settle_payouts(center.engine, now_ms=NOW_MS)
    with center.engine.connect() as conn:
        assert balance_of(conn, PAYOUTS_SETTLED) == 650 and balance_of(conn, PAYOUTS_PENDING) == 0
    assert_books_balanced(center)


def test_concurrent_exports_and_settles_take_each_payout_once(center, out):
    member = enroll(center, "member")
    top_up(center, member, 10_000)
    claims = [store_with_payout(center, 100 * (i + 1), member=member)[1]["payout_id"] for i in range(6)]

    def run_both(action):
        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(action, range(2)))

    exports = run_both(lambda i: export(center, out / f"race-{i}.xml"))
    exported_ids = [pid for summary in exports for pid in summary["payout_ids"]]
    assert sorted(exported_ids) == sorted(claims)
    settles = run_both(lambda i: settle_payouts(center.engine, now_ms=NOW_MS + i))
    assert sorted(pid for summary in settles for pid in summary["payout_ids"]) == sorted(claims)
    with center.engine.connect() as conn:
        assert balance_of(conn, PAYOUTS_SETTLED) == 2100 and balance_of(conn, PAYOUTS_PENDING) == 0
    assert_books_balanced(center)


# --- command line ---------------------------------------------------------------------


def cli_json(args: list[str]) -> dict:
    result = run_cli("center", [*args, "--json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_exports_and_settles(tmp_path, db_url, center_token, center_token_signer):
    data_dir = tmp_path / "center"
    init = run_cli("center", ["init", "--data-dir", str(data_dir), "--db", db_url, "--currency", "JPY"])
    assert init.returncode == 0, init.stderr
    config = CenterConfig.load(data_dir)
    # Data goes in through an in-process Center on this data dir's database. Its
    # receipts are signed with the test session's token key, not the data dir's:
    # SoftHSM reads SOFTHSM2_CONF once per process, and this process already
    # uses the session's token directory (DESIGN.md). The commands under test
    # sign nothing.
    _token, key, _pin = center_token
    engine = make_engine(config.db_url)
    center = Center(
        engine=engine,
        signer=CenterSigner(center_token_signer, key, config.center_id),
        currency=config.currency,
    )
    store, claim = store_with_payout(center, 4321, name="Kanda Books")
    engine.dispose()
    path = tmp_path / "out" / "pain001.xml"
    path.parent.mkdir()

    exported = cli_json(["payouts", "export", str(path), "--data-dir", str(data_dir)])
    assert (exported["count"], exported["total_minor"], exported["currency"]) == (1, 4321, "JPY")
    root = ET.parse(path).getroot()
    assert text(root, "p:CstmrCdtTrfInitn/p:GrpHdr/p:MsgId") == exported["batch_id"]
    assert text(root, "p:CstmrCdtTrfInitn/p:GrpHdr/p:InitgPty/p:Nm") == config.center_id
    transaction = root.find("p:CstmrCdtTrfInitn/p:PmtInf/p:CdtTrfTxInf", NS)
    assert text(transaction, "p:PmtId/p:EndToEndId") == claim["payout_id"]
    assert text(transaction, "p:CdtrAcct/p:Id/p:Othr/p:Id") == store.bank_account
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"

    refused = run_cli("center", ["payouts", "export", str(path), "--data-dir", str(data_dir)])
    assert refused.returncode != 0 and "already exists" in refused.stderr
    again = run_cli("center", ["payouts", "export", str(tmp_path / "none.xml"), "--data-dir", str(data_dir)])
    assert again.returncode == 0 and "no pending payouts" in again.stdout
    assert not (tmp_path / "none.xml").exists()

    settled = cli_json(["payouts", "settle", "--data-dir", str(data_dir)])
    assert (settled["count"], settled["total_minor"], settled["payout_ids"]) == (
        1,
        4321,
        [claim["payout_id"]],
    )
    assert cli_json(["payouts", "settle", "--data-dir", str(data_dir)])["count"] == 0
    assert cli_json(["ledger", "check", "--data-dir", str(data_dir)])["ok"] is True
    # The payout entries are in the audit chain. The tree heads were signed with the session's token
    # key (see above), not this data dir's: `center audit verify` rightly refuses them, naming the key.
    engine = make_engine(config.db_url)
    with engine.connect() as conn:
        checked, problem = verify_chain(conn)
    engine.dispose()
    assert problem is None and checked >= 7
    refused = run_cli("center", ["audit", "verify", "--data-dir", str(data_dir)])
    assert refused.returncode == 1 and "key" in refused.stdout + refused.stderr
