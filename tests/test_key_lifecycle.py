"""Key lifecycle at the domain/API level, on SQLite and PostgreSQL: a lost card's
new key bound to the same account (rebind enrollment, operator bind/reject) and
self-service rotation (one message signed by both keys). Every refusal is checked
for its exact code and for changing nothing. The end-to-end story over HTTPS
with real `wallet` and `center` processes is in test_key_lifecycle_e2e.py."""

from __future__ import annotations

import json

import pytest
from fuzz_support import sealed
from sqlalchemy import func, select
from support import SoftwareSigner
from test_payments_api import (
    STORE_NAME,
    balance,
    enroll,
    funded_member,
    ledger_ok,
    pay_body,
    result_of,
    submit,
)

from center.errors import ApiError
from center.keys.admin import (
    MAX_OPEN_TICKETS_PER_PARTY,
    TICKET_LIFETIME_MS,
    issue_recovery_ticket,
    revoke_key,
)
from center.keys.binding import bind_key, list_keys, reject_key
from center.keys.identity import make_tls_certificate
from center.keys.lifecycle import MAX_PENDING_CLAIMS_PER_PARTY
from center.ledger.audit import verify_chain
from center.ledger.audit_export import export_audit
from center.ledger.audit_export_verify import verify_export
from center.storage.db import audit_log, key_claims, keys, parties, payments
from paywire import recovery
from paywire.envelope import Envelope, b64url_encode
from paywire.messages import parse_payload

OPERATOR = "operator:test"


@pytest.fixture
def store(center):
    return enroll(center, "store", name=STORE_NAME)


def rebind(center, member_id: str, role: str = "member", signer: SoftwareSigner | None = None, **fields):
    """Enroll a new key claiming `member_id`; returns (signer, result)."""
    signer = signer or SoftwareSigner()
    body = signer.enroll_body(role, **fields) | {"rebind": member_id}
    request = signer.envelope("enroll", body, aud=center.center_id)
    return signer, result_of(center, request, center.enroll(request))


def refusal(action) -> ApiError:
    with pytest.raises(ApiError) as caught:
        action()
    return caught.value


def key_status(center, kid: str) -> str | None:
    with center.engine.connect() as conn:
        return conn.execute(select(keys.c.status).where(keys.c.kid == kid)).scalar()


def count(center, table) -> int:
    with center.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def bind(center, kid: str) -> dict:
    return bind_key(center.engine, kid, decided_by=OPERATOR, now_ms=center.clock_ms())


def revoke(center, kid: str) -> dict:
    return revoke_key(center.engine, kid, reason="card lost", decided_by=OPERATOR, now_ms=center.clock_ms())


def audit_ok(center) -> bool:
    with center.engine.connect() as conn:
        checked, problem = verify_chain(conn)
    assert problem is None, problem
    return checked > 0


# --- lost card: rebind enrollment, operator bind ---------------------------------------------


def test_rebind_enrollment_waits_for_the_operator_and_signs_nothing(center, store):
    old, member_id = funded_member(center, 10_000)
    _, store_id = store
    submit(center, old, "pay", pay_body(store_id, 1_000))
    parties_before, accounts_before = count(center, parties), balance(center, member_id)

    new, result = rebind(center, member_id)
    assert result == {
        "action": "bind_requested",
        "status": "pending_bind",
        "member_id": member_id,
        "role": "member",
        "kid": new.kid,
        "algorithm": "ES256",
    }
    assert key_status(center, new.kid) == "pending_bind"
    assert count(center, parties) == parties_before  # no new party, no new account
    # A pending key is refused everything, with no effect.
    for msg_type, body in [
        ("pay", pay_body(store_id, 500)),
        ("balance", {}),
        ("topup", {"amount_minor": 100, "currency": "JPY", "method": "bank"}),
    ]:
        error = refusal(lambda msg_type=msg_type, body=body: submit(center, new, msg_type, body))
        assert (error.code, error.status) == ("key_not_bound", 403)
    assert balance(center, member_id) == accounts_before == 9_000
    assert balance(center, store_id) == 1_000
    # The old key still works until the card is reported lost.
    assert submit(center, old, "balance", {})["balance_minor"] == 9_000


def test_bind_needs_the_lost_key_revoked_then_the_new_key_pays_from_the_same_balance(center, store):
    old, member_id = funded_member(center, 10_000)
    _, store_id = store
    first = submit(center, old, "pay", pay_body(store_id, 2_500, "before-loss"))
    new, _ = rebind(center, member_id)

    error = refusal(lambda: bind(center, new.kid))
    assert (error.code, error.status) == ("party_has_active_key", 409)
    assert old.kid in error.message
    assert key_status(center, new.kid) == "pending_bind" and key_status(center, old.kid) == "active"

    revoke(center, old.kid)
    error = refusal(lambda: submit(center, old, "pay", pay_body(store_id, 100)))
    assert (error.code, error.status) == ("key_revoked", 403)

    bound = bind(center, new.kid)
    assert bound == {"action": "key_bound", "kid": new.kid, "member_id": member_id, "repeated": False}
    assert bind(center, new.kid)["repeated"] is True
    paid = submit(center, new, "pay", pay_body(store_id, 1_500, "after-loss"))
    assert paid["balance_minor"] == 6_000 and balance(center, member_id) == 6_000
    assert submit(center, new, "balance", {})["member_id"] == member_id
    # The old key stays refused; its payment stays in the history.
    assert refusal(lambda: submit(center, old, "balance", {})).code == "key_revoked"
    with center.engine.connect() as conn:
        buyer_payments = (
            conn.execute(
                select(payments.c.id).where(payments.c.buyer_id == member_id).order_by(payments.c.seq)
            )
            .scalars()
            .all()
        )
        decided = conn.execute(
            select(key_claims.c.status, key_claims.c.decided_by).where(key_claims.c.kid == new.kid)
        ).one()
        bind_entries = conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.msg_type == "key_bind")
        ).scalar_one()
    assert buyer_payments == [first["payment_id"], paid["payment_id"]]
    assert tuple(decided) == ("bound", OPERATOR) and bind_entries == 1
    assert ledger_ok(center) and audit_ok(center)


def test_rebind_refusals_change_nothing(center, store):
    _, member_id = funded_member(center, 1_000)
    _, store_id = store
    keys_before, parties_before = count(center, keys), count(center, parties)

    error = refusal(lambda: rebind(center, "M-" + "0" * 16))
    assert (error.code, error.status) == ("unknown_party", 404)
    error = refusal(lambda: rebind(center, store_id))  # a member's enrollment claiming a store's account
    assert (error.code, error.status) == ("wrong_role", 403)
    error = refusal(lambda: rebind(center, member_id, role="store"))
    assert (error.code, error.status) == ("wrong_role", 403)
    for malformed in ("M-123", "X-0000000000000000", "m-00000000000000000", 42, None):
        signer = SoftwareSigner()
        request = sealed(
            signer, "enroll", signer.enroll_body("member") | {"rebind": malformed}, aud=center.center_id
        )
        error = refusal(lambda request=request: center.enroll(request))
        assert (error.code, error.status) == ("malformed_payload", 400), malformed
    assert (count(center, keys), count(center, parties)) == (keys_before, parties_before)
    assert count(center, key_claims) == 0

    # A refused claim is final for that message: the same bytes get the same refusal.
    signer = SoftwareSigner()
    request = signer.envelope(
        "enroll", signer.enroll_body("member") | {"rebind": store_id}, aud=center.center_id
    )
    for _ in range(2):
        assert refusal(lambda: center.enroll(request)).code == "wrong_role"
    # An already enrolled key cannot claim another account.
    active, _ = enroll(center, "member")
    assert refusal(lambda: rebind(center, member_id, signer=active)).code == "key_already_enrolled"


def test_reject_ends_a_wrong_claim(center):
    old, member_id = funded_member(center, 1_000)
    impostor, _ = rebind(center, member_id, name="Someone Else")
    listed = list_keys(center.engine, party_id=member_id, status="pending_bind")
    assert [k["kid"] for k in listed] == [impostor.kid]
    claim = listed[0]["claim"]
    assert claim["claimed"]["name"] == "Someone Else" and claim["registered"]["name"] == "Test Person"

    error = refusal(lambda: reject_key(center.engine, impostor.kid, reason="", decided_by=OPERATOR, now_ms=1))
    assert error.code == "invalid_request" and key_status(center, impostor.kid) == "pending_bind"
    rejected = reject_key(
        center.engine,
        impostor.kid,
        reason="identity does not match",
        decided_by=OPERATOR,
        now_ms=center.clock_ms(),
    )
    assert rejected["action"] == "key_rejected" and rejected["repeated"] is False
    assert reject_key(center.engine, impostor.kid, reason="again", decided_by=OPERATOR, now_ms=1)["repeated"]
    error = refusal(lambda: submit(center, impostor, "balance", {}))
    assert (error.code, error.status) == ("key_rejected", 403)
    revoke(center, old.kid)
    error = refusal(lambda: bind(center, impostor.kid))
    assert (error.code, error.status) == ("key_not_pending", 409)
    assert key_status(center, impostor.kid) == "rejected" and balance(center, member_id) == 1_000


def test_bind_and_reject_only_pending_claims(center):
    active, _member_id = funded_member(center, 1_000)
    error = refusal(lambda: bind(center, "f" * 64))
    assert (error.code, error.status) == ("key_not_found", 404)
    for action in (
        lambda: bind(center, active.kid),
        lambda: reject_key(center.engine, active.kid, reason="no", decided_by=OPERATOR, now_ms=1),
    ):
        error = refusal(action)
        assert (error.code, error.status) == ("key_not_pending", 409)
    assert key_status(center, active.kid) == "active"


def test_two_claims_for_one_account_bind_only_one(center):
    old, member_id = funded_member(center, 1_000)
    first, _ = rebind(center, member_id)
    second, _ = rebind(center, member_id)
    revoke(center, old.kid)
    bind(center, first.kid)
    error = refusal(lambda: bind(center, second.kid))
    assert error.code == "party_has_active_key" and first.kid in error.message
    with center.engine.connect() as conn:
        active = conn.execute(
            select(func.count())
            .select_from(keys)
            .where(keys.c.party_id == member_id, keys.c.status == "active")
        ).scalar_one()
    assert active == 1


def test_pending_claims_per_account_are_limited(center):
    _, member_id = funded_member(center, 1_000)
    for _ in range(MAX_PENDING_CLAIMS_PER_PARTY):
        rebind(center, member_id)
    error = refusal(lambda: rebind(center, member_id))
    assert (error.code, error.status) == ("too_many_pending_keys", 409)
    assert (
        len(list_keys(center.engine, party_id=member_id, status="pending_bind"))
        == MAX_PENDING_CLAIMS_PER_PARTY
    )


def test_a_pending_key_reported_lost_can_be_revoked(center):
    _, member_id = funded_member(center, 1_000)
    pending, _ = rebind(center, member_id)
    assert revoke(center, pending.kid)["repeated"] is False
    assert key_status(center, pending.kid) == "revoked"
    assert refusal(lambda: bind(center, pending.kid)).code == "key_not_pending"


def test_rebind_over_http_answers_json_errors(api, center):
    _, member_id = funded_member(center, 1_000)
    signer = SoftwareSigner()
    claim = signer.envelope(
        "enroll", signer.enroll_body("member") | {"rebind": member_id}, aud=center.center_id
    )
    response = api.post("/v1/enroll", json=claim.to_json())
    assert response.status_code == 200
    assert result_of(center, claim, response.json())["status"] == "pending_bind"
    balance_query = signer.envelope("balance", {}, aud=center.center_id)
    response = api.post("/v1/balance", json=balance_query.to_json())
    assert response.status_code == 403 and response.json()["error"]["code"] == "key_not_bound"


# --- recovery codes and tickets (issue 11.4; the attack end to end: test_attack_recovery.py) -----


def member_with_code(center) -> tuple[SoftwareSigner, str, str]:
    signer, code = SoftwareSigner(), recovery.new_code()
    request = signer.envelope(
        "enroll",
        signer.enroll_body("member") | {"recovery_key": recovery.recovery_key(code)},
        aud=center.center_id,
    )
    result = result_of(center, request, center.enroll(request))
    assert result["recovery_key"] == recovery.recovery_key(code)
    return signer, result["member_id"], code


def proven(center, member_id: str, code: str, **extra) -> tuple[SoftwareSigner, dict]:
    """A rebind claim proving `code` (the account's recovery code or a ticket)."""
    signer = SoftwareSigner()
    proof = recovery.prove(code, center_id=center.center_id, party_id=member_id, new_kid=signer.kid)
    return rebind_with(center, member_id, signer=signer, recovery_proof=proof, **extra)


def rebind_with(
    center, member_id: str, signer: SoftwareSigner | None = None, **extra
) -> tuple[SoftwareSigner, dict]:
    signer = signer or SoftwareSigner()
    body = signer.enroll_body("member") | {"rebind": member_id} | extra
    request = signer.envelope("enroll", body, aud=center.center_id)
    return signer, result_of(center, request, center.enroll(request))


def test_a_proven_claim_is_never_capped_and_supersedes_the_strangers_claims(center):
    old, member_id, code = member_with_code(center)
    strangers = [rebind(center, member_id)[0].kid for _ in range(MAX_PENDING_CLAIMS_PER_PARTY)]
    assert refusal(lambda: rebind(center, member_id)).code == "too_many_pending_keys"
    holder, result = proven(center, member_id, code)
    assert result["recovery_verified"] == "code" and result["status"] == "pending_bind"
    listed = {k["kid"]: k for k in list_keys(center.engine, party_id=member_id)}
    assert listed[holder.kid]["claim"]["recovery_verified"] == "code"
    for kid in strangers:
        assert (
            listed[kid]["status"] == "rejected"
            and listed[kid]["claim"]["decided_by"] == "center:recovery-proof"
        )
    # Strangers may claim again (up to the cap); they never displace the proven claim.
    rebind(center, member_id)
    assert key_status(center, holder.kid) == "pending_bind"
    revoke(center, old.kid)
    bind(center, holder.kid)
    assert submit(center, holder, "balance", {})["balance_minor"] == 0
    assert audit_ok(center)


def test_a_proof_is_for_one_key_one_account_and_one_center(center):
    _, member_id, code = member_with_code(center)
    _, other_id, _ = member_with_code(center)
    signer = SoftwareSigner()
    copied = recovery.prove(
        code, center_id=center.center_id, party_id=member_id, new_kid=SoftwareSigner().kid
    )
    elsewhere = recovery.prove(code, center_id="another-center", party_id=member_id, new_kid=signer.kid)
    for member, proof in [
        (member_id, copied),
        (member_id, elsewhere),
        (other_id, recovery.prove(code, center_id=center.center_id, party_id=other_id, new_kid=signer.kid)),
    ]:
        error = refusal(
            lambda member=member, proof=proof: rebind_with(
                center, member, signer=signer, recovery_proof=proof
            )
        )
        assert (error.code, error.status) == ("wrong_recovery_code", 403)
    assert list_keys(center.engine, status="pending_bind") == []


def test_binding_installs_the_claims_new_code_and_ends_the_old(center):
    old, member_id, code = member_with_code(center)
    earlier, _ = proven(center, member_id, code)  # the code proves claims as often as needed until a bind
    next_code = recovery.new_code()
    holder, result = proven(center, member_id, code, recovery_key=recovery.recovery_key(next_code))
    assert result["recovery_key"] == recovery.recovery_key(next_code)
    assert key_status(center, earlier.kid) == "rejected"  # the newest proven claim supersedes the earlier one
    revoke(center, old.kid)
    bind(center, holder.kid)
    assert refusal(lambda: proven(center, member_id, code)).code == "wrong_recovery_code"
    assert proven(center, member_id, next_code)[1]["recovery_verified"] == "code"


def test_tickets_are_one_time_expire_and_are_limited(center):
    _, member_id = funded_member(center, 1_000)  # enrolled without a code, as before the fix
    now = center.clock_ms()
    expired = issue_recovery_ticket(
        center.engine, member_id, issued_by=OPERATOR, now_ms=now - TICKET_LIFETIME_MS - 1
    )
    ticket = issue_recovery_ticket(center.engine, member_id, issued_by=OPERATOR, now_ms=now)
    assert ticket["expires_at_ms"] == now + TICKET_LIFETIME_MS and ticket["ticket"] not in json.dumps(
        {k: v for k, v in ticket.items() if k != "ticket"}
    )
    assert refusal(lambda: proven(center, member_id, expired["ticket"])).code == "wrong_recovery_code"
    assert proven(center, member_id, ticket["ticket"])[1]["recovery_verified"] == "ticket"
    assert refusal(lambda: proven(center, member_id, ticket["ticket"])).code == "wrong_recovery_code"
    for _ in range(MAX_OPEN_TICKETS_PER_PARTY):
        issue_recovery_ticket(center.engine, member_id, issued_by=OPERATOR, now_ms=now)
    error = refusal(lambda: issue_recovery_ticket(center.engine, member_id, issued_by=OPERATOR, now_ms=now))
    assert (error.code, error.status) == ("too_many_tickets", 409)
    assert (
        refusal(
            lambda: issue_recovery_ticket(center.engine, "M-0000000000000000", issued_by=OPERATOR, now_ms=now)
        ).code
        == "unknown_party"
    )
    assert (
        refusal(lambda: issue_recovery_ticket(center.engine, "x", issued_by=OPERATOR, now_ms=now)).code
        == "invalid_request"
    )
    assert audit_ok(center)


@pytest.mark.parametrize(
    "extra",
    [
        {"recovery_key": "ab" * 31},
        {"recovery_key": "AB" * 32},
        {"recovery_proof": "ab" * 63},
        {"recovery_proof": 7},
    ],
)
def test_malformed_recovery_fields_are_refused_on_the_wire(center, extra):
    _, member_id = funded_member(center, 1_000)
    signer = SoftwareSigner()
    request = sealed(
        signer, "enroll", signer.enroll_body("member") | {"rebind": member_id} | extra, aud=center.center_id
    )
    assert refusal(lambda: center.enroll(request)).code == "malformed_payload"
    # A proof belongs to a rebind claim only.
    request = sealed(
        signer, "enroll", signer.enroll_body("member") | {"recovery_proof": "ab" * 64}, aud=center.center_id
    )
    assert refusal(lambda: center.enroll(request)).code == "malformed_payload"


def test_recovery_codes_are_typable_and_forgiving():
    code = recovery.new_code()
    assert len(code) == 29 and code.count("-") == 4 and recovery.CODE_CHARS * 5 >= 100
    assert recovery.normalise(code.lower().replace("-", " ")) == code.replace("-", "")
    assert recovery.normalise("OIL00-11111-22222-33333-44444") == "01100111112222233333" + "44444"
    for bad in ["ABCDE-FGHJK", "U" * 25, "x" * 100]:
        with pytest.raises(recovery.RecoveryCodeError):
            recovery.normalise(bad)
    assert len({recovery.new_code() for _ in range(1000)}) == 1000


# --- rotation --------------------------------------------------------------------------------


def key_proof(center, new: SoftwareSigner, replaces: str, **overrides) -> Envelope:
    body = {"public_key": b64url_encode(new.spki), "alg": new.algorithm, "replaces": replaces}
    return new.envelope("key_proof", body, aud=overrides.pop("aud", center.center_id), **overrides)


def rotation(center, old: SoftwareSigner, proof: Envelope) -> Envelope:
    return old.envelope("rotate", {"new_key": proof.to_json()}, aud=center.center_id)


def post_rotation(api, request: Envelope):
    return api.post("/v1/keys/rotate", json=request.to_json())


@pytest.mark.parametrize("new_algorithm", ["ES256", "Ed25519"])
def test_rotation_replaces_the_key_in_one_signed_step(api, center, store, new_algorithm):
    old, member_id = funded_member(center, 10_000)
    _, store_id = store
    submit(center, old, "pay", pay_body(store_id, 1_000, "before"))  # the old key is known (and cached)
    new = SoftwareSigner(new_algorithm)
    request = rotation(center, old, key_proof(center, new, old.kid))

    response = post_rotation(api, request)
    assert response.status_code == 200, response.text
    assert result_of(center, request, response.json()) == {
        "action": "key_rotated",
        "member_id": member_id,
        "role": "member",
        "old_kid": old.kid,
        "new_kid": new.kid,
        "algorithm": new_algorithm,
    }
    assert (key_status(center, old.kid), key_status(center, new.kid)) == ("rotated", "active")

    # A resend (the answer was lost) gets the very same receipt, and changes nothing.
    again = post_rotation(api, request)
    assert again.status_code == 200 and again.json() == response.json()
    # The old key is refused from now on; the new one pays from the same balance.
    refused = api.post(
        "/v1/payments", json=old.envelope("pay", pay_body(store_id, 100), aud=center.center_id).to_json()
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "key_rotated"
    paid = submit(center, new, "pay", pay_body(store_id, 2_000, "after"))
    assert paid["balance_minor"] == 7_000 and submit(center, new, "balance", {})["member_id"] == member_id
    listed = {k["kid"]: k for k in list_keys(center.engine, party_id=member_id)}
    assert listed[new.kid]["claim"] == {"kind": "rotation", "replaces_kid": old.kid, "status": "bound"}
    assert ledger_ok(center) and audit_ok(center)


def test_a_store_rotates_too_and_a_resend_from_a_fresh_process_gets_the_receipt(center, store):
    old, _store_id = store
    new = SoftwareSigner("Ed25519")
    request = rotation(center, old, key_proof(center, new, old.kid))
    first = center.submit(request, "rotate")
    # Another center process, which never saw the old key as active.
    from center.pipeline.rotation import rotate
    from center.pipeline.service import Center

    fresh = Center(engine=center.engine, signer=center.signer, currency=center.currency)
    assert rotate(fresh, request) == first
    assert submit(center, new, "notices", {"after": 0, "limit": 10})["count"] == 0
    assert refusal(lambda: submit(fresh, old, "notices", {"after": 0, "limit": 10})).code == "key_rotated"
    # The same message id with other bytes is a conflict, never the stored receipt.
    msg_id = parse_payload(request.payload)[0].msg_id
    other = old.envelope(
        "rotate",
        {"new_key": key_proof(center, SoftwareSigner(), old.kid).to_json()},
        aud=center.center_id,
        msg_id=msg_id,
    )
    assert refusal(lambda: rotate(fresh, other)).code == "message_id_conflict"


def rotation_refused(api, center, old, request: Envelope, code: str, status: int) -> None:
    keys_before = count(center, keys)
    response = post_rotation(api, request)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert count(center, keys) == keys_before and key_status(center, old.kid) == "active"


def test_rotation_refusals_change_nothing(api, center):
    old, member_id = funded_member(center, 1_000)
    other, _ = enroll(center, "member")
    new = SoftwareSigner()
    now_s = center.clock_ms() // 1000

    rotation_refused(
        api, center, old, rotation(center, old, key_proof(center, new, other.kid)), "key_proof_mismatch", 400
    )
    rotation_refused(
        api, center, old, rotation(center, old, key_proof(center, old, old.kid)), "key_proof_mismatch", 400
    )
    rotation_refused(
        api,
        center,
        old,
        rotation(center, old, key_proof(center, other, old.kid)),
        "key_already_enrolled",
        409,
    )
    rotation_refused(
        api,
        center,
        old,
        rotation(center, old, key_proof(center, new, old.kid, aud="another-center")),
        "wrong_audience",
        403,
    )
    rotation_refused(
        api,
        center,
        old,
        rotation(center, old, key_proof(center, new, old.kid, now_s=now_s - 7200, lifetime_s=60)),
        "expired",
        403,
    )
    # The proof must be signed by the key it carries.
    forged = key_proof(center, new, old.kid)
    forged = Envelope(payload=forged.payload, alg=forged.alg, kid=forged.kid, sig=other.sign(forged.payload))
    rotation_refused(api, center, old, rotation(center, old, forged), "bad_signature", 401)
    # The outer message must be a rotation, at the rotation endpoint.
    rotation_refused(
        api, center, old, old.envelope("balance", {}, aud=center.center_id), "wrong_message_type", 400
    )
    wrong_place = api.post(
        "/v1/payments", json=rotation(center, old, key_proof(center, new, old.kid)).to_json()
    )
    assert wrong_place.json()["error"]["code"] == "wrong_message_type"
    # A key proof alone is no enrollment.
    alone = api.post("/v1/enroll", json=key_proof(center, new, old.kid).to_json())
    assert alone.json()["error"]["code"] == "wrong_message_type"
    assert key_status(center, new.kid) is None and balance(center, member_id) == 1_000
    # The old key's counter was not used up by the refusals: it still signs.
    assert submit(center, old, "balance", {})["balance_minor"] == 1_000


def test_a_key_that_is_not_active_cannot_rotate(api, center):
    old, member_id = funded_member(center, 1_000)
    pending, _ = rebind(center, member_id)
    response = post_rotation(api, rotation(center, pending, key_proof(center, SoftwareSigner(), pending.kid)))
    assert response.json()["error"]["code"] == "key_not_bound"
    revoke(center, old.kid)
    response = post_rotation(api, rotation(center, old, key_proof(center, SoftwareSigner(), old.kid)))
    assert (response.status_code, response.json()["error"]["code"]) == (403, "key_revoked")
    assert count(center, key_claims) == 1  # the pending claim only


def test_malformed_rotation_bodies_are_refused_on_the_wire(api, center):
    old, _ = funded_member(center, 1_000)
    new = SoftwareSigner()
    proof = key_proof(center, new, old.kid)
    for body in [
        {},
        {"new_key": "x"},
        {"new_key": proof.to_json() | {"extra": 1}},
        {"new_key": proof.to_json(), "more": 1},
        {"new_key": old.envelope("balance", {}, aud=center.center_id).to_json()},
    ]:
        response = post_rotation(api, sealed(old, "rotate", body, aud=center.center_id))
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] in ("malformed_payload", "malformed_envelope"), body
    assert key_status(center, new.kid) is None


def test_the_audit_export_checks_both_signatures_of_a_rotation(center, tmp_path):
    old, _ = funded_member(center, 1_000)
    new = SoftwareSigner("Ed25519")
    center.submit(rotation(center, old, key_proof(center, new, old.kid)), "rotate")
    cert_pem = make_tls_certificate(center.center_id, center.signer.spki, ["localhost"], ["127.0.0.1"])[0]
    path = tmp_path / "audit.jsonl"
    export_audit(center.engine, path, center_id=center.center_id, cert_pem=cert_pem)
    report = verify_export(path)
    assert report["ok"] is True, report
    # Without the new key in the file, the rotation's second signature cannot be checked.
    lines = path.read_text().splitlines(keepends=True)
    without = tmp_path / "without-new-key.jsonl"
    without.write_text("".join(line for line in lines if new.kid not in line or '"entry"' in line))
    report = verify_export(without)
    assert report["ok"] is False and new.kid in report["problem"], report
    rotate_seq = next(
        json.loads(line)["entry"]["seq"]
        for line in lines
        if '"entry"' in line and json.loads(line)["entry"]["msg_type"] == "rotate"
    )
    assert report["first_bad_seq"] == rotate_seq


def test_an_operator_binds_and_rejects_with_signed_requests(api, center):
    from operator_support import new_operator

    old, member_id = funded_member(center, 1_000)
    operator, _ = new_operator(center)
    auditor, _ = new_operator(center, role="auditor", name="Audit One")
    wanted, _ = rebind(center, member_id)
    wrong, _ = rebind(center, member_id, name="Someone Else")

    def act(signer, action: str, args: dict):
        return api.post(
            "/v1/operator/actions",
            json=signer.envelope(
                "operator_action", {"action": action, "args": args}, aud=center.center_id
            ).to_json(),
        )

    response = act(operator, "bind_key", {"kid": wanted.kid})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "party_has_active_key")
    revoke(center, old.kid)
    response = act(auditor, "bind_key", {"kid": wanted.kid})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "operator_role_required")
    assert key_status(center, wanted.kid) == "pending_bind"
    # A member's key is no operator.
    response = act(wanted, "bind_key", {"kid": wanted.kid})
    assert response.status_code == 403 and key_status(center, wanted.kid) == "pending_bind"

    request = operator.envelope(
        "operator_action", {"action": "bind_key", "args": {"kid": wanted.kid}}, aud=center.center_id
    )
    response = api.post("/v1/operator/actions", json=request.to_json())
    assert response.status_code == 200, response.text
    result = result_of(center, request, response.json())
    assert (result["action"], result["member_id"], result["operator_action"]) == (
        "key_bound",
        member_id,
        "bind_key",
    )
    response = act(operator, "reject_key", {"kid": wrong.kid, "reason": "not the member"})
    assert response.status_code == 200 and key_status(center, wrong.kid) == "rejected"
    assert submit(center, wanted, "balance", {})["balance_minor"] == 1_000
    with center.engine.connect() as conn:
        decided_by = conn.execute(
            select(key_claims.c.decided_by).where(key_claims.c.kid == wanted.kid)
        ).scalar_one()
    assert decided_by.startswith("operator:") and audit_ok(center)


def test_new_keys_from_rebind_and_rotation_pass_the_issuer_policy(api, center):
    """Under 'only issuer-certified keys', a rebind and a rotation enroll new keys: they need
    certificates too."""
    from cryptography.hazmat.primitives import serialization

    from center.keys.issuer import certify_key, create_ca
    from center.keys.issuer_policy import ISSUER_CERTIFIED, IssuerPolicy

    old, member_id = funded_member(center, 1_000)  # enrolled before the policy: stays as it is
    now_s = center.clock_ms() // 1000
    ca = create_ca("Example Card Issuer", days=30, now_s=now_s)
    center.issuer_policy = IssuerPolicy(ISSUER_CERTIFIED, trusted=(ca.cert,))

    def cert_of(signer: SoftwareSigner) -> str:
        cert = certify_key(ca, signer.spki, subject="card-1", days=10, now_s=now_s)
        return b64url_encode(cert.public_bytes(serialization.Encoding.DER))

    uncertified = SoftwareSigner()
    error = refusal(lambda: rebind(center, member_id, signer=uncertified))
    assert (error.code, error.status) == ("key_not_certified", 403) and key_status(
        center, uncertified.kid
    ) is None
    certified = SoftwareSigner()
    request = certified.envelope(
        "enroll",
        certified.enroll_body("member") | {"rebind": member_id, "key_cert": cert_of(certified)},
        aud=center.center_id,
    )
    assert result_of(center, request, center.enroll(request))["status"] == "pending_bind"

    new = SoftwareSigner()
    rotation_refused(
        api, center, old, rotation(center, old, key_proof(center, new, old.kid)), "key_not_certified", 403
    )
    # A certificate, but for another key.
    body = {
        "public_key": b64url_encode(new.spki),
        "alg": "ES256",
        "replaces": old.kid,
        "key_cert": cert_of(old),
    }
    wrong_cert = new.envelope("key_proof", body, aud=center.center_id)
    rotation_refused(api, center, old, rotation(center, old, wrong_cert), "key_not_certified", 403)
    body["key_cert"] = cert_of(new)
    request = rotation(center, old, new.envelope("key_proof", body, aud=center.center_id))
    response = post_rotation(api, request)
    assert response.status_code == 200, response.text
    result = result_of(center, request, response.json())
    assert result["new_kid"] == new.kid and "key_certificate" in result
    assert key_status(center, new.kid) == "active"
