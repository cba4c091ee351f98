"""Issue 11.4 and 11.9 as an attacker tries them, on a real `center serve` over HTTPS, real `wallet`
processes and SoftHSM tokens (SQLite and PostgreSQL).

4: a member's id is in every store notice. Strangers flood the account with rebind claims from
throwaway keys (signed in-process here, sent over HTTPS to the real server) to fill the per-account
cap, so the holder's own claim after a lost card would be refused. The holder's claim that proves
the recovery code (or, for an account from before codes, an operator's one-time ticket) is accepted
whatever the strangers sent, and after `bind-key` pays from the same balance. Wrong codes are
refused and their count per account is limited, without ever refusing the right code.
9: `wallet enroll --center http://...` is refused at once, nothing signed or queued.
"""

from __future__ import annotations

import itertools
import json
import re

import httpx
import pytest
from fixtures_center import DATABASES
from receipt_support import receipt_result
from sqlalchemy import delete, select
from support import (
    SOFTHSM_MODULE,
    CenterProcess,
    SoftwareSigner,
    cli_env,
    create_pg_database,
    drop_pg_database,
    free_port,
    run_cli,
)
from test_key_lifecycle_e2e import last_error, new_token_files, pay, vault_document
from test_payments_e2e import center_cli
from test_wallet_e2e import WalletUser

from center.keys import lifecycle as key_lifecycle
from center.storage import db as center_db
from center.storage.db import audit_log, make_engine, normalise_url
from token_wallet.client import pinned_ssl_context

STRANGERS = 50


def recovery():
    """paywire.recovery, imported where used: this file also runs against the code from before the fix
    (the before/after proof), where it does not exist."""
    from paywire import recovery as module

    return module


@pytest.fixture(scope="module", params=DATABASES)
def served(request, tmp_path_factory, postgres_available):
    """One `center serve` per database for this module's tests (each test makes its own accounts)."""
    db_url = None
    if request.param == "postgres":
        if not postgres_available:
            pytest.skip("PostgreSQL is not running (the README's test command starts one)")
        db_url = create_pg_database()
    data_dir = tmp_path_factory.mktemp("recovery-center") / "center"
    url = db_url or f"sqlite:///{data_dir.parent / 'center.db'}"
    result = run_cli("center", ["init", "--data-dir", str(data_dir), "--db", url, "--currency", "JPY"])
    assert result.returncode == 0, result.stderr
    process = CenterProcess(data_dir=data_dir, port=free_port())
    process.start()
    yield process
    process.stop()
    if db_url:
        drop_pg_database(db_url)


class Https:
    """Requests to the served center over pinned TLS, as any client on the network could send them.

    Each test's client has a loopback address of its own: the center limits enrollments per source
    address (center.api.ratelimit), and an attacker with many addresses gets past that limit; the cap
    per account and the recovery proof are what this file tests.
    """

    def __init__(self, center: CenterProcess, source_address: str):
        context = pinned_ssl_context(center.cert.read_bytes())
        self.client = httpx.Client(
            base_url=center.url,
            timeout=10,
            transport=httpx.HTTPTransport(verify=context, local_address=source_address),
        )
        self.center_id = self.client.get("/v1/center").json()["center_id"]

    def claim(self, member_id: str, *, code: str | None = None, signer: SoftwareSigner | None = None):
        """A rebind claim from a throwaway key, with a proof made from `code` if given."""
        signer = signer or SoftwareSigner()
        body = signer.enroll_body("member", name="Not Hanako", birth_date="1970-01-01") | {
            "rebind": member_id
        }
        if code is not None:
            body["recovery_proof"] = recovery().prove(
                code, center_id=self.center_id, party_id=member_id, new_kid=signer.kid
            )
        return self.client.post(
            "/v1/enroll", json=signer.envelope("enroll", body, aud=self.center_id).to_json()
        )

    def flood(self, member_id: str) -> list[str]:
        """STRANGERS claims naming the account; the error codes (or 'accepted') they got."""
        outcomes = []
        for _ in range(STRANGERS):
            response = self.claim(member_id)
            outcomes.append("accepted" if response.status_code == 200 else response.json()["error"]["code"])
        return outcomes


SOURCE_ADDRESSES = (f"127.0.0.{n}" for n in itertools.count(2))


@pytest.fixture
def https(served):
    client = Https(served, next(SOURCE_ADDRESSES))
    yield client
    client.client.close()


def enroll_member(member: WalletUser, center: CenterProcess) -> dict:
    member.init()
    enrolled = member.enroll_member(center)
    assert enrolled.returncode == 0, enrolled.stderr
    return json.loads(enrolled.stdout)


@pytest.fixture(scope="module")
def store_id(served, tmp_path_factory, make_softhsm_token) -> str:
    """One store per served center, paid by the recovered members."""
    store = WalletUser(tmp_path_factory.mktemp("store"), make_softhsm_token, "s")
    store.init("--key-type", "ed25519")
    return store.json(
        "enroll",
        "--center",
        served.url,
        "--center-cert",
        str(served.cert),
        "--store",
        "--name",
        "Corner Shop",
        "--address",
        "2-2 Shibuya",
        "--bank-account",
        "JP-0009-7654321",
    )["member_id"]


def fund(member: WalletUser, center: CenterProcess, amount: str) -> None:
    center_cli(
        center, "operator", "confirm-topup", member.json("topup", amount, "--method", "bank")["topup_id"]
    )


def lose_card(center: CenterProcess, enrolled: dict) -> None:
    """The member reports the card lost; an operator revokes its key."""
    center_cli(center, "operator", "revoke-key", enrolled["kid"], "--reason", "card lost")


def rebind(user: WalletUser, center: CenterProcess, member_id: str, code: str, **env: str):
    return user.run(
        "enroll",
        "--center",
        center.url,
        "--center-cert",
        str(center.cert),
        "--rebind",
        member_id,
        "--recovery-code",
        code,
        "--name",
        "Hanako Yamada",
        "--address",
        "1-1 Chiyoda, Tokyo",
        "--birth-date",
        "1985-06-15",
        "--json",
        **env,
    )


def pending_claims(center: CenterProcess, member_id: str) -> dict[str, dict]:
    keys = center_cli(center, "operator", "list-keys", "--party", member_id, "--status", "pending_bind")[
        "keys"
    ]
    return {key["kid"]: key["claim"] for key in keys}


def test_fifty_strangers_claims_do_not_block_the_holders_recovery_code(
    tmp_path, make_softhsm_token, served, https, store_id
):
    member = WalletUser(tmp_path, make_softhsm_token, "m")
    enrolled = enroll_member(member, served)
    member_id, code = enrolled["member_id"], enrolled["recovery_code"]
    assert recovery().normalise(code)  # shown once, in the typable grouped form
    assert code.replace("-", "") not in member.vault.read_bytes().decode("latin-1")  # not kept in the vault
    fund(member, served, "10000")
    lose_card(served, enrolled)

    # The attack: 50 claims naming the member, from 50 throwaway keys, over HTTPS.
    outcomes = https.flood(member_id)
    assert outcomes.count("accepted") == key_lifecycle.MAX_PENDING_CLAIMS_PER_PARTY
    assert set(outcomes) == {"accepted", "too_many_pending_keys"}

    # The holder: a new token in the same wallet home, and the recovery code.
    label, files = new_token_files(tmp_path, make_softhsm_token, "new-card")
    new_card = {"WALLET_PASSWORD_B_FILE": files["b"], "WALLET_SO_PIN_FILE": files["so"]}
    replaced = member.json(
        "replace-key", "--pkcs11-module", SOFTHSM_MODULE, "--token-label", label, **new_card
    )
    new_kid = replaced["new_kid"]
    claim = rebind(member, served, member_id, code.lower(), **new_card)  # typed in any case
    assert claim.returncode == 0, claim.stderr
    claimed = json.loads(claim.stdout)
    assert (claimed["status"], claimed["kid"], claimed["recovery_verified"]) == (
        "pending_bind",
        new_kid,
        "code",
    )
    next_code = claimed["recovery_code"]
    assert next_code != code

    # The operator sees one pending claim, marked verified (the strangers' ones are superseded).
    assert {kid: claim["recovery_verified"] for kid, claim in pending_claims(served, member_id).items()} == {
        new_kid: "code"
    }
    table = run_cli(
        "center",
        ["operator", "list-keys", "--party", member_id, "--data-dir", str(served.data_dir)],
        env=cli_env(COLUMNS="300"),
    )
    assert "recovery code verified" in table.stdout, table.stdout
    assert center_cli(served, "operator", "bind-key", new_kid)["member_id"] == member_id
    assert json.loads(pay(member, store_id, "1000", "after-bind", **new_card).stdout)["balance_minor"] == 9000

    # Binding installed the code the new enrollment showed: the old one proves nothing any more.
    assert https.claim(member_id, code=code).json()["error"]["code"] == "wrong_recovery_code"
    assert https.claim(member_id, code=next_code).status_code == 200
    assert center_cli(served, "ledger", "check")["ok"] is True


def test_an_account_from_before_codes_recovers_with_an_operator_ticket_from_a_new_home(
    tmp_path, make_softhsm_token, served, https, store_id
):
    member = WalletUser(tmp_path, make_softhsm_token, "old")
    enrolled = enroll_member(member, served)
    member_id = enrolled["member_id"]
    _forget_recovery_code(served, member_id)  # as enrolled before the fix: no code at the center
    fund(member, served, "5000")
    lose_card(served, enrolled)
    assert https.flood(member_id).count("accepted") == key_lifecycle.MAX_PENDING_CLAIMS_PER_PARTY

    ticket = center_cli(served, "operator", "issue-recovery-ticket", member_id)
    assert ticket["member_id"] == member_id and recovery().normalise(ticket["ticket"])
    assert ticket["ticket"] not in _audit_text(served)  # audited by its public key only

    # Wallet home and card both lost: a new home on a new token.
    fresh = WalletUser(tmp_path, make_softhsm_token, "fresh")
    fresh.init()
    ticket_file = tmp_path / "ticket"
    ticket_file.write_text(
        ticket["ticket"] + "\n"
    )  # '-': read without echo, here from the file named in the env
    claim = rebind(fresh, served, member_id, "-", WALLET_RECOVERY_CODE_FILE=str(ticket_file))
    assert claim.returncode == 0, claim.stderr
    claimed = json.loads(claim.stdout)
    assert (claimed["status"], claimed["recovery_verified"]) == ("pending_bind", "ticket")
    # One-time: the same ticket proves no second claim.
    assert https.claim(member_id, code=ticket["ticket"]).json()["error"]["code"] == "wrong_recovery_code"

    assert list(pending_claims(served, member_id)) == [claimed["kid"]]
    center_cli(served, "operator", "bind-key", claimed["kid"])
    paid = pay(fresh, store_id, "500", "new-home")
    assert paid.returncode == 0, paid.stderr
    assert json.loads(paid.stdout)["balance_minor"] == 4500
    # The new home's enrollment brought a code of its own, valid from the bind on.
    assert https.claim(member_id, code=claimed["recovery_code"]).status_code == 200


def test_wrong_codes_are_refused_and_limited_but_never_block_the_right_one(
    tmp_path, make_softhsm_token, served, https
):
    holder = SoftwareSigner()
    code = recovery().new_code()
    body = holder.enroll_body("member") | {"recovery_key": recovery().recovery_key(code)}
    enrolled = https.client.post(
        "/v1/enroll", json=holder.envelope("enroll", body, aud=https.center_id).to_json()
    )
    member_id = receipt_result(enrolled.json())["member_id"]

    # A wallet with a wrong code: one line, the reason, non-zero.
    guesser = WalletUser(tmp_path, make_softhsm_token, "guess")
    guesser.init()
    wrong = rebind(guesser, served, member_id, recovery().new_code())
    assert "wrong_recovery_code" in last_error(wrong) and wrong.stderr.strip().count("\n") == 0
    # Not a code at all: refused before anything is signed.
    typo = rebind(guesser, served, member_id, "ABCDE-FGHIJ")
    assert typo.returncode != 0 and "recovery code" in last_error(typo)

    limit = key_lifecycle.MAX_WRONG_PROOFS_PER_WINDOW
    answers = [https.claim(member_id, code=recovery().new_code()) for _ in range(limit + 3)]
    codes = [answer.json()["error"]["code"] for answer in answers]
    # The wallet's wrong code counted as the first of the window.
    assert codes[: limit - 1] == ["wrong_recovery_code"] * (limit - 1)
    assert codes[limit - 1 :] == ["too_many_recovery_attempts"] * 4
    assert answers[-1].status_code == 429
    assert pending_claims(served, member_id) == {}  # no wrong-code claim was recorded

    accepted = https.claim(member_id, code=code)  # the holder, after all that
    assert accepted.status_code == 200, accepted.text
    assert [claim["recovery_verified"] for claim in pending_claims(served, member_id).values()] == ["code"]


PLAIN_OR_MALFORMED_URLS = [
    "http://127.0.0.1:1",
    "ftp://127.0.0.1",
    "https://",
    "https://127.0.0.1:99999",
    "https://user:pw@127.0.0.1",
]


@pytest.fixture(scope="module")
def center_cert(tmp_path_factory):
    """A real center's certificate (`center init`), so that only the URL is wrong."""
    data_dir = tmp_path_factory.mktemp("cert-center") / "center"
    result = run_cli(
        "center",
        [
            "init",
            "--data-dir",
            str(data_dir),
            "--db",
            f"sqlite:///{data_dir.parent / 'c.db'}",
            "--currency",
            "JPY",
        ],
    )
    assert result.returncode == 0, result.stderr
    return data_dir / "center-cert.pem"


def test_enroll_refuses_a_center_url_that_is_not_https_at_once(tmp_path, make_softhsm_token, center_cert):
    user = WalletUser(tmp_path, make_softhsm_token, "plain")
    user.init()
    before = user.vault.read_bytes()
    for url in PLAIN_OR_MALFORMED_URLS:
        result = user.run(
            "enroll",
            "--center",
            url,
            "--center-cert",
            str(center_cert),
            "--name",
            "Hanako Yamada",
            "--address",
            "1-1 Chiyoda, Tokyo",
            "--birth-date",
            "1985-06-15",
        )
        assert result.returncode != 0 and result.stderr.startswith("error: --center"), (url, result.stderr)
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert user.vault.read_bytes() == before, url  # nothing signed, pinned or queued
    assert vault_document(user)["outbox"] == [] and vault_document(user)["center"] is None
    # The control: an https URL passes the rule (here nobody answers, so the enrollment is queued), and the
    # recovery code is shown once, with the advice, and kept nowhere.
    queued = user.run(
        "enroll",
        "--center",
        "https://127.0.0.1:1",
        "--center-cert",
        str(center_cert),
        "--name",
        "Hanako Yamada",
        "--address",
        "1-1 Chiyoda, Tokyo",
        "--birth-date",
        "1985-06-15",
        COLUMNS="200",
    )
    assert queued.returncode == 0, queued.stderr
    code = re.search(r"\b[0-9A-Z]{5}(?:-[0-9A-Z]{5}){4}\b", queued.stdout).group(0)
    assert "apart from the token" in queued.stdout and recovery().normalise(code)
    assert [entry["type"] for entry in vault_document(user)["outbox"]] == ["enroll"]
    assert code.replace("-", "") not in json.dumps(vault_document(user))


def _engine(center: CenterProcess):
    return make_engine(normalise_url(json.loads((center.data_dir / "config.json").read_text())["db_url"]))


def _forget_recovery_code(center: CenterProcess, member_id: str) -> None:
    engine = _engine(center)
    with engine.begin() as conn:
        codes = center_db.recovery_keys
        assert conn.execute(delete(codes).where(codes.c.party_id == member_id)).rowcount == 1
    engine.dispose()


def _audit_text(center: CenterProcess) -> str:
    engine = _engine(center)
    with engine.connect() as conn:
        rows = conn.execute(select(audit_log.c.payload, audit_log.c.action)).all()
    engine.dispose()
    return "\n".join(bytes(row.payload).decode("latin-1") + row.action for row in rows)
