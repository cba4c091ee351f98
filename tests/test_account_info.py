"""`account_info`: a member's or store's signed query for its party id, role, key status and the
highest counter the center has seen from the key (docs/architecture.md, "Adding a signed message
type", follows this type step by step).

In process (FastAPI TestClient, SQLite and PostgreSQL): the answer, read-only and audited, the
counter after this request, operators refused. The wallet's checks of the answer, as functions.
End to end (real `center serve` and `wallet` processes, SoftHSM): the command, and the alarm
when the key signed what the wallet did not (an older vault copy put back; a signature made with
the token outside the wallet).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from operator_support import new_operator, signed
from sqlalchemy import func, select
from support import CenterProcess, free_port, run_cli
from test_payments_api import enroll, funded_member, result_of, submit
from test_wallet_e2e import WalletUser

from center.errors import ApiError
from center.storage.db import accounts, audit_log, transfers
from paywire.envelope import seal
from paywire.errors import WireError
from paywire.messages import ACCOUNT_INFO, BALANCE, COUNTER_WINDOW, build_payload, new_message_id
from token_wallet.account_info import ALARM_OUTCOME, counter_alarm, record_account_info, record_replayed_alarm
from token_wallet.answer_checks import Contradiction, check_answer
from token_wallet.client import CenterClient
from token_wallet.vault import Vault
from tokens import open_token
from tokens.base import KeyRecord

ACCOUNT_PATH = "/v1/account"
FIELDS = ("party_id", "role", "key_status", "highest_counter")


def ask(center, signer, **kw) -> dict:
    return submit(center, signer, ACCOUNT_INFO, {}, **kw)


def audited(center, msg_type: str) -> list[str]:
    with center.engine.connect() as conn:
        rows = conn.execute(select(audit_log.c.action).where(audit_log.c.msg_type == msg_type))
        return list(rows.scalars())


# --- the center -----------------------------------------------------------------------


def test_member_and_store_learn_their_account(center):
    member, member_id = enroll(center, "member")
    store, store_id = enroll(center, "store")
    assert ask(center, member) == {
        "action": "account_info",
        "party_id": member_id,
        "role": "member",
        "key_status": "active",
        "highest_counter": 2,
    }  # enroll 1, this query 2
    assert ask(center, store) == {
        "action": "account_info",
        "party_id": store_id,
        "role": "store",
        "key_status": "active",
        "highest_counter": 2,
    }


def test_highest_counter_is_the_keys_after_this_request(center):
    """The highest counter accepted from the key, this request included; an earlier counter still
    inside the window is accepted and does not lower it."""
    member, _member_id = enroll(center, "member")
    assert ask(center, member, ctr=10)["highest_counter"] == 10
    assert ask(center, member, ctr=7)["highest_counter"] == 10
    assert ask(center, member, ctr=11)["highest_counter"] == 11


def ledger_state(conn) -> tuple:
    return (
        conn.execute(select(func.count()).select_from(transfers)).scalar_one(),
        conn.execute(select(accounts.c.id, accounts.c.balance_minor).order_by(accounts.c.id)).all(),
    )


def test_account_info_is_read_only_and_audited(center):
    member, member_id = funded_member(center, 5_000)
    with center.engine.connect() as conn:
        before = ledger_state(conn)
    answer = ask(center, member)
    with center.engine.connect() as conn:
        after = ledger_state(conn)
    assert after == before, "no ledger effect"
    assert [json.loads(action) for action in audited(center, ACCOUNT_INFO)] == [answer]
    assert answer["party_id"] == member_id


def test_a_resend_gets_the_first_answer(center):
    member, _member_id = enroll(center, "member")
    request = member.envelope(ACCOUNT_INFO, {}, aud=center.center_id)
    first = center.submit(request, ACCOUNT_INFO)
    ask(center, member)  # the counter moves on meanwhile
    assert center.submit(request, ACCOUNT_INFO) == first
    assert len(audited(center, ACCOUNT_INFO)) == 2


def test_operators_are_refused_and_pointed_to_whoami(center):
    operator, _view = new_operator(center)
    with pytest.raises(ApiError) as caught:
        center.submit(signed(center, operator, ACCOUNT_INFO, {}), ACCOUNT_INFO)
    assert (caught.value.code, caught.value.status) == ("wrong_role", 403)
    assert "whoami" in caught.value.message
    assert caught.value.refusal is not None, "final, so signed"
    assert audited(center, ACCOUNT_INFO) == []


def test_the_body_is_empty():
    with pytest.raises(WireError) as caught:
        build_payload(
            ACCOUNT_INFO,
            aud="center-test",
            kid="0" * 64,
            msg_id=new_message_id(),
            ctr=1,
            body={"party_id": "M-0000000000000000"},
            now_s=int(time.time()),
        )
    assert caught.value.code == "malformed_payload"


def test_the_route(center, api):
    member, member_id = enroll(center, "member")
    request = member.envelope(ACCOUNT_INFO, {}, aud=center.center_id)
    response = api.post(ACCOUNT_PATH, json=request.to_json())
    assert response.status_code == 200, response.text
    assert result_of(center, request, response.json())["party_id"] == member_id
    wrong_type = member.envelope(BALANCE, {}, aud=center.center_id)
    assert api.post(ACCOUNT_PATH, json=wrong_type.to_json()).json()["error"]["code"] == "wrong_message_type"
    operator, _view = new_operator(center)
    refused = api.post(ACCOUNT_PATH, json=signed(center, operator, ACCOUNT_INFO, {}).to_json())
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "wrong_role"
    assert "refusal" in refused.json()


# --- the wallet's checks ------------------------------------------------------------------

WALLET_DOC = {
    "member_id": "M-00000000000000aa",
    "role": "member",
    "counter": 5,
    "balance_minor": 700,
    "history": [],
}
GOOD_ANSWER = {
    "action": "account_info",
    "party_id": "M-00000000000000aa",
    "role": "member",
    "key_status": "active",
    "highest_counter": 5,
}


@pytest.mark.parametrize(
    "field, value",
    [
        ("party_id", "M-00000000000000bb"),
        ("role", "store"),
        ("key_status", "revoked"),
        ("highest_counter", 0),
        ("highest_counter", "5"),
        ("action", "balance"),
    ],
)
def test_the_wallet_checks_what_the_answer_echoes(field, value):
    check_answer(ACCOUNT_INFO, {}, GOOD_ANSWER, WALLET_DOC, [])
    with pytest.raises(Contradiction):
        check_answer(ACCOUNT_INFO, {}, GOOD_ANSWER | {field: value}, WALLET_DOC, [])


class FakeWallet:
    def __init__(self, doc: dict):
        self.doc = doc


def test_a_counter_above_the_wallets_is_an_alarm_kept_in_the_history():
    assert counter_alarm(5, 5) is None and counter_alarm(4, 5) is None
    assert "ALARM" in counter_alarm(6, 5)
    quiet = FakeWallet(json.loads(json.dumps(WALLET_DOC)))
    record_account_info(quiet, {"msg_id": "m1"}, GOOD_ANSWER, [])
    assert quiet.doc["history"][-1]["outcome"] == "accepted" and quiet.doc["balance_minor"] == 700
    alarmed = FakeWallet(json.loads(json.dumps(WALLET_DOC)))
    record_account_info(alarmed, {"msg_id": "m2"}, GOOD_ANSWER | {"highest_counter": 9}, [])
    entry = alarmed.doc["history"][-1]
    assert entry["outcome"] == ALARM_OUTCOME and entry["details"]["wallet_counter"] == 5
    assert alarmed.doc["balance_minor"] is None, "the key may have paid: the known balance is forgotten"
    assert alarmed.doc["counter"] == 9, "past the counters used elsewhere, so the wallet is heard again"
    refused = {
        "type": ACCOUNT_INFO,
        "msg_id": "m3",
        "details": {"code": "counter_replayed", "message": "used"},
    }
    other = FakeWallet(json.loads(json.dumps(WALLET_DOC)))
    assert record_replayed_alarm(other.doc, [refused | {"type": BALANCE}]) is None
    assert other.doc["history"] == []
    assert "ALARM" in record_replayed_alarm(other.doc, [refused])
    assert other.doc["history"][-1]["outcome"] == ALARM_OUTCOME and other.doc["balance_minor"] is None


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One real center (SQLite) for the end-to-end tests of this module."""
    data_dir = tmp_path_factory.mktemp("account") / "center"
    assert run_cli("center", ["init", "--data-dir", str(data_dir), "--currency", "JPY"]).returncode == 0
    process = CenterProcess(data_dir=data_dir, port=free_port())
    process.start()
    yield process
    process.stop()


def enrolled_member(tmp_path, make_softhsm_token, center: CenterProcess, name: str) -> tuple[WalletUser, str]:
    member = WalletUser(tmp_path, make_softhsm_token, name)
    member.init()
    enrolled = member.enroll_member(center)
    assert enrolled.returncode == 0, enrolled.stderr
    return member, json.loads(enrolled.stdout)["member_id"]


def last_history(member: WalletUser) -> dict:
    return member.json("history")["entries"][-1]


def test_wallet_account_info(tmp_path, make_softhsm_token, live):
    member, member_id = enrolled_member(tmp_path, make_softhsm_token, live, "m")
    answer = member.json("account-info")
    assert {field: answer[field] for field in FIELDS} == {
        "party_id": member_id,
        "role": "member",
        "key_status": "active",
        "highest_counter": 2,
    }
    assert answer["wallet_counter"] == 2 and answer["alarm"] is None
    plain = member.run("account-info")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [
        f"party_id: {member_id}",
        "role: member",
        "key_status: active",
        "highest_counter: 3",
    ]
    assert last_history(member)["type"] == ACCOUNT_INFO and last_history(member)["outcome"] == "accepted"


def test_an_older_vault_put_back_after_a_signature_alarms(tmp_path, make_softhsm_token, live):
    member, _member_id = enrolled_member(tmp_path, make_softhsm_token, live, "r")
    older = tmp_path / "vault-copy"
    shutil.copy2(member.vault, older)
    assert member.json("balance")["balance_minor"] == 0  # signed with counter 2
    shutil.copy2(older, member.vault)  # the vault that never saw counter 2
    alarmed = member.run("account-info")
    assert alarmed.returncode == 1, alarmed.stderr
    assert alarmed.stderr.startswith("error: ALARM: the center refused this query's counter 2"), (
        alarmed.stderr
    )
    assert "Traceback" not in alarmed.stderr
    # Recovered: the query was signed again past the center's window and the counter moved past.
    # Counter 2 was refused; the next try signs with 2 + the window + 1, which the center accepts.
    assert f"now signs from {2 + COUNTER_WINDOW + 2} on, so it is heard again" in alarmed.stderr, (
        alarmed.stderr
    )
    assert last_history(member)["outcome"] == "accepted"
    assert any(h["outcome"] == ALARM_OUTCOME for h in member.json("history")["entries"])
    assert member.json("balance")["balance_minor"] == 0, "signing works again"


def test_a_signature_made_outside_the_wallet_alarms(tmp_path, make_softhsm_token, live):
    member, _member_id = enrolled_member(tmp_path, make_softhsm_token, live, "x")
    sign_outside_the_wallet(member, live, counter_jump=5)  # counter 1 + 5
    alarmed = member.run("account-info", "--json")
    assert alarmed.returncode == 1
    answer = json.loads(alarmed.stdout)
    assert (answer["highest_counter"], answer["wallet_counter"]) == (6, 6), "moved past counter 6"
    assert answer["alarm"].startswith("ALARM: the center has seen counter 6 from this key")
    assert answer["alarm"].endswith("the wallet now signs from 7 on, so it is heard again")
    assert alarmed.stderr.startswith("error: ALARM: the center has seen counter 6"), alarmed.stderr
    assert last_history(member)["outcome"] == ALARM_OUTCOME
    assert member.json("balance", "--offline")["balance_minor"] is None, "the key may have paid"
    assert member.json("balance")["balance_minor"] == 0, "signing works again"


def sign_outside_the_wallet(member: WalletUser, center: CenterProcess, *, counter_jump: int) -> None:
    """A balance query signed with the wallet's token key and a counter the wallet never used,
    sent without the wallet (the vault is read, never saved)."""
    doc = Vault.open(member.vault, Path(member.files["a"]).read_text().strip()).document()
    key, token = KeyRecord.from_json(doc["key"]), open_token(doc["token"])
    payload = build_payload(
        BALANCE,
        aud=doc["center"]["center_id"],
        kid=doc["kid"],
        msg_id=new_message_id(),
        ctr=doc["counter"] + counter_jump,
        body={},
        now_s=int(time.time()),
    )
    envelope = seal(
        payload, alg=key.algorithm, kid=doc["kid"], sign=lambda data: token.sign(key, data, member.pin)
    )
    with CenterClient(center.url, center.cert.read_bytes()) as client:
        assert "receipt" in client.submit("/v1/balance", envelope)
