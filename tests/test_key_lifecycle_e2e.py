"""Key lifecycle end to end over HTTPS: real `center` and `wallet` processes,
SoftHSM tokens, SQLite and PostgreSQL. A lost card: revoke, new token, rebind,
operator bind, paying from the same balance with the history kept. Rotation:
one message signed by both keys, interrupted and finished by `wallet sync`, a
resend answered with the same receipt, the old key refused, the new one paying."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from receipt_support import receipt_head
from relay_support import Relay
from support import SOFTHSM_MODULE, run_cli
from test_operators_e2e import add_operator
from test_payments_e2e import center_cli, enrolled_pair, fund
from test_wallet_e2e import WalletUser

from token_wallet.client import pinned_ssl_context
from token_wallet.vault import Vault

pytestmark = pytest.mark.slow


def new_token_files(tmp_path: Path, make_softhsm_token, name: str) -> tuple[str, dict[str, str]]:
    """A second SoftHSM token for a wallet (the replacement card): its label and secret files."""
    label, so_pin, pin = make_softhsm_token()
    files = {}
    for key, value in {"b": pin, "so": so_pin}.items():
        path = tmp_path / f"{name}-{key}"
        path.write_text(value + "\n")
        files[key] = str(path)
    return label, files


def pay(member: WalletUser, store_id: str, amount: str, order: str, **env):
    return member.run(
        "pay", "--store", store_id, "--amount", amount, "--order", order, "--yes", "--json", **env
    )


def last_error(result) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


def vault_document(member: WalletUser) -> dict:
    password = Path(member.files["a"]).read_text().splitlines()[0]
    return Vault.open(member.vault, password).document()


def center_checks_pass(center, tmp_path: Path) -> None:
    assert center_cli(center, "ledger", "check")["ok"] is True
    assert center_cli(center, "audit", "verify")["ok"] is True
    export = tmp_path / "audit.jsonl"
    assert (
        run_cli("center", ["audit", "export", str(export), "--data-dir", str(center.data_dir)]).returncode
        == 0
    )
    offline = run_cli("center", ["audit", "verify-export", str(export), "--json"])
    assert offline.returncode == 0 and json.loads(offline.stdout)["ok"] is True, offline.stdout


def test_lost_card_revoke_rebind_bind_and_pay_from_the_same_balance(
    tmp_path, make_softhsm_token, live_center
):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "10000")
    before = json.loads(pay(member, store_id, "3000", "before-loss").stdout)
    status = member.json("status")
    member_id, old_kid = status["member_id"], status["kid"]

    # The card is lost: the member calls the center, an operator revokes its key.
    keys = center_cli(live_center, "operator", "list-keys", "--party", member_id)["keys"]
    assert [(k["kid"], k["status"]) for k in keys] == [(old_kid, "active")]
    center_cli(live_center, "operator", "revoke-key", old_kid, "--reason", "card lost")
    assert "key_revoked" in last_error(pay(member, store_id, "100", "after-revoke"))

    # A new token in the same wallet home; the history stays.
    label, files = new_token_files(tmp_path, make_softhsm_token, "new-card")
    new_card = {"WALLET_PASSWORD_B_FILE": files["b"], "WALLET_SO_PIN_FILE": files["so"]}
    replaced = member.json(
        "replace-key", "--pkcs11-module", SOFTHSM_MODULE, "--token-label", label, **new_card
    )
    assert replaced["old_kid"] == old_kid and replaced["member_id"] == member_id
    new_kid = replaced["new_kid"]
    assert "wallet enroll --rebind" in last_error(pay(member, store_id, "100", "not-enrolled", **new_card))
    claim = member.run(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(live_center.cert),
        "--rebind",
        member_id,
        "--name",
        "Hanako Yamada",
        "--address",
        "1-1 Chiyoda, Tokyo",
        "--birth-date",
        "1985-06-15",
        "--json",
        **new_card,
    )
    assert claim.returncode == 0, claim.stderr
    claimed = json.loads(claim.stdout)
    assert claimed | {"msg_id": None, "recovery_code": None} == {
        "member_id": member_id,
        "role": "member",
        "kid": new_kid,
        "status": "pending_bind",
        "msg_id": None,
        "recovery_code": None,
        "recovery_verified": None,
    }  # no code given: the operator decides as before
    assert claimed["recovery_code"]  # the account's next recovery code, from the bind on
    assert "key_not_bound" in last_error(pay(member, store_id, "100", "pending", **new_card))

    # Someone else claims the same account with their own token; an operator's wallet rejects it.
    impostor = WalletUser(tmp_path, make_softhsm_token, "impostor")
    impostor.init()
    claimed = impostor.run(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(live_center.cert),
        "--rebind",
        member_id,
        "--name",
        "Not Hanako",
        "--address",
        "9-9 Elsewhere",
        "--birth-date",
        "1970-01-01",
        "--json",
    )
    assert claimed.returncode == 0 and json.loads(claimed.stdout)["status"] == "pending_bind", claimed.stderr
    impostor_kid = json.loads(claimed.stdout)["kid"]

    pending = {
        k["kid"]: k["claim"]
        for k in center_cli(live_center, "operator", "list-keys", "--status", "pending_bind")["keys"]
    }
    assert set(pending) == {new_kid, impostor_kid}
    assert pending[new_kid]["claimed"]["name"] == pending[new_kid]["registered"]["name"] == "Hanako Yamada"
    assert pending[impostor_kid]["claimed"]["birth_date"] != pending[impostor_kid]["registered"]["birth_date"]
    operator, _added = add_operator(tmp_path, make_softhsm_token, live_center, "ops", "operator")
    operator.json("operator", "attach", "--center", live_center.url, "--center-cert", str(live_center.cert))
    rejected = operator.json("operator", "reject-key", impostor_kid, "--reason", "birth date does not match")
    assert (rejected["status"], rejected["action"], rejected["member_id"]) == (
        "accepted",
        "key_rejected",
        member_id,
    )
    assert "key_rejected" in last_error(impostor.run("balance"))

    bound = center_cli(live_center, "operator", "bind-key", new_kid)
    assert (bound["member_id"], bound["repeated"]) == (member_id, False)

    after = json.loads(pay(member, store_id, "1000", "after-bind", **new_card).stdout)
    assert after["balance_minor"] == 6000  # 10000 - 3000 - 1000: the same account
    status = member.json("status", **new_card)
    assert (status["member_id"], status["kid"], status["key_status"]) == (member_id, new_kid, "active")
    history = member.json("history", **new_card)["entries"]
    paid = [e["details"]["payment_id"] for e in history if e["type"] == "pay" and e["outcome"] == "accepted"]
    assert paid == [before["payment_id"], after["payment_id"]]
    refused = [e["details"]["code"] for e in history if e["outcome"] == "refused"]
    assert refused == ["key_revoked", "key_not_bound"]
    # Binding again is a no-op; a key that claims nothing cannot be bound.
    assert center_cli(live_center, "operator", "bind-key", new_kid)["repeated"] is True
    bad = run_cli("center", ["operator", "bind-key", old_kid, "--data-dir", str(live_center.data_dir)])
    assert bad.returncode == 1 and "key_not_pending" in bad.stderr
    center_checks_pass(live_center, tmp_path)


def test_rotation_interrupted_then_finished_by_sync_and_resent(tmp_path, make_softhsm_token, live_center):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "5000")
    pay(member, store_id, "1000", "before-rotation")
    status = member.json("status")
    member_id, old_kid = status["member_id"], status["kid"]
    stale_home = tmp_path / "stale-copy"  # a backup of the wallet from before the rotation
    shutil.copytree(member.home, stale_home)

    # The rotation reaches the center, but its answer is lost on the way back.
    proxy = Relay(live_center.port, lambda number: "drop" if number == 1 else "pass")
    member.json("sync", "--center", f"https://127.0.0.1:{proxy.port}")  # only moves the URL
    try:
        queued = member.json("rotate-key")
    finally:
        proxy.close()
    assert queued["status"] == "queued" and queued["old_kid"] == old_kid
    new_kid = queued["new_kid"]
    status = member.json("status")
    assert (status["kid"], status["pending_kid"]) == (old_kid, new_kid)  # not switched without a receipt
    # The old key signs nothing more while its rotation waits (it would be refused once the rotation lands).
    assert "wallet sync" in last_error(member.run("topup", "100", "--method", "bank"))
    rotate_request = next(e["envelope"] for e in vault_document(member)["outbox"] if e["type"] == "rotate")

    synced = member.json("sync", "--center", live_center.url)
    assert [(d["type"], d["result"]["new_kid"]) for d in synced["delivered"]] == [("rotate", new_kid)]
    status = member.json("status")
    assert (status["member_id"], status["kid"], status["pending_kid"]) == (member_id, new_kid, None)

    # Resending the same signed bytes gets the same receipt.
    stored = next(r["receipt"] for r in vault_document(member)["receipts"] if r["type"] == "rotate")
    context = pinned_ssl_context(live_center.cert.read_bytes())
    resent = httpx.post(f"{live_center.url}/v1/keys/rotate", json=rotate_request, verify=context, timeout=10)
    assert resent.status_code == 200 and resent.json()["receipt"] == stored
    assert receipt_head(resent.json()).kid != old_kid  # its tree head is signed by the center, not the member

    # The old key (here from the stale copy, same token) is refused; the new one pays from the same balance.
    stale = pay(member, store_id, "100", "stale", WALLET_HOME=str(stale_home))
    assert "key_rotated" in last_error(stale)
    paid = json.loads(pay(member, store_id, "500", "after-rotation").stdout)
    assert paid["balance_minor"] == 3500  # 5000 - 1000 - 500

    # A second rotation, onto another token (Ed25519) with its own PIN, in two steps: the new key is
    # made and kept in the vault first (as a crash before sending would leave it), then used.
    label, files = new_token_files(tmp_path, make_softhsm_token, "second-token")
    prepared = member.json(
        "rotate-key",
        "--prepare-only",
        "--pkcs11-module",
        SOFTHSM_MODULE,
        "--token-label",
        label,
        "--key-type",
        "ed25519",
        "--new-password-b-file",
        files["b"],
        WALLET_SO_PIN_FILE=files["so"],
    )
    assert prepared["status"] == "prepared" and "BEGIN PUBLIC KEY" in prepared["public_key_pem"]
    assert member.json("status")["pending_kid"] == prepared["new_kid"]
    moved = member.json("rotate-key", "--new-password-b-file", files["b"])
    assert moved["status"] == "rotated" and moved["old_kid"] == new_kid and moved["algorithm"] == "Ed25519"
    assert moved["new_kid"] == prepared["new_kid"]
    newest = {"WALLET_PASSWORD_B_FILE": files["b"]}
    assert (
        json.loads(pay(member, store_id, "500", "on-second-token", **newest).stdout)["balance_minor"] == 3000
    )
    assert member.json("status", **newest)["member_id"] == member_id
    keys = {
        k["kid"]: k["status"]
        for k in center_cli(live_center, "operator", "list-keys", "--party", member_id)["keys"]
    }
    assert keys == {old_kid: "rotated", new_kid: "rotated", moved["new_kid"]: "active"}
    history = [(e["type"], e["outcome"]) for e in member.json("history", **newest)["entries"]]
    assert history.count(("rotate", "accepted")) == 2 and history.count(("pay", "accepted")) == 3
    center_checks_pass(live_center, tmp_path)
