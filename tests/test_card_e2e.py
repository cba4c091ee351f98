"""The smartcard story through the real `wallet` CLI: pcscd, a vpcd reader and
a virtual OpenPGP card (jcecard), next to a SoftHSM store, one center over HTTPS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import cli_env, run_cli
from test_payments_e2e import center_cli, count_payments, enrolled_pair, fund
from test_wallet_e2e import WalletUser

pytestmark = pytest.mark.slow

CARD_PIN, ADMIN_PIN = "123456", "12345678"  # jcecard's factory PINs


class CardUser:
    """A member whose token is an OpenPGP card, driven through the CLI."""

    def __init__(self, tmp_path: Path, card):
        self.card = card
        self.home = tmp_path / "home-card"
        self.files = {}
        for name, value in {
            "a": "card member passphrase",
            "b": CARD_PIN,
            "admin": ADMIN_PIN,
            "bad": "000000",
            "new-b": "654321",
        }.items():
            path = tmp_path / f"card-{name}"
            path.write_text(value + "\n")
            self.files[name] = str(path)

    def env(self, **overrides: str) -> dict:
        values = {
            "WALLET_HOME": str(self.home),
            "WALLET_PASSWORD_A_FILE": self.files["a"],
            "WALLET_PASSWORD_B_FILE": self.files["b"],
            "WALLET_ADMIN_PIN_FILE": self.files["admin"],
        }
        values.update(overrides)
        return cli_env(**values)

    def run(self, *args: str, **env_overrides: str):
        return run_cli("wallet", list(args), env=self.env(**env_overrides))

    def json(self, *args: str, **env_overrides: str):
        result = self.run(*args, "--json", **env_overrides)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def store_wallet(tmp_path, make_softhsm_token, center) -> tuple[WalletUser, str]:
    store = WalletUser(tmp_path, make_softhsm_token, "s")
    store.init()
    result = store.run(
        "enroll",
        "--center",
        center.url,
        "--center-cert",
        str(center.cert),
        "--store",
        "--name",
        "Card Corner",
        "--address",
        "3-3 Ueno",
        "--bank-account",
        "JP-0001-1111111",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return store, json.loads(result.stdout)["member_id"]


@pytest.fixture
def card_member(tmp_path, virtual_card, live_center):
    card = virtual_card(0)
    user = CardUser(tmp_path, card)
    readers = user.json("readers")
    assert {"name": card.reader, "card_present": True} in readers
    init = user.json("init", "--card", "--reader", card.reader, "--key-type", "ed25519")
    assert init["key_mode"] == "resident" and init["algorithm"] == "Ed25519"
    assert init["token"]["kind"] == "openpgp-card" and init["token"]["serial"] == card.serial
    enrolled = user.run(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(live_center.cert),
        "--name",
        "Card Holder",
        "--address",
        "4-4 Asakusa",
        "--birth-date",
        "1979-03-03",
        "--json",
    )
    assert enrolled.returncode == 0, enrolled.stderr
    return user


def fund_card_member(user: CardUser, center, amount: str) -> None:
    topup_id = user.json("topup", amount, "--method", "cash")["topup_id"]
    center_cli(center, "operator", "confirm-topup", topup_id)


def test_card_member_pays_a_softhsm_store(tmp_path, make_softhsm_token, live_center, card_member):
    store, store_id = store_wallet(tmp_path, make_softhsm_token, live_center)
    fund_card_member(card_member, live_center, "5000")
    paid = card_member.run(
        "pay", "--store", store_id, "--amount", "1200", "--order", "C-1", "--yes", "--json"
    )
    assert paid.returncode == 0, paid.stderr
    assert "3 tries left" in paid.stderr  # told before password B is asked
    assert json.loads(paid.stdout)["balance_minor"] == 3800
    assert [n["amount_minor"] for n in store.json("notices")["notices"]] == [1200]
    history = card_member.json("history", WALLET_PASSWORD_B_FILE="")  # password A only, no card needed
    assert [e["type"] for e in history["entries"]] == ["enroll", "topup", "pay"]
    assert center_cli(live_center, "ledger", "check")["ok"] is True
    status = card_member.json("status")
    assert status["token"]["kind"] == "openpgp-card" and status["token"]["pin"]["tries_left"] == 3


def test_three_wrong_pins_lock_the_card_and_unblock_restores_it(
    tmp_path, make_softhsm_token, live_center, card_member
):
    _store, store_id = store_wallet(tmp_path, make_softhsm_token, live_center)
    fund_card_member(card_member, live_center, "1000")
    messages = []
    for _ in range(3):
        wrong = card_member.run(
            "pay",
            "--store",
            store_id,
            "--amount",
            "1",
            "--order",
            "W",
            "--yes",
            WALLET_PASSWORD_B_FILE=card_member.files["bad"],
        )
        assert wrong.returncode != 0
        messages.append(wrong.stderr.strip().splitlines()[-1])
    assert "2 tries left" in messages[0] and "1 tries left" in messages[1]
    assert "locked" in messages[2] or "blocked" in messages[2]
    assert "wallet card unblock" in messages[2]
    blocked = card_member.run("pay", "--store", store_id, "--amount", "1", "--order", "W", "--yes")
    assert blocked.returncode != 0 and "blocked" in blocked.stderr.splitlines()[-1]
    assert card_member.json("card", "status")["pin"]["locked"] is True
    assert count_payments(live_center) == 0

    unblocked = card_member.json("card", "unblock", "--new-password-b-file", card_member.files["new-b"])
    assert unblocked["pin"]["tries_left"] == 3
    paid = card_member.json(
        "pay",
        "--store",
        store_id,
        "--amount",
        "1",
        "--order",
        "OK",
        "--yes",
        WALLET_PASSWORD_B_FILE=card_member.files["new-b"],
    )
    assert paid["amount_minor"] == 1 and count_payments(live_center) == 1


def test_pay_waits_for_the_card_and_completes_once_after_insertion(
    tmp_path, make_softhsm_token, live_center, card_member
):
    _store, store_id = store_wallet(tmp_path, make_softhsm_token, live_center)
    fund_card_member(card_member, live_center, "1000")
    card_member.card.stop()  # pulled out
    quick = card_member.run(
        "pay", "--store", store_id, "--amount", "100", "--order", "T", "--yes", "--card-timeout", "1"
    )
    assert quick.returncode != 0 and "insert" in quick.stderr.lower()
    assert card_member.json("history")["outbox"] == [] and count_payments(live_center) == 0

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "token_wallet",
            "pay",
            "--store",
            store_id,
            "--amount",
            "100",
            "--order",
            "I-1",
            "--yes",
            "--json",
            "--card-timeout",
            "30",
        ],
        env=card_member.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(1.5)
    assert process.poll() is None, "pay must wait for the card"
    card_member.card.start()  # re-inserted
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "insert" in stderr.lower()
    assert json.loads(stdout)["balance_minor"] == 900
    assert count_payments(live_center) == 1
    assert card_member.json("sync")["delivered"] == []
    assert count_payments(live_center) == 1


def test_card_pulled_mid_payment_sends_nothing_twice(tmp_path, make_softhsm_token, live_center, card_member):
    """Pull the card while `wallet pay` runs: either it signed first (then the payment is
    applied once, also after a retry) or nothing was signed; never twice, outbox intact."""
    _store, store_id = store_wallet(tmp_path, make_softhsm_token, live_center)
    fund_card_member(card_member, live_center, "1000")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "token_wallet",
            "pay",
            "--store",
            store_id,
            "--amount",
            "100",
            "--order",
            "M-1",
            "--yes",
            "--json",
            "--card-timeout",
            "2",
        ],
        env=card_member.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    card_member.card.stop()
    _stdout, stderr = process.communicate(timeout=60)
    applied_during = count_payments(live_center)
    assert applied_during in (0, 1)
    history = card_member.json("history")
    assert history["outbox"] == [] or [e["type"] for e in history["outbox"]] == ["pay"]
    card_member.card.start()
    synced = card_member.json("sync")
    assert count_payments(live_center) == applied_during + 0
    if applied_during == 0:
        # Nothing was signed before the card left: paying again completes exactly once.
        assert process.returncode != 0, stderr
        again = card_member.json("pay", "--store", store_id, "--amount", "100", "--order", "M-1", "--yes")
        assert again["balance_minor"] == 900
    assert count_payments(live_center) == 1
    assert synced["pending"] == 0
    assert card_member.json("balance")["balance_minor"] == 900


# --- key lifecycle onto a card: `--card` in replace-key and rotate-key ------------------------------


def card_secret_files(tmp_path: Path, name: str) -> dict[str, str]:
    files = {}
    for key, value in {"pin": CARD_PIN, "admin": ADMIN_PIN}.items():
        path = tmp_path / f"{name}-{key}"
        path.write_text(value + "\n")
        files[key] = str(path)
    return files


def last_error(result) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


def test_a_lost_softhsm_token_is_replaced_by_a_card_that_pays_from_the_same_balance(
    tmp_path, make_softhsm_token, live_center, virtual_card
):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "8000")
    status = member.json("status")
    member_id, old_kid = status["member_id"], status["kid"]
    center_cli(live_center, "operator", "revoke-key", old_kid, "--reason", "token lost")

    card = virtual_card(1)
    files = card_secret_files(tmp_path, "new-card")
    on_card = {"WALLET_PASSWORD_B_FILE": files["pin"]}
    replaced = member.json(
        "replace-key",
        "--card",
        "--reader",
        card.reader,
        "--key-type",
        "rsa2048",
        "--admin-pin-file",
        files["admin"],
        **on_card,
    )
    assert (replaced["old_kid"], replaced["member_id"], replaced["algorithm"]) == (
        old_kid,
        member_id,
        "RS256",
    )
    token = member.json("status", **on_card)["token"]
    assert (token["kind"], token["serial"]) == ("openpgp-card", card.serial)

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
        **on_card,
    )
    assert claim.returncode == 0, claim.stderr
    assert json.loads(claim.stdout)["status"] == "pending_bind"
    center_cli(live_center, "operator", "bind-key", replaced["new_kid"])

    paid = member.run(
        "pay", "--store", store_id, "--amount", "1500", "--order", "card-1", "--yes", "--json", **on_card
    )
    assert paid.returncode == 0, paid.stderr
    assert json.loads(paid.stdout)["balance_minor"] == 6500  # the same account
    keys = {
        k["kid"]: k["status"]
        for k in center_cli(live_center, "operator", "list-keys", "--party", member_id)["keys"]
    }
    assert keys == {old_kid: "revoked", replaced["new_kid"]: "active"}
    assert center_cli(live_center, "ledger", "check")["ok"] is True


def test_a_card_member_rotates_onto_a_second_card_and_the_first_is_no_longer_needed(
    tmp_path, make_softhsm_token, live_center, card_member, virtual_card
):
    _store, store_id = store_wallet(tmp_path, make_softhsm_token, live_center)
    fund_card_member(card_member, live_center, "4000")
    status = card_member.json("status")
    member_id, old_kid = status["member_id"], status["kid"]
    assert "cannot rotate onto itself" in last_error(card_member.run("rotate-key"))

    second = virtual_card(1)
    files = card_secret_files(tmp_path, "second-card")
    rotated = card_member.json(
        "rotate-key",
        "--card",
        "--reader",
        second.reader,
        "--key-type",
        "ed25519",
        "--admin-pin-file",
        files["admin"],
        "--new-password-b-file",
        files["pin"],
    )
    assert (rotated["status"], rotated["old_kid"], rotated["algorithm"]) == ("rotated", old_kid, "Ed25519")
    assert card_member.json("status")["token"]["serial"] == second.serial

    card_member.card.stop()  # the first card is put away: the wallet signs with the second
    paid = card_member.run(
        "pay", "--store", store_id, "--amount", "700", "--order", "after-rotation", "--yes", "--json"
    )
    assert paid.returncode == 0, paid.stderr
    assert json.loads(paid.stdout)["balance_minor"] == 3300
    keys = {
        k["kid"]: k["status"]
        for k in center_cli(live_center, "operator", "list-keys", "--party", member_id)["keys"]
    }
    assert keys == {old_kid: "rotated", rotated["new_kid"]: "active"}
    assert center_cli(live_center, "audit", "verify")["ok"] is True
