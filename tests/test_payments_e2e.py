"""The money story end to end over HTTPS: real `center` and `wallet` processes,
SoftHSM tokens, SQLite and PostgreSQL; plus a lost answer and a forged receipt."""

from __future__ import annotations

import json
import shutil

import pytest
from relay_support import Relay
from sqlalchemy import create_engine, func, select, text
from support import CenterProcess, free_port, run_cli
from test_wallet_e2e import WalletUser

from center.storage.db import normalise_url, payments

pytestmark = pytest.mark.slow


def center_cli(center: CenterProcess, *args: str) -> dict:
    result = run_cli("center", [*args, "--data-dir", str(center.data_dir), "--json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def count_payments(center: CenterProcess) -> int:
    config = json.loads((center.data_dir / "config.json").read_text())
    engine = create_engine(normalise_url(config["db_url"]))
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(payments)).scalar_one()
    engine.dispose()
    return total


def enrolled_pair(tmp_path, make_softhsm_token, center: CenterProcess) -> tuple[WalletUser, WalletUser, str]:
    member, store = (
        WalletUser(tmp_path, make_softhsm_token, "m"),
        WalletUser(tmp_path, make_softhsm_token, "s"),
    )
    member.init()
    store.init("--key-type", "ed25519")
    assert member.enroll_member(center).returncode == 0
    result = store.run(
        "enroll",
        "--center",
        center.url,
        "--center-cert",
        str(center.cert),
        "--store",
        "--name",
        "Corner Shop",
        "--address",
        "2-2 Shibuya",
        "--bank-account",
        "JP-0009-7654321",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return member, store, json.loads(result.stdout)["member_id"]


def fund(member: WalletUser, center: CenterProcess, amount: str) -> None:
    topup_id = member.json("topup", amount, "--method", "bank")["topup_id"]
    assert member.json("balance")["pending_topups"][0]["topup_id"] == topup_id
    assert center_cli(center, "operator", "confirm-topup", topup_id)["status"] == "confirmed"


def test_the_whole_money_story(tmp_path, make_softhsm_token, live_center):
    member, store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "10000")
    assert member.json("balance") | {"pending_topups": None} == {
        "balance_minor": 10000,
        "currency": "JPY",
        "member_id": member.json("status")["member_id"],
        "pending_topups": None,
        "source": "center",
    }

    paid = member.json("pay", "--store", store_id, "--amount", "3500", "--order", "A-1001", "--yes")
    assert paid["balance_minor"] == 6500 and paid["payment_id"].startswith("P-")
    too_much = member.run("pay", "--store", store_id, "--amount", "6501", "--order", "A-1002", "--yes")
    # stderr: the confirmation block (amount, store id, quoted name, order), then exactly one error line.
    assert too_much.returncode != 0
    assert (
        too_much.stderr.strip()
        .splitlines()[-1]
        .startswith("error: the center refused it (insufficient_funds)")
    )
    assert f"store id  {store_id}" in too_much.stderr and '"Corner Shop"' in too_much.stderr
    assert "6501 JPY" in too_much.stderr.splitlines()[0]
    assert member.json("balance")["balance_minor"] == 6500

    notices = store.json("notices")
    assert [n["payment_id"] for n in notices["notices"]] == [paid["payment_id"]] and notices["new"] == 1
    assert store.json("notices")["new"] == 0

    refund = store.json("refund", paid["payment_id"], "--amount", "500")
    assert refund["amount_minor"] == 500 and refund["balance_minor"] == 3000
    over = store.run("refund", paid["payment_id"], "--amount", "3001")
    assert over.returncode != 0 and "refund_exceeds_payment" in over.stderr
    payout = store.json("payout")
    assert payout["amount_minor"] == 3000 and payout["status"] == "pending"

    export = tmp_path / "pain001.xml"
    exported = center_cli(live_center, "payouts", "export", str(export))
    assert exported["count"] == 1 and export.exists()
    assert center_cli(live_center, "payouts", "settle")["count"] == 1
    assert center_cli(live_center, "ledger", "check")["ok"] is True
    assert center_cli(live_center, "audit", "verify")["ok"] is True

    assert member.json("balance")["balance_minor"] == 7000
    verify_export = run_cli(
        "center", ["audit", "export", str(tmp_path / "audit.jsonl"), "--data-dir", str(live_center.data_dir)]
    )
    assert verify_export.returncode == 0, verify_export.stderr
    offline = run_cli("center", ["audit", "verify-export", str(tmp_path / "audit.jsonl"), "--json"])
    assert offline.returncode == 0 and json.loads(offline.stdout)["signatures_checked"] >= 8
    history = member.json("history", WALLET_PASSWORD_B_FILE="")
    kinds = [(e["type"], e["outcome"]) for e in history["entries"]]
    for expected in [
        ("enroll", "accepted"),
        ("topup", "accepted"),
        ("topup_confirmed", "confirmed"),
        ("pay", "accepted"),
        ("pay", "refused"),
        ("refund_received", "credited"),
    ]:
        assert expected in kinds, kinds


def test_paying_without_yes_and_without_a_terminal_signs_nothing(tmp_path, make_softhsm_token, live_center):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    counter = member.json("status")["counter"]
    result = member.run("pay", "--store", store_id, "--amount", "1", "--order", "x")
    assert result.returncode != 0 and "--yes" in result.stderr
    assert member.json("status")["counter"] == counter


def test_bad_amounts_are_one_line_errors(tmp_path, make_softhsm_token, live_center):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    for amount in ("12.5", "-3", "0", "abc", "1e3", "99999999999999999"):
        result = member.run("pay", "--store", store_id, "--amount", amount, "--order", "x", "--yes")
        assert result.returncode != 0 and result.stderr.startswith("error: "), (amount, result.stderr)
        assert result.stderr.strip().count("\n") == 0
    result = member.run("topup", "100", "--method", "bitcoin")
    assert result.returncode != 0 and "--method" in result.stderr


def test_lost_answer_then_sync_applies_the_payment_once(tmp_path, make_softhsm_token, live_center):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "5000")
    # Connection 1: the wallet looks up the store's name; connection 2: the payment.
    proxy = Relay(live_center.port, lambda number: "drop" if number == 2 else "pass")
    member.json("sync", "--center", f"https://127.0.0.1:{proxy.port}")  # empty outbox: only moves the URL
    try:
        lost = member.json("pay", "--store", store_id, "--amount", "1200", "--order", "L-1", "--yes")
    finally:
        proxy.close()
    assert lost["status"] == "queued"
    assert count_payments(live_center) == 1, "the center applied it; only the answer was lost"
    assert [e["type"] for e in member.json("history")["outbox"]] == ["pay"]

    synced = member.json("sync", "--center", live_center.url)
    assert [d["type"] for d in synced["delivered"]] == ["pay"] and synced["pending"] == 0
    assert synced["delivered"][0]["result"]["balance_minor"] == 3800
    assert member.json("sync")["delivered"] == []
    assert count_payments(live_center) == 1
    assert member.json("balance")["balance_minor"] == 3800


def test_receipt_from_a_key_other_than_the_pinned_one_is_not_recorded(
    tmp_path, make_softhsm_token, live_center
):
    """An impostor with the center's stolen TLS key but another receipt key: the wallet records nothing."""
    member = WalletUser(tmp_path, make_softhsm_token, "v")
    member.init()
    impostor_dir = tmp_path / "impostor"
    assert run_cli("center", ["init", "--data-dir", str(impostor_dir)]).returncode == 0
    shutil.copy(live_center.cert, impostor_dir / "center-cert.pem")
    shutil.copy(live_center.data_dir / "tls" / "key.pem", impostor_dir / "tls" / "key.pem")
    config = json.loads((impostor_dir / "config.json").read_text())
    config["center_id"] = json.loads((live_center.data_dir / "config.json").read_text())["center_id"]
    (impostor_dir / "config.json").write_text(json.dumps(config))
    impostor = CenterProcess(data_dir=impostor_dir, port=free_port())
    impostor.start()
    try:
        result = member.run(
            "enroll",
            "--center",
            impostor.url,
            "--center-cert",
            str(live_center.cert),
            "--name",
            "N",
            "--address",
            "A",
            "--birth-date",
            "1990-01-01",
            "--json",
        )
    finally:
        impostor.stop()
    assert result.returncode != 0 and "did not verify" in result.stderr
    status = member.json("status")
    assert status["member_id"] is None and status["outbox"] == 1
    assert member.json("history")["entries"] == []
    # The genuine center then answers the same signed bytes, and that receipt is recorded.
    synced = member.json("sync", "--center", live_center.url)
    assert synced["member_id"].startswith("M-")


def test_ledger_check_exits_non_zero_on_a_difference(tmp_path, make_softhsm_token, live_center):
    member, _store, _store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "100")
    config = json.loads((live_center.data_dir / "config.json").read_text())
    engine = create_engine(normalise_url(config["db_url"]))
    with engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET balance_minor = balance_minor + 5 WHERE kind = 'member'"))
    engine.dispose()
    result = run_cli("center", ["ledger", "check", "--data-dir", str(live_center.data_dir), "--json"])
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["total_minor"] == 5


def test_revoked_key_cannot_pay_but_history_stays(tmp_path, make_softhsm_token, live_center):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "1000")
    kid = member.json("status")["kid"]
    revoked = center_cli(live_center, "operator", "revoke-key", kid, "--reason", "card lost")
    assert revoked["action"] == "key_revoked"
    result = member.run("pay", "--store", store_id, "--amount", "100", "--order", "R-1", "--yes")
    assert result.returncode != 0 and "key_revoked" in result.stderr.splitlines()[-1]
    history = member.json("history", WALLET_PASSWORD_B_FILE="")
    assert [(e["type"], e["outcome"]) for e in history["entries"]] == [
        ("enroll", "accepted"),
        ("topup", "accepted"),
        ("pay", "refused"),
    ]
    bad = run_cli("center", ["operator", "revoke-key", "0" * 64, "--data-dir", str(live_center.data_dir)])
    assert bad.returncode == 1 and "key_not_found" in bad.stderr
