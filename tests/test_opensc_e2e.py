"""The PKCS#11 path to an OpenPGP card, through the real `wallet` CLI: OpenSC's PKCS#11 module
(Debian `opensc`) over pcscd, a vpcd reader and the virtual OpenPGP card (jcecard), paying a
SoftHSM store at one center over HTTPS.

Real YubiKeys and Nitrokeys are reached this way as often as through raw APDUs (test_card_e2e).
What OpenSC 0.23 does with such a card, measured here: it shows the card as two tokens, "OpenPGP
card (User PIN)" and "OpenPGP card (User PIN (sig))" (the one whose PIN, PW1 mode 81, signs); key
generation needs the admin PIN (PW3) as the SO PIN, goes into the fixed signature slot (CKA_ID
01), never over an existing key, and is RSA-2048 only (no EC_EDWARDS_KEY_PAIR_GEN).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import cli_env, require, run_cli
from test_card_e2e import ADMIN_PIN, CARD_PIN, store_wallet
from test_payments_e2e import center_cli, count_payments

pytestmark = pytest.mark.slow


@pytest.fixture
def db_url(tmp_path) -> str:
    """SQLite only: the card path does not depend on the center's database."""
    return f"sqlite:///{tmp_path / 'center.db'}"


OPENSC_MODULE = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
SIGNING_TOKEN = "OpenPGP card (User PIN (sig))"


class OpenscUser:
    """A member whose token is an OpenPGP card reached through OpenSC's PKCS#11 module."""

    def __init__(self, tmp_path: Path, card):
        self.card = card
        self.home = tmp_path / "home-opensc"
        self.files = {}
        for name, value in {
            "a": "opensc member passphrase",
            "b": CARD_PIN,
            "so": ADMIN_PIN,
            "bad": "000000",
        }.items():
            path = tmp_path / f"opensc-{name}"
            path.write_text(value + "\n")
            self.files[name] = str(path)

    def run(self, *args: str, **overrides: str):
        values = {
            "WALLET_HOME": str(self.home),
            "WALLET_PASSWORD_A_FILE": self.files["a"],
            "WALLET_PASSWORD_B_FILE": self.files["b"],
            "WALLET_SO_PIN_FILE": self.files["so"],
        }
        values.update(overrides)
        return run_cli("wallet", list(args), env=cli_env(**values))

    def json(self, *args: str, **overrides: str):
        result = self.run(*args, "--json", **overrides)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def init(self, key_type: str, **overrides: str):
        return self.run(
            "init",
            "--pkcs11-module",
            OPENSC_MODULE,
            "--token-label",
            SIGNING_TOKEN,
            "--key-mode",
            "resident",
            "--key-type",
            key_type,
            "--json",
            **overrides,
        )

    def pay(self, store_id: str, amount: str, order: str, **overrides: str):
        return self.run(
            "pay", "--store", store_id, "--amount", amount, "--order", order, "--yes", "--json", **overrides
        )


def last_line(result) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def opensc_card(tmp_path, virtual_card):
    require("OpenSC's PKCS#11 module (Debian package opensc)", os.path.exists(OPENSC_MODULE))
    return virtual_card(0)


@pytest.fixture
def opensc_member(tmp_path, opensc_card, live_center):
    user = OpenscUser(tmp_path, opensc_card)
    init = user.init("rsa2048")
    assert init.returncode == 0, init.stderr
    made = json.loads(init.stdout)
    assert (made["key_mode"], made["algorithm"], made["key_protection"]) == ("resident", "RS256", "protected")
    token = made["token"]
    assert (token["kind"], token["label"], token["model"]) == ("pkcs11", SIGNING_TOKEN, "PKCS#15 emulated")
    # OpenSC's serial: the AID's manufacturer (0000) then the card serial.
    assert token["serial"].upper() == "0000" + opensc_card.serial
    enrolled = user.run(
        "enroll",
        "--center",
        live_center.url,
        "--center-cert",
        str(live_center.cert),
        "--name",
        "Opensc Holder",
        "--address",
        "5-5 Kanda",
        "--birth-date",
        "1981-04-04",
        "--json",
    )
    assert enrolled.returncode == 0, enrolled.stderr
    return user


def fund(user: OpenscUser, center, amount: str) -> None:
    topup_id = user.json("topup", amount, "--method", "cash")["topup_id"]
    center_cli(center, "operator", "confirm-topup", topup_id)


def test_member_on_opensc_pays_and_a_wrong_pin_signs_nothing(
    tmp_path, make_softhsm_token, live_center, opensc_member
):
    store, store_id = store_wallet(tmp_path, make_softhsm_token, live_center)
    fund(opensc_member, live_center, "5000")

    wrong = opensc_member.pay(store_id, "300", "W-1", WALLET_PASSWORD_B_FILE=opensc_member.files["bad"])
    assert "wrong password B" in last_line(wrong)
    assert count_payments(live_center) == 0
    assert opensc_member.json("history")["outbox"] == []

    paid = opensc_member.pay(store_id, "1200", "O-1")
    assert paid.returncode == 0, paid.stderr
    assert json.loads(paid.stdout)["balance_minor"] == 3800
    assert [n["amount_minor"] for n in store.json("notices")["notices"]] == [1200]
    assert count_payments(live_center) == 1
    assert center_cli(live_center, "ledger", "check")["ok"] is True
    token = opensc_member.json("status")["token"]
    assert token["present"] is True and token["pin"]["locked"] is False


def test_card_pulled_is_a_clear_error_and_pay_works_once_it_is_back(
    tmp_path, make_softhsm_token, live_center, opensc_member
):
    _store, store_id = store_wallet(tmp_path, make_softhsm_token, live_center)
    fund(opensc_member, live_center, "1000")
    opensc_member.card.stop()  # pulled out

    pulled = opensc_member.pay(store_id, "100", "P-1")
    assert f"no PKCS#11 token with label {SIGNING_TOKEN!r}" in last_line(pulled)
    assert count_payments(live_center) == 0
    status = opensc_member.json("status")["token"]
    assert status["present"] is False and SIGNING_TOKEN in status["problem"]

    opensc_member.card.start()  # the same card (same storage) back in the reader
    paid = opensc_member.pay(store_id, "100", "P-1")
    assert paid.returncode == 0, paid.stderr
    assert json.loads(paid.stdout)["balance_minor"] == 900
    assert opensc_member.json("sync")["delivered"] == []
    assert count_payments(live_center) == 1


def test_init_refuses_what_opensc_cannot_do_on_the_card(tmp_path, opensc_card):
    user = OpenscUser(tmp_path, opensc_card)
    no_ed25519 = user.init("ed25519")
    assert "cannot generate ed25519 keys" in last_line(no_ed25519)
    no_admin_pin = user.init("rsa2048", WALLET_SO_PIN_FILE="")
    assert no_admin_pin.returncode != 0 and "SO PIN" in no_admin_pin.stderr
    other_token = user.run(
        "init",
        "--pkcs11-module",
        OPENSC_MODULE,
        "--token-label",
        "OpenPGP card (User PIN)",
        "--key-mode",
        "resident",
        "--key-type",
        "rsa2048",
    )
    assert "choose its signing token" in last_line(other_token)
    assert not user.home.exists()

    assert user.init("rsa2048").returncode == 0
    (tmp_path / "second").mkdir()
    second = OpenscUser(tmp_path / "second", opensc_card)
    assert "already holds a signature key" in last_line(second.init("rsa2048"))
