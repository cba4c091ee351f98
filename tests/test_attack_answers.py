"""Answers an attacker would forge or replay (issue 11 point 10, issue 17 points 3 and 4).

- A refusal by a rule of a verified message is final for its message id, on the single and the
  batch path; a message that did not verify burns nothing; "try again" answers are not final.
- The center signs its refusals, binding the request; a wallet believes a refusal only when that
  signature verifies and names its request: an impostor holding the center's TLS key (a plain
  file) cannot make it record a payment as refused, nor make the member pay twice.
- A receipt signed by the center's key that contradicts what was signed is an alarm, never a
  payment recorded.

The first part runs in process (FastAPI TestClient, SQLite and PostgreSQL); the attacks on the
wallet run real `center serve`, `wallet` processes and SoftHSM tokens, with a proxy on another
loopback port that serves the center's own TLS certificate and key.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from operator_support import Clock, new_operator, signed
from sqlalchemy import func, select
from support import CenterProcess, SoftwareSigner, cli_env, free_port, run_cli
from test_batch import post_batch
from test_payments_api import (
    STORE_NAME,
    enroll,
    funded_member,
    pay_body,
    result_of,
    submit,
)
from test_payments_e2e import center_cli, count_payments
from test_wallet_e2e import WalletUser

from center.errors import ApiError
from center.keys.admin import revoke_key
from center.keys.binding import bind_key
from center.storage.db import messages, payments
from paywire.envelope import Envelope, b64url_decode, b64url_encode
from paywire.messages import OPERATOR_ACTION
from paywire.receipts import check_refusal
from token_wallet.answer_checks import Contradiction, check_answer

OPERATOR = "operator:test"


def refusal_of(center, request: Envelope, answer: dict) -> dict:
    """The center's signed refusal in an answer, checked as a wallet checks it."""
    return check_refusal(
        Envelope.from_json(answer["refusal"]),
        center_spki=center.signer.spki,
        center_alg=center.signer.alg,
        request=request,
    )


def rebind_claim(center, member_id: str) -> SoftwareSigner:
    signer = SoftwareSigner()
    request = signer.envelope(
        "enroll", signer.enroll_body("member") | {"rebind": member_id}, aud=center.center_id
    )
    assert result_of(center, request, center.enroll(request))["action"] == "bind_requested"
    return signer


def answered_messages(center) -> int:
    with center.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(messages)).scalar_one()


# --- 11.10: a rule refusal is final for its message id -------------------------------------------


def test_operator_action_refused_by_a_rule_stays_refused_after_the_state_changes(center, api):
    old, member_id = funded_member(center, 1_000)
    new = rebind_claim(center, member_id)
    operator, _ = new_operator(center)
    bind = signed(center, operator, "operator_action", {"action": "bind_key", "args": {"kid": new.kid}})

    first = api.post("/v1/operator/actions", json=bind.to_json())
    assert (first.status_code, first.json()["error"]["code"]) == (409, "party_has_active_key")
    revoke_key(center.engine, old.kid, reason="card lost", decided_by=OPERATOR, now_ms=center.clock_ms())

    again = api.post("/v1/operator/actions", json=bind.to_json())  # the same bytes: would succeed now
    assert again.status_code == 409 and again.json() == first.json(), "a rule refusal must be final"
    assert refusal_of(center, bind, first.json()) == {
        "code": "party_has_active_key",
        "status": 409,
        "message": first.json()["error"]["message"],
    }
    # A new message for the same action is a new decision, and it is taken.
    rebound = signed(center, operator, "operator_action", {"action": "bind_key", "args": {"kid": new.kid}})
    assert api.post("/v1/operator/actions", json=rebound.to_json()).status_code == 200


def test_a_message_that_did_not_verify_burns_nothing(center, api):
    old, member_id = funded_member(center, 1_000)
    new = rebind_claim(center, member_id)
    operator, _ = new_operator(center)
    revoke_key(center.engine, old.kid, reason="card lost", decided_by=OPERATOR, now_ms=center.clock_ms())
    bind = signed(center, operator, "operator_action", {"action": "bind_key", "args": {"kid": new.kid}})
    signature = b64url_decode(bind.to_json()["sig"], "sig", 512)
    forged = bind.to_json() | {"sig": b64url_encode(signature[:-1] + bytes([signature[-1] ^ 1]))}
    before = answered_messages(center)
    answer = api.post("/v1/operator/actions", json=forged)
    assert 400 <= answer.status_code < 500 and "refusal" not in answer.json()
    assert answered_messages(center) == before
    # The genuine bytes with that message id and counter are still accepted.
    assert api.post("/v1/operator/actions", json=bind.to_json()).status_code == 200


def test_a_key_not_bound_yet_is_refused_for_good(center, store):
    """A lost card's new key signs a payment before an operator binds it: refused, and once the key is
    bound the same bytes are still refused (the member was told so; a copy must not pay later)."""
    old, member_id = funded_member(center, 1_000)
    new = rebind_claim(center, member_id)
    _, store_id = store
    payment = new.envelope("pay", pay_body(store_id, 100), aud=center.center_id)
    first = refused_alone(center, payment)
    assert first.code == "key_not_bound"
    revoke_key(center.engine, old.kid, reason="card lost", decided_by=OPERATOR, now_ms=center.clock_ms())
    bind_key(center.engine, new.kid, decided_by=OPERATOR, now_ms=center.clock_ms())
    again = refused_alone(center, payment)
    assert (again.code, again.message) == (first.code, first.message)
    assert refusal_of(center, payment, again.body())["code"] == "key_not_bound"


def test_try_again_answers_are_not_final(center, store):
    """A message from a clock ahead of the center's is told to wait: the same bytes go through later."""
    clock = Clock()
    center.clock_ms = clock
    buyer, _ = funded_member(center, 1_000)
    _, store_id = store
    payment = buyer.envelope(
        "pay", pay_body(store_id, 100), aud=center.center_id, now_s=clock() // 1000 + 3600
    )
    early = refused_alone(center, payment)
    assert early.code == "not_yet_valid" and getattr(early, "refusal", None) is None
    clock.advance(3600 * 1000)
    assert result_of(center, payment, center.submit(payment, "pay"))["amount_minor"] == 100


def refused_alone(center, request: Envelope) -> ApiError:
    with pytest.raises(ApiError) as caught:
        center.submit(request, "pay")
    return caught.value


def test_batch_refusal_is_signed_and_final_after_a_top_up(center, api, store):
    buyer, _ = funded_member(center, 50)
    _, store_id = store
    payment = buyer.envelope("pay", pay_body(store_id, 80, "B-1"), aud=center.center_id)
    [first] = post_batch(api, [payment]).json()["results"]
    assert first["error"]["code"] == "insufficient_funds"
    assert refusal_of(center, payment, first)["code"] == "insufficient_funds"
    topup = submit(center, buyer, "topup", {"amount_minor": 1_000, "currency": "JPY", "method": "bank"})
    center.decide_topup(topup["topup_id"], "confirm", decided_by=OPERATOR)

    [again] = post_batch(api, [payment]).json()["results"]
    assert again == first
    alone = api.post("/v1/payments", json=payment.to_json())  # the single path agrees
    assert alone.status_code == 409 and alone.json() == {"error": first["error"], "refusal": first["refusal"]}
    with center.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(payments)).scalar_one() == 0


@pytest.fixture
def store(center):
    return enroll(center, "store", name=STORE_NAME)


# --- 17.3 and 17.4: an impostor holding the center's TLS key --------------------------------------

SIGN_AS_CENTER = """
import json, sys
from pathlib import Path
from center.storage.config import CenterConfig
from center.keys.identity import CenterSigner
from paywire import merkle
from paywire.envelope import Envelope, b64url_decode
from paywire.log_entry import entry_fields, entry_leaf_hash
from paywire.receipts import build_log_receipt
from tokens.base import KeyRecord
from tokens.pkcs11_token import open_pkcs11_token
config = CenterConfig.load(Path(sys.argv[1]))
config.apply_token_environment()
token = open_pkcs11_token(config.pkcs11_module, label=config.token_label)
key = KeyRecord.from_json(config.signing_key)
signer = CenterSigner(token.resident_signer(key, config.token_pin()).sign, key, config.center_id)
document = json.load(sys.stdin)
request, real, result = Envelope.from_json(document["request"]), document["receipt"], document["result"]
entry = real["entry"]
real_head = json.loads(Envelope.from_json(real["tree_head"]).payload)["body"]
# The real entry with another result, under a tree head the center's key signs for it: the real
# proof path, with the root it leads to from the forged leaf.
leaf = entry_leaf_hash(
    entry_fields(entry | {"payload": request.payload, "signature": request.sig}, result)
)
proof = [b64url_decode(p, "proof", 64) for p in real["proof"]]
index, size = entry["seq"] - 1, real_head["tree_size"]
node, last, root = index, size - 1, leaf
for sibling in proof:
    if node % 2 == 1 or node == last:
        root = merkle.node_hash(sibling, root)
        while node % 2 == 0 and node != 0:
            node, last = node >> 1, last >> 1
    else:
        root = merkle.node_hash(root, sibling)
    node, last = node >> 1, last >> 1
head = signer.sign_tree_head(
    tree_size=size, root_hash=root, timestamp_ms=real_head["timestamp_ms"],
    prev_head_sha256=real_head["prev_head_sha256"],
)
receipt = build_log_receipt(
    seq=entry["seq"], created_at_ms=entry["created_at_ms"], kid=entry["kid"], alg=entry["alg"],
    msg_type=entry["msg_type"], msg_id=entry["msg_id"], action=result, proof=proof,
    tree_head=head.to_json(),
)
print(json.dumps(receipt))
"""


def sign_as_center(center: CenterProcess, request: dict, result: dict, real_receipt: dict) -> dict:
    """A receipt for `result` whose tree head is signed with the center's own token key (the test
    opens the center's token): the real entry with another result, proved under a forged head."""
    done = subprocess.run(
        [sys.executable, "-c", SIGN_AS_CENTER, str(center.data_dir)],
        env=cli_env(),
        text=True,
        input=json.dumps({"request": request, "result": result, "receipt": real_receipt}),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class ImpostorProxy:
    """Serves the center's own TLS certificate and key on another loopback port, forwards every
    request to the real center, and answers payments with `lie(request, real_status, real_answer)`."""

    def __init__(self, center: CenterProcess):
        config = json.loads((center.data_dir / "config.json").read_text())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(
            center.cert, config.get("tls_key_file") or center.data_dir / "tls" / "key.pem"
        )
        upstream = httpx.Client(
            base_url=center.url, verify=ssl.create_default_context(cafile=str(center.cert)), timeout=30
        )
        self.lie = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self._answer(upstream.get(self.path))

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                real = upstream.post(self.path, content=body, headers={"content-type": "application/json"})
                if self.path == "/v1/payments" and proxy.lie is not None:
                    status, answer = proxy.lie(json.loads(body), real.status_code, real.json())
                    self._send(status, json.dumps(answer).encode())
                    return
                self._answer(real)

            def _answer(self, real: httpx.Response):
                self._send(real.status_code, real.content)

            def _send(self, status: int, content: bytes):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._upstream = upstream
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._upstream.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_softhsm_token):
    """One real center (SQLite), a funded member and a store, and the impostor's proxy."""
    tmp_path = tmp_path_factory.mktemp("attack")
    data_dir = tmp_path / "center"
    assert run_cli("center", ["init", "--data-dir", str(data_dir), "--currency", "JPY"]).returncode == 0
    center = CenterProcess(data_dir=data_dir, port=free_port())
    center.start()
    proxy = ImpostorProxy(center)
    try:
        member, store = (
            WalletUser(tmp_path, make_softhsm_token, "m"),
            WalletUser(tmp_path, make_softhsm_token, "s"),
        )
        member.init()
        store.init("--key-type", "ed25519")
        assert member.enroll_member(center).returncode == 0
        enrolled = store.json(
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
            "JP-0009-76",
        )
        topup_id = member.json("topup", "2000", "--method", "bank")["topup_id"]
        assert center_cli(center, "operator", "confirm-topup", topup_id)["status"] == "confirmed"
        assert member.json("balance")["balance_minor"] == 2000
        member.json("sync", "--center", proxy.url)  # the member now talks to the impostor
        yield center, proxy, member, enrolled["member_id"]
    finally:
        proxy.close()
        center.stop()


def pay(member: WalletUser, store_id: str, amount: str, order: str):
    return member.run("pay", "--store", store_id, "--amount", amount, "--order", order, "--yes")


def outbox_types(member: WalletUser) -> list[str]:
    return [e["type"] for e in member.json("history")["outbox"]]


def unsigned_insufficient_funds(_request, _status, _answer):
    return 409, {"error": {"code": "insufficient_funds", "message": "the balance does not cover this amount"}}


def test_an_impostors_unsigned_refusal_is_not_believed(world):
    center, proxy, member, store_id = world
    before = count_payments(center)
    known = member.json("balance")["balance_minor"]
    # The impostor forwards the payment to the center, then answers "insufficient funds".
    proxy.lie = unsigned_insufficient_funds
    lied = pay(member, store_id, "300", "T-1")
    assert count_payments(center) == before + 1, "the center applied it"
    assert lied.returncode != 0 and "outbox" in lied.stderr.strip().splitlines()[-1], lied.stderr
    assert outbox_types(member) == ["pay"], "an unsigned refusal must not be recorded"
    assert not [e for e in member.json("history")["entries"] if e["outcome"] == "refused"]
    again = member.run("sync")  # through the impostor again: still not believed, still waiting
    assert again.returncode != 0 and outbox_types(member) == ["pay"]

    # The real center answers the same signed bytes with the real receipt: paid once, balance right.
    synced = member.json("sync", "--center", center.url)
    assert [(d["type"], d["result"]["order_ref"]) for d in synced["delivered"]] == [("pay", "T-1")]
    assert synced["delivered"][0]["result"]["balance_minor"] == known - 300
    assert member.json("balance")["balance_minor"] == known - 300
    assert count_payments(center) == before + 1
    member.json("sync", "--center", proxy.url)


def test_a_genuine_refusal_of_another_request_is_not_believed(world):
    center, proxy, member, store_id = world
    genuine = {}

    def keep_real(_request, status, answer):
        genuine.update(answer)
        return status, answer

    proxy.lie = keep_real  # a genuine refusal, through the proxy: signed by the center, recorded as refused
    too_much = pay(member, store_id, "999999", "T-0")
    assert too_much.returncode != 0 and "insufficient_funds" in too_much.stderr
    assert "refusal" in genuine and outbox_types(member) == []
    refused = [e for e in member.json("history")["entries"] if e["outcome"] == "refused"]

    proxy.lie = lambda _request, _status, _answer: (409, genuine)  # replayed onto another payment
    lied = pay(member, store_id, "100", "T-2")
    assert lied.returncode != 0 and outbox_types(member) == ["pay"]
    assert [e for e in member.json("history")["entries"] if e["outcome"] == "refused"] == refused
    synced = member.json("sync", "--center", center.url)
    assert [d["result"]["order_ref"] for d in synced["delivered"]] == ["T-2"]
    member.json("sync", "--center", proxy.url)


def test_a_receipt_contradicting_the_request_is_an_alarm(world):
    center, proxy, member, store_id = world
    known = member.json("balance", "--offline")["balance_minor"]

    def contradict(request, status, answer):
        assert status == 200, answer
        real = answer["receipt"]
        result = real["entry"]["action"] | {"amount_minor": 1, "balance_minor": 999_999}
        return 200, {"receipt": sign_as_center(center, request, result, real)}

    proxy.lie = contradict
    before = count_payments(center)
    lied = pay(member, store_id, "300", "C-1")
    assert lied.returncode != 0, lied.stdout
    assert "paid 1" not in lied.stdout + lied.stderr
    assert "ALARM" in lied.stderr.strip().splitlines()[-1] and "amount_minor 1 != 300" in lied.stderr
    last = member.json("history")["entries"][-1]
    assert last["type"] == "pay" and last["outcome"].startswith("alarm: receipt contradicts the request")
    assert "amount_minor 1 != 300" in last["outcome"]
    assert member.json("balance", "--offline")["balance_minor"] is None, (
        "the contradicted balance is not kept"
    )

    proxy.lie = None
    assert member.json("sync")["delivered"] == []  # nothing resent: paid once
    assert member.json("balance")["balance_minor"] == known - 300
    assert count_payments(center) == before + 1


def test_a_receipt_with_a_balance_that_does_not_follow_is_an_alarm(world):
    center, proxy, member, store_id = world
    member.json("balance")  # a known balance: it can fall only by this wallet's own payments

    def deflate(request, status, answer):
        real = answer["receipt"]
        result = real["entry"]["action"] | {"balance_minor": real["entry"]["action"]["balance_minor"] - 250}
        return 200, {"receipt": sign_as_center(center, request, result, real)}

    proxy.lie = deflate
    lied = pay(member, store_id, "100", "C-2")
    proxy.lie = None
    assert (
        lied.returncode != 0 and "ALARM" in lied.stderr and "balance" in lied.stderr.strip().splitlines()[-1]
    )
    assert member.json("history")["entries"][-1]["outcome"].startswith(
        "alarm: receipt contradicts the request"
    )


def test_a_genuine_receipt_passes_every_check(world):
    """No false alarm: the real center's receipts, after a top-up confirmed unseen and a refund."""
    center, proxy, member, store_id = world
    proxy.lie = None
    known = member.json("balance")["balance_minor"]
    topup_id = member.json("topup", "500", "--method", "bank")["topup_id"]
    center_cli(center, "operator", "confirm-topup", topup_id)  # the wallet has not seen it yet
    paid = member.json("pay", "--store", store_id, "--amount", "50", "--order", "G-1", "--yes")
    assert (paid["amount_minor"], paid["balance_minor"]) == (50, known + 500 - 50)


def test_an_operator_decision_answered_for_another_top_up_is_an_alarm():
    """A center-signed answer to a signed confirm_topup must be about that top-up, member and amount."""
    request = {
        "action": "confirm_topup",
        "args": {
            "topup_id": "U-" + "1" * 16,
            "member_id": "M-" + "2" * 16,
            "amount_minor": 300,
            "currency": "JPY",
        },
    }
    answer = {
        "operator_action": "confirm_topup",
        "action": "topup_confirmed",
        "topup_id": "U-" + "1" * 16,
        "member_id": "M-" + "2" * 16,
        "amount_minor": 300,
        "method": "bank",
        "status": "confirmed",
        "repeated": False,
        "operator_id": "O-" + "3" * 16,
        "role": "operator",
    }
    check_answer(OPERATOR_ACTION, request, answer, {}, [])
    for field, other in (
        ("amount_minor", 10**12),
        ("topup_id", "U-" + "9" * 16),
        ("member_id", "M-" + "9" * 16),
        ("operator_action", "decline_topup"),
    ):
        with pytest.raises(Contradiction, match=field):
            check_answer(OPERATOR_ACTION, request, answer | {field: other}, {}, [])
