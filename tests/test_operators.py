"""Operator and auditor accounts and their signed requests, at the API level on SQLite and
PostgreSQL: adding operators, the action registry, roles, refusals that change nothing,
and operator keys refused by every member and store endpoint."""

from __future__ import annotations

import json

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from fuzz_support import db_snapshot, raw_payload, seal_bytes
from operator_support import error_code, https_client, new_operator, public_pem, receipt_result, signed
from sqlalchemy import select
from support import SoftwareSigner

from center.errors import ApiError
from center.keys.identity import make_tls_certificate
from center.keys.operators import add_operator, list_operators
from center.ledger.audit import verify_chain
from center.ledger.audit_export import export_audit
from center.ledger.audit_export_verify import verify_export
from center.ledger.book import check_ledger, party_account
from center.pipeline.operator_actions import ACTIONS
from center.storage.db import accounts, audit_log, keys, parties
from paywire.algorithms import key_id
from paywire.bodies import OPERATOR_ACTION_ARGS

# Refusals by the rules are recorded under their message id (and use up the counter).
RECORDED = {"messages", "keys"}


@pytest.fixture
def client(center):
    with https_client(center) as test_client:
        yield test_client


def enroll(center, client, role: str, **fields) -> tuple[SoftwareSigner, str]:
    signer = SoftwareSigner()
    request = signed(center, signer, "enroll", signer.enroll_body(role, **fields))
    response = client.post("/v1/enroll", json=request.to_json())
    assert response.status_code == 200, response.text
    return signer, receipt_result(center, request, response.json())["member_id"]


def submit(center, client, signer, path: str, msg_type: str, body: dict):
    request = signed(center, signer, msg_type, body)
    return request, client.post(path, json=request.to_json())


def act(center, client, signer, action: str, **args):
    return submit(
        center, client, signer, "/v1/operator/actions", "operator_action", {"action": action, "args": args}
    )


def pending_topup(center, client, member, amount_minor: int = 5000) -> str:
    request, response = submit(
        center,
        client,
        member,
        "/v1/topups",
        "topup",
        {"amount_minor": amount_minor, "currency": "JPY", "method": "bank"},
    )
    return receipt_result(center, request, response.json())["topup_id"]


def balance(center, party_id: str) -> int:
    with center.engine.connect() as conn:
        return conn.execute(
            select(accounts.c.balance_minor).where(accounts.c.id == party_account(party_id))
        ).scalar_one()


def changed_tables(before: dict, after: dict) -> set[str]:
    return {name for name in before if before[name] != after[name]}


# --- adding operators ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_key, algorithm",
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
    ],
)
def test_an_operator_is_a_party_with_a_pinned_key_and_no_account(center, make_key, algorithm):
    spki = (
        make_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    view = add_operator(
        center.engine,
        public_pem(spki),
        role="operator",
        name="Ops One",
        added_by="admin:test",
        now_ms=center.clock_ms(),
    )
    assert set(view) == {"operator_id", "kid", "role", "algorithm", "name"}
    assert (view["kid"], view["algorithm"], view["role"], view["name"]) == (
        key_id(spki),
        algorithm,
        "operator",
        "Ops One",
    )
    assert view["operator_id"].startswith("A-")
    with center.engine.connect() as conn:
        party = conn.execute(select(parties).where(parties.c.id == view["operator_id"])).one()
        key = conn.execute(select(keys).where(keys.c.kid == view["kid"])).one()
        account = conn.execute(select(accounts).where(accounts.c.party_id == view["operator_id"])).first()
        entry = conn.execute(select(audit_log).where(audit_log.c.msg_id == view["operator_id"])).one()
        assert verify_chain(conn)[1] is None
    assert (party.role, party.status, party.address) == ("operator", "active", "")
    assert (bytes(key.spki), key.algorithm, key.status, key.party_id) == (
        spki,
        algorithm,
        "active",
        view["operator_id"],
    )
    assert account is None  # operators hold no money
    assert (entry.msg_type, entry.kid, entry.alg) == ("operator_add", "admin:test", "none")
    assert json.loads(entry.action)["role"] == "operator"


def unsupported_keys():
    return [
        ("P-384", ec.generate_private_key(ec.SECP384R1()).public_key(), "unsupported_algorithm"),
        (
            "RSA-1024",
            rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
            "unsupported_algorithm",
        ),
        ("DSA", dsa.generate_private_key(key_size=2048).public_key(), "unsupported_algorithm"),
        ("X25519", x25519.X25519PrivateKey.generate().public_key(), "unsupported_algorithm"),
    ]


def test_keys_the_center_cannot_verify_with_are_refused_and_nothing_is_added(center):
    before = db_snapshot(center.engine)
    for label, public_key, code in unsupported_keys():
        pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(ApiError) as caught:
            add_operator(center.engine, pem, role="operator", name="x", added_by="admin:test", now_ms=1)
        assert caught.value.code == code, label
    for pem in (
        b"",
        b"not a key",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"A" * 20_000,
    ):
        with pytest.raises(ApiError) as caught:
            add_operator(center.engine, pem, role="operator", name="x", added_by="admin:test", now_ms=1)
        assert caught.value.code == "bad_public_key", pem[:40]
    signer = SoftwareSigner()
    for role, name in (
        ("admin", "x"),
        ("member", "x"),
        ("operator", ""),
        ("operator", " "),
        ("operator", "a\nb"),
        ("operator", "x" * 201),
    ):
        with pytest.raises(ApiError) as caught:
            add_operator(
                center.engine, public_pem(signer.spki), role=role, name=name, added_by="admin:test", now_ms=1
            )
        assert caught.value.code == "invalid_request", (role, name)
    assert db_snapshot(center.engine) == before


def test_the_same_key_twice_or_a_members_key_is_refused(center, client):
    operator, _ = new_operator(center)
    member, _ = enroll(center, client, "member")
    before = db_snapshot(center.engine)
    for signer in (operator, member):
        with pytest.raises(ApiError) as caught:
            add_operator(
                center.engine,
                public_pem(signer.spki),
                role="auditor",
                name="again",
                added_by="admin:test",
                now_ms=center.clock_ms(),
            )
        assert (caught.value.code, caught.value.status) == ("key_already_enrolled", 409)
    assert db_snapshot(center.engine) == before


def test_list_shows_operators_and_auditors_with_their_key_status(center, client):
    operator, op_view = new_operator(center)
    auditor, au_view = new_operator(center, role="auditor", name="Audit Desk", algorithm="Ed25519")
    enroll(center, client, "member")  # not listed
    assert act(center, client, operator, "revoke_key", kid=auditor.kid, reason="left")[1].status_code == 200
    with center.engine.connect() as conn:
        rows = list_operators(conn)
    assert [(r["operator_id"], r["role"], r["kid"], r["algorithm"], r["status"]) for r in rows] == [
        (op_view["operator_id"], "operator", operator.kid, "ES256", "active"),
        (au_view["operator_id"], "auditor", auditor.kid, "Ed25519", "revoked"),
    ]


# --- signed operator actions ----------------------------------------------------------------


def test_the_action_registry_and_the_wire_name_the_same_actions():
    assert set(ACTIONS) == set(OPERATOR_ACTION_ARGS) >= {"confirm_topup", "decline_topup", "revoke_key"}
    assert {name for name, action in ACTIONS.items() if "auditor" in action.roles} == {"whoami", "show_topup"}


def test_an_operator_confirms_a_topup_with_a_signed_request_once(center, client):
    operator, view = new_operator(center)
    member, member_id = enroll(center, client, "member")
    topup_id = pending_topup(center, client, member, 5000)
    request, response = act(center, client, operator, "confirm_topup", **decision(topup_id, member_id, 5000))
    assert response.status_code == 200, response.text
    result = receipt_result(center, request, response.json())
    assert result == {
        "action": "topup_confirmed",
        "topup_id": topup_id,
        "member_id": member_id,
        "amount_minor": 5000,
        "method": "bank",
        "status": "confirmed",
        "repeated": False,
        "operator_action": "confirm_topup",
        "operator_id": view["operator_id"],
        "role": "operator",
    }
    assert balance(center, member_id) == 5000
    # The same signed bytes again: the first answer, no second credit.
    again = client.post("/v1/operator/actions", json=request.to_json())
    assert again.json() == response.json() and balance(center, member_id) == 5000
    # A new request for the same decision is a harmless repeat.
    assert (
        receipt_result(
            center,
            *act_and_json(center, client, operator, "confirm_topup", **decision(topup_id, member_id, 5000)),
        )["repeated"]
        is True
    )
    assert balance(center, member_id) == 5000
    with center.engine.connect() as conn:
        entries = conn.execute(
            select(audit_log.c.kid, audit_log.c.payload)
            .where(audit_log.c.msg_type == "operator_action")
            .order_by(audit_log.c.seq)
        ).all()
        assert verify_chain(conn)[1] is None and check_ledger(conn).ok
    # One audit entry per accepted request (two here), each holding the operator's exact signed bytes.
    assert len(entries) == 2 and bytes(entries[0].payload) == request.payload
    assert {row.kid for row in entries} == {operator.kid}


def decision(topup_id: str, member_id: str, amount_minor: int, currency: str = "JPY") -> dict:
    """A top-up decision's arguments: exactly what is decided."""
    return {"topup_id": topup_id, "member_id": member_id, "amount_minor": amount_minor, "currency": currency}


def act_and_json(center, client, signer, action, **args):
    request, response = act(center, client, signer, action, **args)
    assert response.status_code == 200, response.text
    return request, response.json()


def test_an_operator_declines_a_topup(center, client):
    operator, _ = new_operator(center)
    member, member_id = enroll(center, client, "member")
    topup_id = pending_topup(center, client, member)
    result = receipt_result(
        center,
        *act_and_json(center, client, operator, "decline_topup", **decision(topup_id, member_id, 5000)),
    )
    assert result["status"] == "declined" and balance(center, member_id) == 0
    before = db_snapshot(center.engine)
    _, response = act(center, client, operator, "confirm_topup", **decision(topup_id, member_id, 5000))
    assert error_code(response) == (409, "topup_not_pending")
    assert changed_tables(before, db_snapshot(center.engine)) <= RECORDED and balance(center, member_id) == 0


def test_an_auditor_cannot_act_and_nothing_changes(center, client):
    auditor, view = new_operator(center, role="auditor", name="Audit Desk")
    member, member_id = enroll(center, client, "member")
    topup_id = pending_topup(center, client, member)
    before = db_snapshot(center.engine)
    for action, args in (
        ("confirm_topup", decision(topup_id, member_id, 5000)),
        ("decline_topup", decision(topup_id, member_id, 5000)),
        ("revoke_key", {"kid": member.kid, "reason": "test"}),
    ):
        _, response = act(center, client, auditor, action, **args)
        assert error_code(response) == (403, "operator_role_required"), action
    after = db_snapshot(center.engine)
    assert changed_tables(before, after) <= RECORDED
    assert before["topups"] == after["topups"] and before["audit_log"] == after["audit_log"]
    # An auditor may ask who it is.
    result = receipt_result(center, *act_and_json(center, client, auditor, "whoami"))
    assert result == {
        "action": "operator_identified",
        "name": "Audit Desk",
        "operator_action": "whoami",
        "operator_id": view["operator_id"],
        "role": "auditor",
    }


@pytest.mark.parametrize("role", ["operator", "auditor"])
def test_an_operator_or_auditor_reads_a_topup_with_a_signed_request(center, client, role):
    reader, view = new_operator(center, role=role)
    member, member_id = enroll(center, client, "member", name="Hanako Yamada")
    topup_id = pending_topup(center, client, member, 4200)
    result = receipt_result(center, *act_and_json(center, client, reader, "show_topup", topup_id=topup_id))
    assert result == {
        "action": "topup_shown",
        "topup_id": topup_id,
        "member_id": member_id,
        "member_name": "Hanako Yamada",
        "amount_minor": 4200,
        "currency": "JPY",
        "method": "bank",
        "status": "pending",
        "created_at_ms": result["created_at_ms"],
        "decided_at_ms": None,
        "decided_by": None,
        "operator_action": "show_topup",
        "operator_id": view["operator_id"],
        "role": role,
    }
    _, response = act(center, client, reader, "show_topup", topup_id="U-0123456789abcdef")
    assert error_code(response) == (404, "unknown_topup")
    _, _stranger_member = enroll(center, client, "member")
    stranger, _ = enroll(center, client, "member")
    _, response = act(center, client, stranger, "show_topup", topup_id=topup_id)
    assert error_code(response) == (403, "not_an_operator")  # a member reads no one's top-ups this way


def test_a_decision_naming_other_details_than_the_topups_decides_nothing(center, client):
    operator, _ = new_operator(center)
    member, member_id = enroll(center, client, "member")
    _, other_member = enroll(center, client, "member")
    topup_id = pending_topup(center, client, member, 5000)
    for action in ("confirm_topup", "decline_topup"):
        for args in (
            decision(topup_id, member_id, 10**12),
            decision(topup_id, other_member, 5000),
            decision(topup_id, member_id, 5000, "EUR"),
        ):
            before = db_snapshot(center.engine)
            request, response = act(center, client, operator, action, **args)
            assert error_code(response) == (409, "topup_details_mismatch"), args
            after = db_snapshot(center.engine)
            assert changed_tables(before, after) <= RECORDED and before["topups"] == after["topups"]
            again = client.post("/v1/operator/actions", json=request.to_json())  # final for its message id
            assert error_code(again) == (409, "topup_details_mismatch")
    assert balance(center, member_id) == 0
    result = receipt_result(
        center,
        *act_and_json(center, client, operator, "confirm_topup", **decision(topup_id, member_id, 5000)),
    )
    assert (result["status"], result["amount_minor"]) == ("confirmed", 5000) and balance(
        center, member_id
    ) == 5000


@pytest.mark.parametrize("role", ["member", "store"])
def test_member_and_store_keys_are_not_operators(center, client, role):
    signer, _ = enroll(center, client, role)
    before = db_snapshot(center.engine)
    for action, args in (("whoami", {}), ("revoke_key", {"kid": signer.kid, "reason": "x"})):
        _, response = act(center, client, signer, action, **args)
        assert error_code(response) == (403, "not_an_operator")
    assert changed_tables(before, db_snapshot(center.engine)) <= RECORDED


def test_an_operator_revokes_a_key_and_its_messages_are_refused(center, client):
    operator, _view = new_operator(center)
    member, member_id = enroll(center, client, "member")
    result = receipt_result(
        center,
        *act_and_json(center, client, operator, "revoke_key", kid=member.kid, reason="card reported stolen"),
    )
    assert (result["action"], result["member_id"], result["repeated"]) == ("key_revoked", member_id, False)
    _, response = submit(center, client, member, "/v1/balance", "balance", {})
    assert error_code(response) == (403, "key_revoked")
    _, response = act(center, client, operator, "revoke_key", kid="0" * 64, reason="x")
    assert error_code(response) == (404, "key_not_found")
    # Revoking its own key is allowed (a lost operator token); nothing it signs counts afterwards.
    act_and_json(center, client, operator, "revoke_key", kid=operator.kid, reason="token lost")
    _, response = act(center, client, operator, "whoami")
    assert error_code(response) == (403, "key_revoked")


def test_malformed_operator_actions_are_refused_before_anything_happens(center, client):
    operator, _ = new_operator(center)
    member, _ = enroll(center, client, "member")
    topup_id = pending_topup(center, client, member)
    before = db_snapshot(center.engine)
    bodies = [
        {"action": "drop_tables", "args": {}},
        {"action": "confirm_topup", "args": {}},
        {"action": "confirm_topup", "args": {"topup_id": topup_id, "amount_minor": 1}},
        {"action": "confirm_topup", "args": decision(topup_id, "M-0123456789abcdef", 0)},
        {"action": "confirm_topup", "args": decision(topup_id, "M-0123456789abcdef", 1, "jpy")},
        {"action": "confirm_topup", "args": decision(topup_id, "S-x", 1)},
        {"action": "show_topup", "args": decision(topup_id, "M-0123456789abcdef", 1)},
        {"action": "confirm_topup", "args": decision("P-0123456789abcdef", "M-0123456789abcdef", 1)},
        {"action": "confirm_topup", "args": [topup_id]},
        {"action": "revoke_key", "args": {"kid": member.kid, "reason": "x" * 201}},
        {"action": "revoke_key", "args": {"kid": member.kid, "reason": "a\x00b"}},
        {"action": "revoke_key", "args": {"kid": member.kid.upper(), "reason": "x"}},
        {"action": "whoami"},
    ]
    for body in bodies:
        envelope = seal_bytes(
            operator, rfc8785.dumps(raw_payload(operator, "operator_action", body, aud=center.center_id))
        )
        response = client.post("/v1/operator/actions", json=envelope.to_json())
        assert error_code(response) == (400, "malformed_payload"), body
    # The form from before decisions named what they decide: refused as outdated, whatever the top-up.
    for action in ("confirm_topup", "decline_topup"):
        envelope = seal_bytes(
            operator,
            rfc8785.dumps(
                raw_payload(
                    operator,
                    "operator_action",
                    {"action": action, "args": {"topup_id": topup_id}},
                    aud=center.center_id,
                )
            ),
        )
        response = client.post("/v1/operator/actions", json=envelope.to_json())
        assert error_code(response) == (400, "operator_action_outdated"), action
    # A console_login sent to the actions endpoint, and an action to the login endpoint.
    _, response = submit(
        center,
        client,
        operator,
        "/v1/operator/actions",
        "console_login",
        {"challenge": "AAAA-BBBB-CCCC-DDDD", "client_sha256": "0" * 64},
    )
    assert error_code(response) == (400, "wrong_message_type")
    assert db_snapshot(center.engine) == before


# --- operator keys at member and store endpoints ----------------------------------------------

MEMBER_REQUESTS = [
    ("/v1/topups", "topup", {"amount_minor": 100, "currency": "JPY", "method": "bank"}),
    ("/v1/payments", "pay", None),  # filled in with a real store below
    ("/v1/refunds", "refund", {"payment_id": "P-0123456789abcdef", "amount_minor": None, "currency": "JPY"}),
    ("/v1/payouts", "payout", {"currency": "JPY"}),
    ("/v1/notices", "notices", {"after": 0, "limit": 10}),
    ("/v1/balance", "balance", {}),
]


@pytest.mark.parametrize("role", ["operator", "auditor"])
def test_operator_keys_are_refused_by_every_member_and_store_endpoint(center, client, role):
    signer, _ = new_operator(center, role=role)
    _, store_id = enroll(center, client, "store", name="Corner Shop")
    before = db_snapshot(center.engine)
    for path, msg_type, body in MEMBER_REQUESTS:
        body = (
            body
            if body is not None
            else {
                "payee": store_id,
                "payee_name": "Corner Shop",
                "amount_minor": 1,
                "currency": "JPY",
                "order_ref": "o-1",
            }
        )
        _, response = submit(center, client, signer, path, msg_type, body)
        assert error_code(response) == (403, "wrong_role"), (path, response.text)
    # Enrolling the operator's key as a member: refused; only the final refusal of that message id is kept.
    enrolled_before = db_snapshot(center.engine)
    request = signed(center, signer, "enroll", signer.enroll_body("member"))
    assert error_code(client.post("/v1/enroll", json=request.to_json())) == (403, "wrong_role")
    after = db_snapshot(center.engine)
    assert {t: rows for t, rows in after.items() if t != "messages"} == {
        t: rows for t, rows in enrolled_before.items() if t != "messages"
    }
    assert len(after["messages"]) == len(enrolled_before["messages"]) + 1
    assert changed_tables(before, after) <= RECORDED
    assert before["accounts"] == after["accounts"] and before["transfers"] == after["transfers"]


def test_operator_signatures_verify_in_the_exported_audit_trail(center, client, tmp_path):
    operator, _ = new_operator(center)
    member, _ = enroll(center, client, "member")
    topup_id = pending_topup(center, client, member)
    member_id = receipt_result(
        center, *act_and_json(center, client, operator, "show_topup", topup_id=topup_id)
    )["member_id"]
    act_and_json(center, client, operator, "confirm_topup", **decision(topup_id, member_id, 5000))
    path = tmp_path / "audit.jsonl"
    # The in-process center has no certificate file: make one naming its receipt key.
    cert_pem, _key = make_tls_certificate(center.center_id, center.signer.spki, ["localhost"], ["127.0.0.1"])
    export_audit(center.engine, path, center_id=center.center_id, cert_pem=cert_pem)
    report = verify_export(path)
    assert report["ok"] is True, report
    # enroll, topup, the operator's read and decision are signed; the operator_add entry is a local action.
    assert report["signatures_checked"] == 4
