"""Operators end to end over HTTPS: real `center` and `wallet` processes on SoftHSM tokens,
SQLite and PostgreSQL. The operator's key comes from its token (`wallet export-public-key`),
the administrator adds it (`center operator add`), and from then on every operator action
and the console login are requests signed on that token."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest
from support import CenterProcess, run_cli
from test_wallet_e2e import WalletUser

pytestmark = pytest.mark.slow


def center_cli(center: CenterProcess, *args: str) -> dict:
    result = run_cli("center", [*args, "--data-dir", str(center.data_dir), "--json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def add_operator(
    tmp_path, make_softhsm_token, center: CenterProcess, name: str, role: str, *init_args: str
) -> tuple[WalletUser, dict]:
    user = WalletUser(tmp_path, make_softhsm_token, name)
    user.init(*init_args)
    pem = tmp_path / f"{name}.pem"
    exported = user.json("export-public-key", "--out", str(pem))
    added = center_cli(
        center, "operator", "add", "--public-key", str(pem), "--role", role, "--name", name.title()
    )
    assert added["kid"] == exported["kid"] and added["role"] == role
    return user, added


def one_line_error(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def console_client(center: CenterProcess) -> httpx.Client:
    return httpx.Client(
        base_url=center.url,
        verify=ssl.create_default_context(cafile=str(center.cert)),
        timeout=10.0,
        trust_env=False,
    )


def test_operators_act_and_log_in_with_their_tokens(tmp_path, make_softhsm_token, live_center):
    operator, op_added = add_operator(tmp_path, make_softhsm_token, live_center, "ops", "operator")
    auditor, au_added = add_operator(
        tmp_path, make_softhsm_token, live_center, "audit", "auditor", "--key-type", "ed25519"
    )
    assert au_added["algorithm"] == "Ed25519"
    listed = center_cli(live_center, "operator", "list")["operators"]
    assert [(o["operator_id"], o["role"], o["status"]) for o in listed] == [
        (op_added["operator_id"], "operator", "active"),
        (au_added["operator_id"], "auditor", "active"),
    ]

    attach = ["operator", "attach", "--center", live_center.url, "--center-cert", str(live_center.cert)]
    attached = operator.json(*attach)
    assert (attached["status"], attached["operator_id"], attached["role"], attached["name"]) == (
        "attached",
        op_added["operator_id"],
        "operator",
        "Ops",
    )
    assert auditor.json(*attach)["role"] == "auditor"

    member = WalletUser(tmp_path, make_softhsm_token, "member")
    member.init()
    assert member.enroll_member(live_center).returncode == 0
    topup_id = member.json("topup", "5000", "--method", "bank")["topup_id"]

    refused = auditor.run("operator", "confirm-topup", topup_id, "--yes")
    assert "operator_role_required" in one_line_error(refused)
    assert member.json("balance")["pending_topups"][0]["topup_id"] == topup_id

    confirmed = operator.json("operator", "confirm-topup", topup_id, "--yes")
    assert (confirmed["status"], confirmed["topup_id"], confirmed["operator_id"]) == (
        "confirmed",
        topup_id,
        op_added["operator_id"],
    )
    assert member.json("balance")["balance_minor"] == 5000

    # A member's key is no operator: not for actions, not for the console.
    assert "enrolled as member" in one_line_error(member.run(*attach))
    with console_client(live_center) as browser:
        challenge = browser.post("/console/api/challenge").json()["challenge"]
        assert "not_an_operator" in one_line_error(member.run("console-login", challenge, "--yes"))
        assert browser.get("/console/api/login-status").json() == {"status": "pending"}

        # The operator approves the code (typed in lower case, without dashes).
        approved = operator.json("console-login", challenge.replace("-", "").lower(), "--yes")
        assert (approved["status"], approved["challenge"], approved["operator_id"]) == (
            "approved",
            challenge,
            op_added["operator_id"],
        )
        status = browser.get("/console/api/login-status")
        assert status.status_code == 200 and status.json()["status"] == "approved"
        csrf = status.json()["csrf_token"]
        me = browser.get("/console/api/me").json()
        assert (me["operator_id"], me["role"], me["kid"], me["csrf_token"]) == (
            op_added["operator_id"],
            "operator",
            op_added["kid"],
            csrf,
        )
        assert browser.get("/console/api/login-status").status_code == 404  # no second session
    with console_client(live_center) as stranger:  # without the browser's cookie: nothing
        assert stranger.get("/console/api/login-status").json()["error"]["code"] == "unknown_challenge"
        assert stranger.get("/console/api/me").json()["error"]["code"] == "console_login_required"

    # The operator revokes the auditor's key: the auditor can no longer sign anything.
    revoked = operator.json("operator", "revoke-key", au_added["kid"], "--reason", "left the company")
    assert revoked["member_id"] == au_added["operator_id"] and revoked["repeated"] is False
    with console_client(live_center) as browser:
        challenge = browser.post("/console/api/challenge").json()["challenge"]
        assert "key_revoked" in one_line_error(auditor.run("console-login", challenge, "--yes"))

    assert center_cli(live_center, "ledger", "check")["ok"] is True
    assert center_cli(live_center, "audit", "verify")["ok"] is True
    history = operator.json("history", WALLET_PASSWORD_B_FILE="")
    # whoami, the top-up read, its confirmation, the console login, the revocation
    assert [e["type"] for e in history["entries"]] == [
        "operator_action",
        "operator_action",
        "operator_action",
        "console_login",
        "operator_action",
    ]


def test_an_undelivered_operator_action_waits_in_the_outbox_and_is_delivered_once(
    tmp_path, make_softhsm_token, live_center
):
    operator, _ = add_operator(tmp_path, make_softhsm_token, live_center, "ops", "operator")
    operator.json("operator", "attach", "--center", live_center.url, "--center-cert", str(live_center.cert))
    member = WalletUser(tmp_path, make_softhsm_token, "member")
    member.init()
    assert member.enroll_member(live_center).returncode == 0
    topup_id = member.json("topup", "700", "--method", "cash")["topup_id"]

    member_kid = member.json("status")["kid"]

    live_center.stop()
    # A top-up decision is never queued: the wallet must fetch and show the top-up first.
    offline = operator.run("operator", "confirm-topup", topup_id, "--yes")
    assert "nothing was decided" in one_line_error(offline)
    assert operator.json("status")["outbox"] == 0  # the read that could not be delivered is not kept
    queued = operator.json("operator", "revoke-key", member_kid, "--reason", "card reported lost")
    assert queued["status"] == "queued"
    assert operator.json("status")["outbox"] == 1
    live_center.start()

    synced = operator.run("sync", "--json")
    assert synced.returncode == 0, synced.stderr
    delivered = json.loads(synced.stdout)["delivered"]
    assert [(d["type"], d["result"]["action"], d["result"]["kid"]) for d in delivered] == [
        ("operator_action", "key_revoked", member_kid)
    ]
    assert json.loads(operator.run("sync", "--json").stdout)["delivered"] == []
    confirmed = operator.json("operator", "confirm-topup", topup_id, "--yes")
    assert (confirmed["status"], confirmed["amount_minor"]) == ("confirmed", 700)


def test_operator_command_lines_refuse_bad_input_in_one_line(tmp_path, make_softhsm_token, live_center):
    operator = WalletUser(tmp_path, make_softhsm_token, "ops")
    operator.init()
    pem = tmp_path / "ops.pem"
    operator.json("export-public-key", "--out", str(pem))
    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    base = ["operator", "add", "--data-dir", str(live_center.data_dir)]
    for args, says in (
        (["--public-key", str(pem), "--role", "admin"], "--role"),
        (["--public-key", str(tmp_path / "missing.pem"), "--role", "operator"], "cannot read"),
        (["--public-key", str(tmp_path / "junk.pem"), "--role", "operator"], "bad_public_key"),
        (["--public-key", str(pem), "--role", "operator", "--name", ""], "invalid_request"),
    ):
        result = run_cli("center", base + args)
        assert says in one_line_error(result), (args, result.stderr)
        assert result.stderr.strip().count("\n") == 0
    assert run_cli("center", [*base, "--public-key", str(pem), "--role", "operator"]).returncode == 0
    again = run_cli("center", [*base, "--public-key", str(pem), "--role", "auditor"])
    assert "key_already_enrolled" in one_line_error(again)
    assert len(center_cli(live_center, "operator", "list")["operators"]) == 1

    # Before attach, and with malformed arguments, the wallet signs nothing.
    assert "operator attach" in one_line_error(
        operator.run("operator", "confirm-topup", "U-0123456789abcdef")
    )
    assert "operator attach" in one_line_error(operator.run("console-login", "ABCD-EFGH-IJKL-MNOP"))
    operator.json("operator", "attach", "--center", live_center.url, "--center-cert", str(live_center.cert))
    counter = operator.json("status")["counter"]
    for args in (
        ["operator", "confirm-topup", "P-0123456789abcdef"],
        ["operator", "decline-topup", "U-12"],
        ["operator", "revoke-key", "abc"],
        ["operator", "revoke-key", "a" * 64, "--reason", ""],
        ["console-login", "ABCD-EFGH-IJKL-MNO9"],
        ["console-login", "not a code"],
        ["console-login", "ABCD-EFGH-IJKL-MNOP", "--center", live_center.url],
    ):
        one_line_error(operator.run(*args))
    assert operator.json("status")["counter"] == counter
    # A code nobody asked for: the center knows no client for it, and nothing is signed.
    assert "unknown_challenge" in one_line_error(
        operator.run("console-login", "ABCD-EFGH-IJKL-MNOP", "--yes")
    )
    assert operator.json("status")["counter"] == counter
