"""A forgiving wallet, through the real CLI against a real `center serve` (issue 16, points 1 and 2).

- A typo'd but well-formed center URL queues the enrollment; the corrected `wallet enroll` is
  refused with the command that fixes it, and that command delivers the same signed enrollment.
- Paying the same order to the same store twice: the wallet asks (refuses under --yes without
  --allow-repeat) from its own history; a wallet that does not know (its history lost, another
  device) is stopped by the center, whose refusal names the first payment and the flag.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support import CenterProcess
from test_payments_e2e import center_cli, enrolled_pair, fund
from test_wallet_e2e import WalletUser

from paywire.envelope import seal
from paywire.messages import PAY, build_payload, new_message_id
from token_wallet.client import CenterClient
from token_wallet.vault import Vault
from tokens import open_token
from tokens.base import KeyRecord

pytestmark = pytest.mark.slow


@pytest.fixture
def db_url(tmp_path) -> str:
    """SQLite only: the wallet's side does not depend on the center's database (the center's
    duplicate rule is tested on both in test_duplicate_order)."""
    return f"sqlite:///{tmp_path / 'center.db'}"


def one_line_error(result) -> str:
    """The refusal: one `error:` line, the last on stderr (the pay prompt, shown even with --yes,
    comes before it)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: "), result.stderr
    return message


def test_a_typo_in_the_center_url_is_fixed_by_the_command_the_refusal_names(
    tmp_path, make_softhsm_token, live_center
):
    member = WalletUser(tmp_path, make_softhsm_token, "t")
    member.init()
    typo = live_center.url.replace("127.0.0.1", "127.0.0.2").replace(
        f":{live_center.url.rsplit(':', 1)[1]}", ":1"
    )
    queued = member.run(
        "enroll",
        "--center",
        typo,
        "--center-cert",
        str(live_center.cert),
        "--name",
        "Hanako Yamada",
        "--address",
        "1-1 Chiyoda",
        "--birth-date",
        "1985-06-15",
        "--json",
    )
    assert json.loads(queued.stdout)["status"] == "queued", queued.stderr

    again = member.enroll_member(live_center)
    message = one_line_error(again)
    assert f"an enrollment for {typo} is already waiting" in message, message
    assert "wallet sync --center https://HOST:PORT" in message, message

    fixed = member.json("sync", "--center", live_center.url)
    assert [item["type"] for item in fixed["delivered"]] == ["enroll"], fixed
    assert member.json("status")["member_id"].startswith("M-")


def test_paying_an_order_twice_is_asked_and_stopped(tmp_path, make_softhsm_token, live_center):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "10000")
    first = member.json("pay", "--store", store_id, "--amount", "1200", "--order", "A-1", "--yes")

    # The wallet's own history knows the order: --yes alone is refused before anything is signed.
    counter_before = member.json("account-info")["wallet_counter"]
    message = one_line_error(
        member.run("pay", "--store", store_id, "--amount", "1200", "--order", "A-1", "--yes")
    )
    assert f'order "A-1" was already paid to store {store_id} (payment {first["payment_id"]})' in message
    assert "--allow-repeat" in message
    assert member.json("account-info")["wallet_counter"] == counter_before + 1, "only the query signed"
    assert member.json("balance")["balance_minor"] == 8800

    # Meant: paid again, as a repeat the center accepts.
    again = member.json(
        "pay", "--store", store_id, "--amount", "1200", "--order", "A-1", "--yes", "--allow-repeat"
    )
    assert again["payment_id"] != first["payment_id"] and again["balance_minor"] == 7600

    # Another order, or the same order to no earlier payment: no question.
    assert member.json("pay", "--store", store_id, "--amount", "100", "--order", "A-2", "--yes")


def pay_outside_the_wallet(member: WalletUser, center: CenterProcess, store_id: str, order: str) -> dict:
    """Another device of the same member: a payment signed with the wallet's token key, a counter above
    the wallet's (so the wallet's own next counters stay free), sent without the wallet; the vault is
    read, never saved, so the wallet's history does not know it."""
    doc = Vault.open(member.vault, Path(member.files["a"]).read_text().strip()).document()
    key, token = KeyRecord.from_json(doc["key"]), open_token(doc["token"])
    body = {"payee": store_id, "payee_name": "Corner Shop", "amount_minor": 500, "currency": "JPY"}
    payload = build_payload(
        PAY,
        aud=doc["center"]["center_id"],
        kid=doc["kid"],
        msg_id=new_message_id(),
        ctr=doc["counter"] + 50,
        body=body | {"order_ref": order},
        now_s=int(time.time()),
        lifetime_s=600,
    )
    envelope = seal(
        payload, alg=key.algorithm, kid=doc["kid"], sign=lambda data: token.sign(key, data, member.pin)
    )
    with CenterClient(center.url, center.cert.read_bytes()) as client:
        return client.submit("/v1/payments", envelope)["receipt"]["entry"]["action"]


def test_the_center_stops_a_repeat_the_wallet_does_not_know(tmp_path, make_softhsm_token, live_center):
    member, _store, store_id = enrolled_pair(tmp_path, make_softhsm_token, live_center)
    fund(member, live_center, "10000")
    first = pay_outside_the_wallet(member, live_center, store_id, "B-7")
    refused = member.run("pay", "--store", store_id, "--amount", "500", "--order", "B-7", "--yes")
    message = one_line_error(refused)
    assert "duplicate_order" in message and first["payment_id"] in message, message
    assert "re-run `wallet pay` with --allow-repeat" in message, message
    assert member.json("balance")["balance_minor"] == 9500, "the refused repeat moved nothing"
    meant = member.json(
        "pay", "--store", store_id, "--amount", "500", "--order", "B-7", "--yes", "--allow-repeat"
    )
    assert meant["balance_minor"] == 9000
    assert center_cli(live_center, "ledger", "check")["ok"] is True
