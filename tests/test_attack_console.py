"""Issue 11, points 2 and 3, performed as an attacker would, on a real `center serve` over HTTPS
with real `wallet` processes on SoftHSM tokens:

(a) phishing: the attacker's browser gets a login code, the operator approves it with
    `wallet console-login CODE`, and the attacker's session confirms the attacker's own
    10^12 top-up with the cookie and the CSRF header: refused, nothing moves;
(b) top-up decisions are signed over exactly what is decided: the old form is refused as
    outdated, a decision naming another amount is refused, the wallet's shown-then-signed one works;
(c) `wallet console-login` shows the address and user agent the code was asked from;
(d) one address floods the login-code endpoint; another address still logs in.

The loopback addresses 127.0.0.2 (the attacker) and 127.0.0.1 (the operator's browser) are two
clients to the center (Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import json
import ssl
import time

import httpx
import pytest
from operator_support import public_pem
from sqlalchemy import create_engine, select
from support import CenterProcess, SoftwareSigner, free_port, run_cli
from test_wallet_e2e import WalletUser

from center.ledger.book import party_account
from center.storage.db import accounts, normalise_url, topups
from paywire.envelope import seal
from paywire.messages import new_message_id

ATTACKER = "127.0.0.2"
OPERATOR_DESK = "127.0.0.1"
ATTACKER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AttackerBrowser/6.6"
HUGE_MINOR = 10**12
FLOOD_REQUESTS = 2_000


class World:
    def __init__(self, root, make_softhsm_token):
        self.root = root
        data_dir = root / "center"
        made = run_cli(
            "center",
            [
                "init",
                "--data-dir",
                str(data_dir),
                "--db",
                f"sqlite:///{root / 'center.db'}",
                "--currency",
                "JPY",
            ],
        )
        assert made.returncode == 0, made.stderr
        self.center = CenterProcess(data_dir=data_dir, port=free_port())
        self.center.start()
        self.engine = create_engine(
            normalise_url(json.loads((data_dir / "config.json").read_text())["db_url"])
        )
        self.operator = WalletUser(root, make_softhsm_token, "ops")
        self.operator.init()
        self.operator_id = self.add_operator(self.operator.json("export-public-key")["public_key_pem"])
        attached = self.operator.json(
            "operator", "attach", "--center", self.center.url, "--center-cert", str(self.center.cert)
        )
        assert attached["role"] == "operator", attached
        self.attacker = WalletUser(root, make_softhsm_token, "attacker")  # an ordinary enrolled member
        self.attacker.init()
        enrolled = self.attacker.enroll_member(self.center)
        assert enrolled.returncode == 0, enrolled.stderr
        self.attacker_id = json.loads(enrolled.stdout)["member_id"]

    def add_operator(self, pem: str, name: str = "Olivia Operator") -> str:
        path = self.root / f"operator-{len(pem)}-{name[:4]}.pem"
        path.write_text(pem)
        added = run_cli(
            "center",
            [
                "operator",
                "add",
                "--data-dir",
                str(self.center.data_dir),
                "--public-key",
                str(path),
                "--role",
                "operator",
                "--name",
                name,
                "--json",
            ],
        )
        assert added.returncode == 0, added.stderr
        return json.loads(added.stdout)["operator_id"]

    def browser(self, source: str, user_agent: str = ATTACKER_AGENT) -> httpx.Client:
        """A browser at `source`: the center sees that TCP peer address."""
        context = ssl.create_default_context(cafile=str(self.center.cert))
        transport = httpx.HTTPTransport(verify=context, local_address=source)
        return httpx.Client(
            base_url=self.center.url,
            transport=transport,
            timeout=30.0,
            trust_env=False,
            headers={"User-Agent": user_agent},
        )

    def topup(self, topup_id: str) -> tuple[str, int]:
        with self.engine.connect() as conn:
            status = conn.execute(select(topups.c.status).where(topups.c.id == topup_id)).scalar_one()
            balance = conn.execute(
                select(accounts.c.balance_minor).where(accounts.c.id == party_account(self.attacker_id))
            ).scalar_one()
        return status, balance

    def close(self) -> None:
        self.engine.dispose()
        self.center.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_softhsm_token):
    world = World(tmp_path_factory.mktemp("attack-console"), make_softhsm_token)
    yield world
    world.close()


def log_in_as_operator(world: World, browser: httpx.Client) -> tuple[dict, str]:
    """The operator approves the code this browser shows; returns the session's status and what the
    wallet said."""
    asked = browser.post("/console/api/challenge")
    assert asked.status_code == 200, f"this browser gets no login code: {asked.text}"
    code = asked.json()["challenge"]
    approved = world.operator.run("console-login", code, "--yes", "--json")
    assert approved.returncode == 0, approved.stderr
    status = browser.get("/console/api/login-status")
    assert status.status_code == 200 and status.json()["status"] == "approved", status.text
    return status.json(), approved.stderr


def test_a_phished_console_session_cannot_confirm_the_attackers_own_topup(world):
    """(a) The attack of issue 11.2, exactly: a session from a phished approval moves no money."""
    topup_id = world.attacker.json("topup", str(HUGE_MINOR), "--method", "bank")["topup_id"]
    assert world.topup(topup_id) == ("pending", 0)
    with world.browser(ATTACKER) as attacker:
        status, shown = log_in_as_operator(world, attacker)  # "please approve my code"
        assert status["operator_id"] == world.operator_id and status["role"] == "operator"
        csrf = attacker.get("/console/api/me").json()["csrf_token"]
        assert csrf == status["csrf_token"]
        for decision in ("confirm", "decline"):
            forged = attacker.post(
                f"/console/api/topups/{topup_id}/{decision}", headers={"X-CSRF-Token": csrf}
            )
            assert forged.status_code == 403, forged.text
            assert forged.json()["error"]["code"] == "signed_action_required"
            assert world.topup(topup_id) == ("pending", 0)
        # The session still reads (that is what it is for) and can end itself.
        assert attacker.get("/console/api/topups", params={"status": "pending"}).status_code == 200
        assert attacker.post("/console/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert world.topup(topup_id) == ("pending", 0)
    # What the operator was shown before signing named the attacker's client, not the operator's desk.
    assert ATTACKER in shown and "AttackerBrowser/6.6" in shown


def signed_outdated(center_id: str, signer: SoftwareSigner, body: dict):
    """An operator_action in the form an older wallet signed (today's builder refuses to make it)."""
    signer.counter += 1
    now_s = int(time.time())
    payload = {
        "dom": "tokenpay",
        "v": 1,
        "type": "operator_action",
        "aud": center_id,
        "kid": signer.kid,
        "msg_id": new_message_id(),
        "ctr": signer.counter,
        "iat": now_s,
        "exp": now_s + 3600,
        "body": body,
    }
    return seal(payload, alg=signer.algorithm, kid=signer.kid, sign=signer.sign)


def test_topup_decisions_are_signed_over_exactly_what_is_decided(world):
    """(b) Old form refused as outdated; a wrong amount refused; the wallet's shown-then-signed decision
    works."""
    topup_id = world.attacker.json("topup", "3000", "--method", "cash")["topup_id"]
    signer = SoftwareSigner()  # a second operator's key, to sign what today's wallet never would
    world.add_operator(public_pem(signer.spki).decode(), name="Second Operator")
    with world.browser(OPERATOR_DESK, "curl/8") as client:
        center_id = client.get("/v1/center").json()["center_id"]
        for action in ("confirm_topup", "decline_topup"):
            old = signed_outdated(center_id, signer, {"action": action, "args": {"topup_id": topup_id}})
            response = client.post("/v1/operator/actions", json=old.to_json())
            assert (response.status_code, response.json()["error"]["code"]) == (
                400,
                "operator_action_outdated",
            )
        for amount_minor in (HUGE_MINOR, 3001):
            wrong = signer.envelope(
                "operator_action",
                {
                    "action": "confirm_topup",
                    "args": {
                        "topup_id": topup_id,
                        "member_id": world.attacker_id,
                        "amount_minor": amount_minor,
                        "currency": "JPY",
                    },
                },
                aud=center_id,
            )
            response = client.post("/v1/operator/actions", json=wrong.to_json())
            assert (response.status_code, response.json()["error"]["code"]) == (409, "topup_details_mismatch")
    assert world.topup(topup_id) == ("pending", 0)

    confirmed = world.operator.run("operator", "confirm-topup", topup_id, "--yes", "--json")
    assert confirmed.returncode == 0, confirmed.stderr
    result = json.loads(confirmed.stdout)
    assert (result["status"], result["topup_id"], result["amount_minor"]) == ("confirmed", topup_id, 3000)
    for shown in (topup_id, "Hanako Yamada", world.attacker_id, "3000 JPY", "cash", "asked at"):
        assert shown in confirmed.stderr, (shown, confirmed.stderr)
    assert world.topup(topup_id) == ("confirmed", 3000)
    # Deciding it again: the wallet reads it first and signs nothing.
    again = world.operator.run("operator", "decline-topup", topup_id, "--yes")
    assert again.returncode != 0 and "already confirmed" in again.stderr.strip().splitlines()[-1]
    assert world.topup(topup_id) == ("confirmed", 3000)


def test_console_login_shows_the_address_and_user_agent_the_code_came_from(world):
    """(c) What the operator approves is shown first, as the center recorded it; without --yes and
    without a terminal nothing is signed."""
    agent = "Desk-Browser/2.0 [bold red]not markup[/]"
    with world.browser(OPERATOR_DESK, agent) as desk:
        code = desk.post("/console/api/challenge").json()["challenge"]
        details = desk.get(f"/v1/console/challenges/{code}").json()
        assert (details["client_address"], details["user_agent"]) == (OPERATOR_DESK, agent)
        unasked = world.operator.run("console-login", code)
        assert unasked.returncode != 0 and "--yes" in unasked.stderr.strip().splitlines()[-1]
        assert OPERATOR_DESK in unasked.stderr and agent in unasked.stderr  # shown literally, before refusing
        assert desk.get("/console/api/login-status").json() == {"status": "pending"}
        approved = world.operator.run("console-login", code, "--yes")
        assert approved.returncode == 0, approved.stderr
        assert OPERATOR_DESK in approved.stderr and agent in approved.stderr
        assert desk.get("/console/api/login-status").json()["status"] == "approved"


def test_forwarded_for_from_an_untrusted_peer_is_not_believed(world):
    """No trusted proxy is configured: a client's own X-Forwarded-For changes neither its recorded address
    nor the limit it counts against."""
    with world.browser(OPERATOR_DESK, "curl/8") as client:
        code = client.post("/console/api/challenge", headers={"X-Forwarded-For": "198.51.100.9"}).json()[
            "challenge"
        ]
        assert client.get(f"/v1/console/challenges/{code}").json()["client_address"] == OPERATOR_DESK


def test_one_address_flooding_login_codes_does_not_lock_out_another(world):
    """(d) The attack of issue 11.3: 127.0.0.2 floods the challenge endpoint, 127.0.0.1 still logs in."""
    statuses = []
    with world.browser(ATTACKER) as flood:
        for _ in range(FLOOD_REQUESTS):
            refused = flood.post("/console/api/challenge")
            statuses.append(refused.status_code)
            if refused.status_code == 429:
                break
    with world.browser(OPERATOR_DESK, "Desk-Browser/2.0") as desk:
        status, shown = log_in_as_operator(world, desk)
        assert status["operator_id"] == world.operator_id and OPERATOR_DESK in shown
        assert desk.get("/console/api/me").status_code == 200
    # The flood was cut early, by a limit for that client, with a time to come back.
    assert statuses[-1] == 429 and len(statuses) < 100, f"{len(statuses)} codes before the flood was cut"
    error = refused.json()["error"]
    assert error["code"] == "too_many_challenges" and isinstance(error["retry_after"], int)
    assert error["retry_after"] >= 1 and refused.headers["retry-after"] == str(error["retry_after"])
    with world.browser(ATTACKER) as flood:  # the flooder is still held back
        assert flood.post("/console/api/challenge").status_code == 429
