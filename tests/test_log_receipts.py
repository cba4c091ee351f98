"""Receipts as inclusion proofs (paywire.receipts, paywire.tree_head): what a wallet accepts.

Wire level with real keys (cryptography P-256; the center's token is not needed to sign a head
here): a small log holding the member's requests among other entries, one signed tree head,
receipts built the way the center builds them. Then the attacker's moves, each refused: a
receipt for another request, a changed action, time or index, a changed or reordered proof, a
head signed by another key, for another center, over another root, or too small to hold the entry.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paywire import merkle
from paywire.algorithms import ES256, P256_ORDER, key_id
from paywire.canonical import jcs_bytes
from paywire.envelope import Envelope, b64url_encode, seal
from paywire.errors import WireError
from paywire.log_entry import entry_bytes, entry_fields, entry_leaf_hash
from paywire.messages import PAY, TREE_HEAD, build_payload, parse_payload
from paywire.receipts import (
    build_log_receipt,
    build_receipt_payload,
    build_refusal_payload,
    check_receipt,
    check_refusal,
    receipt_leaf,
)
from paywire.tree_head import GENESIS_HEAD_SHA256, build_tree_head_payload, check_tree_head, head_sha256

NOW_S = 1_767_225_600
CENTER_ID = "center-test.example"


def _spki(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _sign(key, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return encode_dss_signature(r, min(s, P256_ORDER - s))


def _seal(key, payload: dict) -> Envelope:
    return seal(payload, alg=ES256, kid=key_id(_spki(key)), sign=lambda data: _sign(key, data))


CENTER_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
MEMBER_KEY = ec.generate_private_key(ec.SECP256R1())
CENTER_SPKI = _spki(CENTER_KEY)
CENTER_KID = key_id(CENTER_SPKI)
MEMBER_KID = key_id(_spki(MEMBER_KEY))


def pay_request(number: int, amount_minor: int = 500, key=MEMBER_KEY) -> Envelope:
    body = {
        "payee": "S-0123456789abcdef",
        "payee_name": "Corner Shop",
        "amount_minor": amount_minor,
        "currency": "JPY",
        "order_ref": f"order-{number}",
    }
    payload = build_payload(
        PAY,
        aud=CENTER_ID,
        kid=key_id(_spki(key)),
        msg_id=f"pay-{number:016x}",
        ctr=number,
        body=body,
        now_s=NOW_S,
    )
    return _seal(key, payload)


def head_envelope(
    size: int, root: bytes, *, key=CENTER_KEY, center_id: str = CENTER_ID, timestamp_ms: int = NOW_S * 1000
) -> dict:
    payload = build_tree_head_payload(
        center_kid=key_id(_spki(key)),
        center_id=center_id,
        tree_size=size,
        root_hash=root,
        timestamp_ms=timestamp_ms,
        prev_head_sha256=GENESIS_HEAD_SHA256,
    )
    return _seal(key, payload).to_json()


def _entry_row(seq: int, request: Envelope) -> dict:
    return {
        "seq": seq,
        "created_at_ms": NOW_S * 1000 + seq,
        "kid": request.kid,
        "alg": request.alg,
        "msg_type": PAY,
        "msg_id": json.loads(request.payload)["msg_id"],
        "payload": request.payload,
        "signature": request.sig,
    }


class Log:
    """A center's log in miniature: filler entries, then the member's requests, one head."""

    def __init__(self, requests: list[Envelope], *, filler: int = 37):
        leaves = [merkle.leaf_hash(f"someone else's entry {i}".encode()) for i in range(filler)]
        before = merkle.append(0, [], leaves)
        self.rows = []
        for offset, request in enumerate(requests):
            seq = filler + offset + 1
            action = {"action": "paid", "payment_id": f"P-{seq:016x}", "amount_minor": 500}
            self.rows.append((_entry_row(seq, request), action))
        new_leaves = [entry_leaf_hash(entry_fields(row, action)) for row, action in self.rows]
        self.tree = merkle.append(before.size, before.frontier, new_leaves)
        self.head = head_envelope(self.tree.size, self.tree.root)

    def receipt(self, number: int) -> dict:
        row, action = self.rows[number]
        return build_log_receipt(
            seq=row["seq"],
            created_at_ms=row["created_at_ms"],
            kid=row["kid"],
            alg=row["alg"],
            msg_type=row["msg_type"],
            msg_id=row["msg_id"],
            action=action,
            proof=self.tree.inclusion_proof(row["seq"] - 1),
            tree_head=self.head,
        )


REQUESTS = [pay_request(n) for n in range(1, 6)]
LOG = Log(REQUESTS)


def check(receipt, request: Envelope, **overrides) -> dict:
    args = {"center_spki": CENTER_SPKI, "center_alg": ES256, "request": request, "center_id": CENTER_ID}
    return check_receipt(receipt, **(args | overrides))


def refused(receipt, request: Envelope, **overrides) -> str:
    with pytest.raises(WireError) as caught:
        check(receipt, request, **overrides)
    return caught.value.code


# --------------------------------------------------------------------------
# Accepted


def test_every_receipt_of_the_group_verifies_against_the_one_head():
    for number, request in enumerate(REQUESTS):
        receipt = LOG.receipt(number)
        checked = check(receipt, request)
        row, action = LOG.rows[number]
        assert checked["for_kid"] == MEMBER_KID and checked["for_type"] == PAY
        assert checked["for_msg_id"] == row["msg_id"] and checked["result"] == action
        log = checked["log"]
        assert log["seq"] == row["seq"] and log["index"] == row["seq"] - 1
        assert log["tree_size"] == LOG.tree.size and log["root_hash"] == LOG.tree.root.hex()
        assert log["tree_head"] == LOG.head
        assert receipt_leaf(receipt, request) == (row["seq"] - 1, LOG.tree.nodes[(0, row["seq"] - 1)])


def test_a_receipt_survives_json_and_stays_small():
    receipt = json.loads(json.dumps(LOG.receipt(2)))
    check(receipt, REQUESTS[2])
    assert len(json.dumps(receipt, separators=(",", ":"))) < 2000


def test_a_receipt_still_verifies_under_a_later_head_with_a_new_proof():
    """What `wallet audit check` does: the leaf from the receipt, a proof at the newer size."""
    index, leaf = receipt_leaf(LOG.receipt(0), REQUESTS[0])
    filler = [merkle.leaf_hash(f"someone else's entry {i}".encode()) for i in range(37)]
    ours = [LOG.tree.nodes[(0, seq)] for seq in range(37, LOG.tree.size)]
    later = merkle.append(0, [], [*filler, *ours, *[merkle.leaf_hash(b"later")] * 9])
    assert later.size == LOG.tree.size + 9
    proof = merkle.inclusion_proof(index, later.size, later.nodes)
    merkle.verify_inclusion(leaf, index, later.size, proof, later.root)
    merkle.verify_consistency(
        LOG.tree.size,
        later.size,
        merkle.consistency_proof(LOG.tree.size, later.size, later.nodes),
        LOG.tree.root,
        later.root,
    )


def test_old_signed_receipts_still_verify_and_say_so():
    request = REQUESTS[0]
    header_payload = json.loads(request.payload)
    header, _body = parse_payload(request.payload)
    old = _seal(
        CENTER_KEY,
        build_receipt_payload(
            center_kid=CENTER_KID,
            request_header=header,
            request=request,
            result={"action": "paid"},
            ctr=1,
            now_s=NOW_S,
        ),
    )
    for form in (old, old.to_json()):
        checked = check(form, request)
        assert checked["log"] is None and checked["result"] == {"action": "paid"}
        assert checked["for_msg_id"] == header_payload["msg_id"]
    assert refused(old, REQUESTS[1]) == "receipt_mismatch"


def test_a_tree_head_never_expires():
    """History must verify for years: a head from 2020 is as good as today's."""
    old_head = head_envelope(3, merkle.root_of([merkle.leaf_hash(b"x")] * 3), timestamp_ms=1_577_836_800_000)
    head = check_tree_head(old_head, center_spki=CENTER_SPKI, center_alg=ES256, center_id=CENTER_ID)
    assert head.tree_size == 3 and head.timestamp_ms == 1_577_836_800_000
    assert head.head_sha256 == head_sha256(old_head) == head_sha256(Envelope.from_json(old_head))


def test_the_empty_tree_has_a_head():
    head = check_tree_head(
        head_envelope(0, merkle.EMPTY_ROOT), center_spki=CENTER_SPKI, center_alg=ES256, center_id=CENTER_ID
    )
    assert head.tree_size == 0 and head.root_hash == merkle.EMPTY_ROOT


# --------------------------------------------------------------------------
# Refused: the attacker's moves


def test_a_receipt_for_another_request_is_refused():
    assert refused(LOG.receipt(0), REQUESTS[1]) == "receipt_mismatch"


def test_a_receipt_for_other_bytes_under_the_same_message_id_is_refused():
    """The same key, msg_id and counter, another amount: the leaf is built from the bytes sent."""
    twin = pay_request(1, amount_minor=50_000)
    assert json.loads(twin.payload)["msg_id"] == json.loads(REQUESTS[0].payload)["msg_id"]
    assert refused(LOG.receipt(0), twin) == "log_proof_invalid"


def test_a_receipt_for_another_key_is_refused():
    stranger = pay_request(1, key=OTHER_KEY)
    assert refused(LOG.receipt(0), stranger) == "receipt_mismatch"


@pytest.mark.parametrize(
    "change",
    [
        {"action": {"action": "paid", "payment_id": "P-0000000000000026", "amount_minor": 5}},
        {"action": {"action": "paid"}},
        {"seq": 39},
        {"seq": 37},
        {"created_at_ms": NOW_S * 1000},
        {"kid": "0" * 64},
        {"alg": "EdDSA"},
        {"msg_type": "refund"},
        {"msg_id": "pay-ffffffffffffffff"},
    ],
    ids=lambda change: next(iter(change)) + "=" + str(next(iter(change.values())))[:20],
)
def test_a_changed_entry_field_is_refused(change: dict):
    receipt = LOG.receipt(0)
    receipt["entry"] |= change
    assert refused(receipt, REQUESTS[0]) in {"log_proof_invalid", "receipt_mismatch"}


def test_a_refusal_dressed_as_a_log_receipt_is_never_an_acceptance():
    receipt = LOG.receipt(0)
    receipt["entry"]["action"] = {"action": "refused", "code": "x", "message": "no", "status": 400}
    assert refused(receipt, REQUESTS[0]) == "receipt_mismatch"


def _flip(text: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "="))
    raw[5] ^= 0x01
    return b64url_encode(bytes(raw))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda proof: [_flip(proof[0]), *proof[1:]],
        lambda proof: [*proof[:-1], _flip(proof[-1])],
        lambda proof: proof[:-1],
        lambda proof: proof[1:],
        lambda proof: [*proof, proof[-1]],
        lambda proof: [proof[1], proof[0], *proof[2:]],
        lambda proof: [],
        lambda proof: [b64url_encode(merkle.leaf_hash(b"x")), *proof],
        lambda proof: [*proof[:-1], proof[-1][:-2]],
        lambda proof: [*proof[:-1], proof[-1] + "AA"],
        lambda proof: [*proof[:-1], proof[-1] + "=="],
        lambda proof: [*proof[:-1], 7],
        lambda proof: "".join(proof),
        lambda proof: [proof[0]] * (merkle.MAX_PROOF_HASHES + 1),
    ],
)
def test_a_tampered_proof_is_refused(mutate):
    receipt = LOG.receipt(2)
    assert len(receipt["proof"]) >= 3
    receipt["proof"] = mutate(receipt["proof"])
    assert refused(receipt, REQUESTS[2]) == "log_proof_invalid"


def test_a_head_signed_by_another_key_is_refused():
    receipt = LOG.receipt(0)
    receipt["tree_head"] = head_envelope(LOG.tree.size, LOG.tree.root, key=OTHER_KEY)
    assert refused(receipt, REQUESTS[0]) == "kid_mismatch"
    # ...and a forged signature under the center's kid does not verify either.
    forged = copy.deepcopy(receipt["tree_head"])
    forged["kid"] = CENTER_KID
    receipt["tree_head"] = forged
    assert refused(receipt, REQUESTS[0]) == "bad_signature"


def test_a_head_for_another_center_is_refused():
    receipt = LOG.receipt(0)
    receipt["tree_head"] = head_envelope(LOG.tree.size, LOG.tree.root, center_id="other-center.example")
    assert refused(receipt, REQUESTS[0]) == "wrong_audience"


def test_a_head_with_a_changed_root_is_refused():
    receipt = LOG.receipt(0)
    # Edited in place: the signature no longer covers the bytes.
    payload = json.loads(Envelope.from_json(receipt["tree_head"]).payload)
    payload["body"]["root_hash"] = "ab" * 32
    edited = Envelope.from_json(receipt["tree_head"])
    edited = Envelope(
        payload=json.dumps(payload, sort_keys=True, separators=(",", ":")).encode(),
        alg=edited.alg,
        kid=edited.kid,
        sig=edited.sig,
    )
    receipt["tree_head"] = edited.to_json()
    assert refused(receipt, REQUESTS[0]) == "bad_signature"
    # Signed by the center, but over another tree of that size (a forked log): the proof fails.
    receipt["tree_head"] = head_envelope(LOG.tree.size, merkle.leaf_hash(b"another tree"))
    assert refused(receipt, REQUESTS[0]) == "log_proof_invalid"


def test_a_head_too_small_to_hold_the_entry_is_refused():
    row, _action = LOG.rows[-1]
    receipt = LOG.receipt(len(LOG.rows) - 1)
    receipt["tree_head"] = head_envelope(row["seq"] - 1, LOG.tree.root)
    assert refused(receipt, REQUESTS[-1]) == "log_proof_invalid"


def test_a_head_at_another_size_with_the_same_root_is_refused():
    """An inclusion proof can fit one root at several sizes; the signed (size, root) pair decides."""
    for size in (LOG.tree.size - 1, LOG.tree.size + 1, LOG.tree.size * 2):
        receipt = LOG.receipt(4)
        receipt["tree_head"] = head_envelope(size, LOG.tree.root)
        assert refused(receipt, REQUESTS[4]) == "log_proof_invalid"


def test_another_signed_message_is_not_a_tree_head():
    receipt = LOG.receipt(0)
    receipt["tree_head"] = REQUESTS[0].to_json()
    assert refused(receipt, REQUESTS[0]) == "kid_mismatch"
    center_signed_pay = pay_request(1, key=CENTER_KEY)
    receipt["tree_head"] = center_signed_pay.to_json()
    assert refused(receipt, REQUESTS[0]) == "wrong_message_type"


def test_a_tree_head_is_never_a_request():
    """A tree head signed by the member (or the center) cannot be the request a receipt answers."""
    head_like = _seal(
        MEMBER_KEY,
        build_tree_head_payload(
            center_kid=MEMBER_KID,
            center_id=CENTER_ID,
            tree_size=1,
            root_hash=merkle.leaf_hash(b"x"),
            timestamp_ms=NOW_S * 1000,
            prev_head_sha256=GENESIS_HEAD_SHA256,
        ),
    )
    receipt = LOG.receipt(0)
    receipt["entry"] |= {"msg_type": TREE_HEAD, "msg_id": json.loads(head_like.payload)["msg_id"]}
    assert refused(receipt, head_like) == "receipt_mismatch"


@pytest.mark.parametrize(
    "change",
    [
        {"format": "tokenpay-receipt"},
        {"v": 2},
        {"v": True},
        {"entry": []},
        {"extra": 1},
        {"tree_head": "not an envelope"},
        {"tree_head": {}},
    ],
    ids=repr,
)
def test_malformed_receipts_are_wire_errors(change: dict):
    receipt = LOG.receipt(0) | change
    assert refused(receipt, REQUESTS[0]) in {"receipt_mismatch", "malformed_envelope", "malformed_payload"}


@pytest.mark.parametrize(
    "entry_change",
    [
        {"seq": 0},
        {"seq": True},
        {"seq": merkle.MAX_TREE_SIZE + 1},
        {"created_at_ms": -1},
        {"created_at_ms": "1"},
        {"kid": "A" * 64},
        {"msg_id": "short"},
        {"action": ["paid"]},
        {"action": {"nested": 1.5}},
        {"action": {"deep": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}},
        {"action": {"big": "x" * 20_000}},
    ],
    ids=repr,
)
def test_entry_fields_are_bounded(entry_change: dict):
    receipt = LOG.receipt(0)
    receipt["entry"] = receipt["entry"] | entry_change
    assert refused(receipt, REQUESTS[0]) in {"receipt_mismatch", "malformed_payload"}
    with pytest.raises(WireError):
        receipt_leaf(receipt, REQUESTS[0])


@pytest.mark.parametrize(
    "body_change",
    [
        {"root_hash": "AB" * 32},
        {"root_hash": "ab" * 31},
        {"tree_size": -1},
        {"tree_size": merkle.MAX_TREE_SIZE + 1},
        {"prev_head_sha256": "0" * 63},
        {"center_id": "x"},
        {"extra": 1},
    ],
    ids=repr,
)
def test_tree_head_bodies_are_strict(body_change: dict):
    payload = build_tree_head_payload(
        center_kid=CENTER_KID,
        center_id=CENTER_ID,
        tree_size=1,
        root_hash=merkle.leaf_hash(b"x"),
        timestamp_ms=NOW_S * 1000,
        prev_head_sha256=GENESIS_HEAD_SHA256,
    )
    payload["body"] |= body_change
    payload["ctr"] = (
        max(1, payload["body"]["tree_size"] + 1) if isinstance(payload["body"]["tree_size"], int) else 1
    )
    data = jcs_bytes(payload)
    envelope = Envelope(payload=data, alg=ES256, kid=CENTER_KID, sig=_sign(CENTER_KEY, data))
    with pytest.raises(WireError) as caught:
        check_tree_head(envelope.to_json(), center_spki=CENTER_SPKI, center_alg=ES256, center_id=CENTER_ID)
    assert caught.value.code == "malformed_payload"


@pytest.mark.parametrize(
    "header_change",
    [
        {"msg_id": "tree-head-ffffffffffffffff"},
        {"ctr": 5},
        {"aud": "other-center.example"},
        {"iat": NOW_S - 10},
    ],
    ids=repr,
)
def test_a_tree_head_header_must_match_its_body(header_change: dict):
    """Signed, well formed, but its header says another size, center or time than its body."""
    payload = build_tree_head_payload(
        center_kid=CENTER_KID,
        center_id=CENTER_ID,
        tree_size=1,
        root_hash=merkle.leaf_hash(b"x"),
        timestamp_ms=NOW_S * 1000,
        prev_head_sha256=GENESIS_HEAD_SHA256,
    )
    document = _seal(CENTER_KEY, payload | header_change).to_json()
    with pytest.raises(WireError) as caught:
        check_tree_head(document, center_spki=CENTER_SPKI, center_alg=ES256, center_id=None)
    assert caught.value.code == "malformed_payload"


def test_refusals_stay_signed_envelopes():
    request = REQUESTS[3]
    header, _body = parse_payload(request.payload)
    refusal = _seal(
        CENTER_KEY,
        build_refusal_payload(
            center_kid=CENTER_KID,
            request_header=header,
            request=request,
            code="insufficient_funds",
            message="not enough",
            status=409,
            now_s=NOW_S,
        ),
    )
    assert check_refusal(refusal, center_spki=CENTER_SPKI, center_alg=ES256, request=request)["status"] == 409
    assert refused(refusal, request) == "receipt_mismatch"
    assert refused(refusal.to_json(), request) == "receipt_mismatch"
    with pytest.raises(WireError):
        check_refusal(
            Envelope.from_json(LOG.head), center_spki=CENTER_SPKI, center_alg=ES256, request=request
        )


def test_a_proof_hash_has_one_spelling():
    """Stray low bits in the last base64url character decode to the same hash: refused anyway."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    receipt = LOG.receipt(1)
    text = receipt["proof"][0]
    stray = text[:-1] + alphabet[alphabet.index(text[-1]) + 1]
    assert base64.urlsafe_b64decode(stray + "=") == base64.urlsafe_b64decode(text + "=")
    receipt["proof"] = [stray, *receipt["proof"][1:]]
    assert refused(receipt, REQUESTS[1]) == "log_proof_invalid"
    receipt["proof"][0] = text + "="
    assert refused(receipt, REQUESTS[1]) == "log_proof_invalid"


RECEIPT_TEXT = json.dumps(LOG.receipt(3), separators=(",", ":"))


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=len(RECEIPT_TEXT) - 1),
    st.sampled_from('0189AaFfZz_-"{}[],:.e \\'),
)
def test_any_one_character_change_is_refused_as_a_wire_error(position: int, char: str):
    """Change one character of the receipt as sent: either it no longer parses, or it means the same
    receipt (JSON spelling only), or check_receipt refuses it with a WireError (never another
    exception, never an acceptance of something else)."""
    text = RECEIPT_TEXT[:position] + char + RECEIPT_TEXT[position + 1 :]
    try:
        changed = json.loads(text)
    except ValueError:
        return
    if changed == json.loads(RECEIPT_TEXT):
        check(changed, REQUESTS[3])
        return
    with pytest.raises(WireError):
        check(changed, REQUESTS[3])


def test_entry_bytes_and_leaf_known_answer():
    """Pinned: the chain (since before the tree), exports and receipts all hash these exact bytes."""
    row = {
        "seq": 7,
        "created_at_ms": 1767225600123,
        "kid": "ab" * 32,
        "alg": "ES256",
        "msg_type": "pay",
        "msg_id": "pay-0123456789abcdef",
        "payload": b'{"x":1}',
        "signature": b"\x00\xff\x10",
    }
    fields = entry_fields(row, {"action": "paid", "amount_minor": 500, "note": "caf\u00e9"})
    expected = (
        '{"action":{"action":"paid","amount_minor":500,"note":"caf\u00e9"},"alg":"ES256",'
        '"created_at_ms":1767225600123,"kid":"' + "ab" * 32 + '","msg_id":"pay-0123456789abcdef",'
        '"msg_type":"pay","payload":"eyJ4IjoxfQ","seq":7,"signature":"AP8Q"}'
    ).encode()
    assert entry_bytes(fields) == expected
    assert entry_leaf_hash(fields) == hashlib.sha256(b"\x00" + expected).digest()
    assert entry_leaf_hash(fields).hex() == "c76e89ac9c46c81f20ed44d463dd7161013d80672a625e923075ff71edcb8685"


def test_tree_head_payload_known_answer():
    payload = build_tree_head_payload(
        center_kid="cd" * 32,
        center_id=CENTER_ID,
        tree_size=41,
        root_hash=bytes(range(32)),
        timestamp_ms=1767225600999,
        prev_head_sha256=GENESIS_HEAD_SHA256,
    )
    assert (
        jcs_bytes(payload)
        == (
            '{"aud":"center-test.example","body":{"center_id":"center-test.example","prev_head_sha256":"'
            + "0" * 64
            + '","root_hash":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",'
            '"timestamp_ms":1767225600999,"tree_size":41},"ctr":42,"dom":"tokenpay","exp":1769817600,'
            '"iat":1767225600,"kid":"' + "cd" * 32 + '","msg_id":"tree-head-0000000000000029",'
            '"type":"tree_head","v":1}'
        ).encode()
    )
