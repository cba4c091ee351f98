"""Unit and property tests for paywire (the wire format).

Complements test_wire_vectors.py (pinned envelopes) and test_wycheproof.py
(signature primitives): here the limits, the strict decoders and properties
over generated inputs. Tests named *_bug_* fail against the current code on
purpose: each shows a refusal that escapes as a non-WireError (a 500 at the
center) or an input that should be refused; the fix is in the test's docstring.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from paywire.algorithms import (
    ED25519,
    ES256,
    MAX_SIGNATURE_BYTES,
    P256_ORDER,
    PS256,
    RS256,
    ecdsa_der_low_s,
    ecdsa_raw_to_der_low_s,
    key_id,
    load_public_key,
    verify_signature,
)
from paywire.canonical import MAX_DEPTH, MAX_PAYLOAD_BYTES, MAX_SAFE_INTEGER, canonical_bytes, parse_canonical
from paywire.envelope import Envelope, b64url_decode, b64url_encode, seal
from paywire.errors import WireError
from paywire.messages import (
    CLOCK_SKEW_S,
    MAX_LIFETIME_S,
    MSG_ID_PATTERN,
    build_payload,
    check_freshness,
    new_message_id,
    parse_payload,
)
from paywire.verify import verify_enrollment, verify_envelope

NOW = 1_767_225_600
CENTER = "center-test.example"
HALF_N = P256_ORDER // 2

PROPERTY = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# Keys and signers (independent of paywire's own helpers)


def _spki(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
ED = ed25519.Ed25519PrivateKey.generate()
RSA2048 = rsa.generate_private_key(65537, 2048)
RSA1024 = rsa.generate_private_key(65537, 1024)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def sign_with(alg: str, key, data: bytes) -> bytes:
    if alg == ES256:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return encode_dss_signature(r, min(s, P256_ORDER - s))
    if alg == ED25519:
        return key.sign(data)
    if alg == RS256:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if alg == PS256:
        return key.sign(data, PSS, hashes.SHA256())
    raise ValueError(alg)


KEYS = {ES256: P256, ED25519: ED, RS256: RSA2048, PS256: RSA2048}


def receipt_payload(key, *, ctr: int = 1, result: dict | None = None) -> dict:
    kid = key_id(_spki(key))
    body = {
        "for_kid": kid,
        "for_msg_id": "req-0123456789abcdef",
        "for_type": "enroll",
        "request_sha256": "ab" * 32,
        "result": {"status": "ok"} if result is None else result,
    }
    return build_payload(
        "receipt", aud=CENTER, kid=kid, msg_id="msg-0123456789abcdef", ctr=ctr, body=body, now_s=NOW
    )


def enroll_payload(key, alg: str, **body_changes) -> dict:
    body = {
        "role": "member",
        "public_key": b64url_encode(_spki(key)),
        "alg": alg,
        "name": "Hanako Yamada",
        "address": "1-2-3 Chiyoda, Tokyo",
        "birth_date": "1990-02-28",
        **body_changes,
    }
    return build_payload(
        "enroll",
        aud=CENTER,
        kid=key_id(_spki(key)),
        msg_id="enr-0123456789abcdef",
        ctr=1,
        body=body,
        now_s=NOW,
    )


def sealed(alg: str, key, payload: dict) -> Envelope:
    return seal(payload, alg=alg, kid=key_id(_spki(key)), sign=lambda data: sign_with(alg, key, data))


def signed_raw(alg: str, key, data: bytes, *, kid: str | None = None) -> Envelope:
    """An envelope over arbitrary bytes (seal() would canonicalise them)."""
    return Envelope(payload=data, alg=alg, kid=kid or key_id(_spki(key)), sig=sign_with(alg, key, data))


def code_of(call, *args, **kwargs) -> str:
    with pytest.raises(WireError) as caught:
        call(*args, **kwargs)
    return caught.value.code


# --------------------------------------------------------------------------
# Canonical JSON

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
)
KEYS_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)


def json_values(depth: int):
    """Values at `depth` below the top-level object (which is depth 0)."""
    if depth >= MAX_DEPTH:
        return SCALARS
    inner = st.deferred(lambda: json_values(depth + 1))
    return SCALARS | st.lists(inner, max_size=3) | st.dictionaries(KEYS_TEXT, inner, max_size=3)


DOCUMENTS = st.dictionaries(KEYS_TEXT, json_values(1), max_size=5)


def test_canonical_known_answer_sorts_keys_by_utf16():
    # U+FB01 sorts before U+1F600 by code point but after it in UTF-16
    # (0xFB01 > 0xD83D): RFC 8785 orders by UTF-16 code units.
    document = {"b": 1, "a": [True, None, "é\n"], "\u20ac": 0, "\U0001f600": 1, "\ufb01": -2}
    expected = '{"a":[true,null,"é\\n"],"b":1,"€":0,"😀":1,"ﬁ":-2}'.encode()
    assert canonical_bytes(document) == expected
    assert parse_canonical(expected) == document
    code_point_order = '{"a":[true,null,"é\\n"],"b":1,"€":0,"ﬁ":-2,"😀":1}'.encode()
    assert code_of(parse_canonical, code_point_order) == "payload_not_canonical"


@PROPERTY
@given(DOCUMENTS)
def test_canonical_round_trip(document):
    data = canonical_bytes(document)
    assume(len(data) <= MAX_PAYLOAD_BYTES)
    assert parse_canonical(data) == document
    assert canonical_bytes(parse_canonical(data)) == data


SERIALISERS = {
    "default": lambda d: json.dumps(d),
    "indent": lambda d: json.dumps(d, indent=1),
    "compact-ascii-sorted": lambda d: json.dumps(d, separators=(",", ":"), sort_keys=True),
    "compact-utf8-unsorted": lambda d: json.dumps(d, separators=(",", ":"), ensure_ascii=False),
    "compact-utf8-sorted": lambda d: json.dumps(d, separators=(",", ":"), ensure_ascii=False, sort_keys=True),
    "spaced-utf8-sorted": lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True),
}


@PROPERTY
@given(DOCUMENTS, st.sampled_from(sorted(SERIALISERS)))
def test_parse_refuses_every_non_canonical_serialisation(document, serialiser):
    data = SERIALISERS[serialiser](document).encode("utf-8")
    assume(len(data) <= MAX_PAYLOAD_BYTES)
    assert json.loads(data) == document  # same document, maybe other bytes
    if data == canonical_bytes(document):
        assert parse_canonical(data) == document
    else:
        assert code_of(parse_canonical, data) == "payload_not_canonical"


def test_json_dumps_with_spaces_is_refused():
    document = {"a": 1, "b": [1, 2]}
    assert parse_canonical(b'{"a":1,"b":[1,2]}') == document
    assert code_of(parse_canonical, json.dumps(document).encode()) == "payload_not_canonical"


@pytest.mark.parametrize(
    "data, code",
    [
        (b'{"a":1} ', "payload_not_canonical"),
        (b'\xef\xbb\xbf{"a":1}', "malformed_payload"),  # UTF-8 BOM
        (b'{"a":"\xc0\xaf"}', "malformed_payload"),  # overlong UTF-8
        (b'{"a":"\xff"}', "malformed_payload"),
        (b"[1,2]", "malformed_payload"),  # not an object
        (b'"text"', "malformed_payload"),
        (b'{"a":1.0}', "malformed_payload"),
        (b'{"a":1e2}', "malformed_payload"),
        (b'{"a":1E2}', "malformed_payload"),
        (b'{"a":-0.0}', "malformed_payload"),
        (b'{"a":NaN}', "malformed_payload"),
        (b'{"a":Infinity}', "malformed_payload"),
        (b'{"a":-Infinity}', "malformed_payload"),
        (b'{"a":01}', "malformed_payload"),
        (b'{"a":-0}', "payload_not_canonical"),
        (b'{"a":1,"a":1}', "malformed_payload"),  # duplicate key, same value
        (b'{"a":"\\/"}', "payload_not_canonical"),  # escaped solidus
        (b'{"a":"\\u00e9"}', "payload_not_canonical"),  # escape where UTF-8 is canonical
        (b'{"a":"\\u001F"}', "payload_not_canonical"),  # upper-case hex escape
        (b'{"a":"\x01"}', "malformed_payload"),  # raw control character is not JSON
        (b'{"a":1', "malformed_payload"),
        (b"", "malformed_payload"),
    ],
)
def test_parse_canonical_refuses(data, code):
    assert code_of(parse_canonical, data) == code


def test_control_characters_are_escaped_canonically():
    document = {"a": "\x00\x1f\x7f\t"}
    data = canonical_bytes(document)
    assert data == b'{"a":"\\u0000\\u001f\x7f\\t"}'
    assert parse_canonical(data) == document


# --------------------------------------------------------------------------
# Limits


def _padded_receipt(key, total: int) -> bytes:
    """Canonical receipt bytes of exactly `total` length (pad inside result)."""
    base = len(canonical_bytes(receipt_payload(key, result={"pad": ""})))
    payload = receipt_payload(key, result={"pad": "x" * (total - base)})
    data = canonical_bytes(payload)
    assert len(data) == total
    return data


def test_payload_size_limit_is_exact():
    assert MAX_PAYLOAD_BYTES == 16 * 1024
    at_limit = _padded_receipt(P256, MAX_PAYLOAD_BYTES)
    over = _padded_receipt(P256, MAX_PAYLOAD_BYTES + 1)
    parse_payload(at_limit)
    assert code_of(parse_canonical, over) == "payload_too_large"
    # Through the envelope: a properly signed oversize payload is refused.
    header, _ = verify_envelope(signed_raw(ES256, P256, at_limit), spki_der=_spki(P256), algorithm=ES256)
    assert header.ctr == 1
    envelope = Envelope.from_json(signed_raw(ES256, P256, over).to_json())
    assert code_of(verify_envelope, envelope, spki_der=_spki(P256), algorithm=ES256) == "payload_too_large"
    # And the sealing side refuses to make one.
    big = json.loads(over)
    assert code_of(seal, big, alg=ES256, kid="0" * 64, sign=lambda d: b"") == "payload_too_large"


def test_envelope_refuses_oversize_base64_before_decoding():
    envelope = signed_raw(ES256, P256, b"{}").to_json()
    envelope["payload"] = "A" * (MAX_PAYLOAD_BYTES * 4 // 3 + 8)
    assert code_of(Envelope.from_json, envelope) == "malformed_envelope"
    envelope = signed_raw(ES256, P256, b"{}").to_json()
    envelope["sig"] = "A" * (MAX_SIGNATURE_BYTES * 4 // 3 + 8)
    assert code_of(Envelope.from_json, envelope) == "malformed_envelope"


def _nested(depth: int) -> dict:
    """{"k": [[...[1]...]]} with the scalar `depth` levels below the top object."""
    value: object = 1
    for _ in range(depth - 1):
        value = [value]
    return {"k": value}


@pytest.mark.parametrize("depth", [1, 5, MAX_DEPTH])
def test_nesting_up_to_the_limit_is_accepted(depth):
    assert MAX_DEPTH == 6
    document = _nested(depth)
    assert parse_canonical(canonical_bytes(document)) == document


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, MAX_DEPTH + 2, 50])
def test_nesting_beyond_the_limit_is_refused(depth):
    document = _nested(depth)
    assert code_of(canonical_bytes, document) == "malformed_payload"
    data = json.dumps(document, separators=(",", ":")).encode()
    assert code_of(parse_canonical, data) == "malformed_payload"
    objects = b'{"k":' * depth + b"1" + b"}" * depth  # objects, not arrays
    assert code_of(parse_canonical, objects) == "malformed_payload"


@pytest.mark.parametrize("depth", [1_000, 5_000, 8_000])
def test_bug_deep_nesting_within_the_size_limit_is_a_wire_error(depth):
    """BUG: json.loads raises RecursionError (not ValueError) past ~1000
    levels, which parse_canonical does not catch: a 2 KB payload escapes as a
    500, and verify_enrollment parses before any signature check, so anyone
    can send it. Fix in paywire/canonical.py parse_canonical: catch it with
    the other decode errors, `except (UnicodeDecodeError, ValueError,
    RecursionError) as exc:` (line 38)."""
    data = b'{"k":' + b"[" * depth + b"]" * depth + b"}"
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert code_of(parse_canonical, data) == "malformed_payload"
    envelope = Envelope(payload=data, alg=ES256, kid="0" * 64, sig=b"\x00")
    assert code_of(verify_enrollment, envelope) == "malformed_payload"


@pytest.mark.parametrize(
    "value, ok",
    [
        (MAX_SAFE_INTEGER, True),
        (-MAX_SAFE_INTEGER, True),
        (0, True),
        (MAX_SAFE_INTEGER + 1, False),
        (-MAX_SAFE_INTEGER - 1, False),
        (2**64, False),
        (-(2**63), False),
    ],
)
def test_integer_limits(value, ok):
    assert MAX_SAFE_INTEGER == 2**53 - 1
    data = b'{"n":' + str(value).encode() + b"}"
    if ok:
        assert canonical_bytes({"n": value}) == data
        assert parse_canonical(data) == {"n": value}
    else:
        assert code_of(canonical_bytes, {"n": value}) == "malformed_payload"
        assert code_of(parse_canonical, data) == "malformed_payload"
        assert code_of(canonical_bytes, {"deep": [{"n": value}]}) == "malformed_payload"


def test_huge_integer_literal_is_malformed():
    assert code_of(parse_canonical, b'{"n":' + b"9" * 5000 + b"}") == "malformed_payload"


@pytest.mark.parametrize("value", [1.5, 1.0, float("nan"), float("inf"), (1, 2), b"bytes", {1, 2}])
def test_canonical_bytes_refuses_non_json_integers_only_types(value):
    assert code_of(canonical_bytes, {"x": value}) == "malformed_payload"


def test_canonical_bytes_refuses_non_string_keys():
    assert code_of(canonical_bytes, {1: "x"}) == "malformed_payload"


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff"])
def test_bug_lone_surrogate_is_a_wire_error(text):
    """BUG: a JSON escape for a lone surrogate parses to a str that UTF-8
    cannot encode; the final `rfc8785.dumps(document)` in parse_canonical
    (paywire/canonical.py line 43, outside the try) raises
    rfc8785.CanonicalizationError, and canonical_bytes raises it too. Both
    escape as non-WireErrors (pre-signature in verify_enrollment). Fix: in
    parse_canonical wrap the comparison,
        try: canonical = rfc8785.dumps(document)
        except ValueError: raise WireError("malformed_payload", "payload is not valid Unicode") from None
        if canonical != data: raise WireError("payload_not_canonical", ...)
    and do the same around rfc8785.dumps in canonical_bytes."""
    escaped = json.dumps({"a": text}).encode()  # {"a": "a\\ud800b"}
    assert code_of(parse_canonical, escaped) == "malformed_payload"
    assert code_of(canonical_bytes, {"a": text}) == "malformed_payload"
    assert code_of(canonical_bytes, {text: 1}) == "malformed_payload"


@pytest.mark.parametrize("field", ["name", "address"])
@pytest.mark.parametrize("char", ["\x00", "\x07", "\t", "\n", "\x1f", "\x7f"])
def test_control_characters_in_text_fields_are_refused(field, char):
    with pytest.raises(WireError) as caught:
        enroll_payload(P256, ES256, **{field: f"Hanako{char}Yamada"})
    assert caught.value.code == "malformed_payload"
    # And the same bytes signed properly are refused by the verifier.
    good = enroll_payload(P256, ES256)
    bad = {**good, "body": {**good["body"], field: f"Hanako{char}Yamada"}}
    envelope = signed_raw(ES256, P256, canonical_bytes(bad))
    assert code_of(verify_enrollment, envelope) == "malformed_payload"
    assert code_of(verify_envelope, envelope, spki_der=_spki(P256), algorithm=ES256) == "malformed_payload"


# Issue 17: characters that hide, reorder or fake what a person reads, refused in every text field.
HIDDEN_CHARACTERS = [
    "\x85",
    "\x9b",
    "\x9d",  # C1 controls (NEL, CSI, OSC)
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",  # bidi embeddings and overrides
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200e",
    "\u200f",
    "\u061c",  # isolates and marks
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\U000e0041",  # zero-width, soft hyphen, tag
    "\u2028",
    "\u2029",  # line and paragraph separators
    "\ue000",
    "\U000f0000",
    "\U0010fffd",  # private use
    "\U000e0080",
    "\ufffe",  # unassigned, noncharacter
    "\u3164",
    "\u115f",  # Hangul fillers: letters drawn blank
]


@pytest.mark.parametrize("char", HIDDEN_CHARACTERS)
def test_hidden_characters_are_refused_in_every_text_field_with_their_code_point(char):
    text = f"Kissa{char}Hoshi"
    fields = [
        ("enroll", {"name": text}),
        ("enroll", {"address": text}),
        ("pay", {"payee_name": text}),
        ("pay", {"order_ref": text}),
        ("store", {"bank_account": f"JP{char}1"}),
        ("operator_action", {"reason": text}),
    ]
    for msg_type, change in fields:
        with pytest.raises(WireError) as caught:
            _payload_with(msg_type, change)
        field = next(iter(change))
        assert caught.value.code == "text_not_allowed", (char, field)
        assert caught.value.message.startswith(f"{field} contains U+{ord(char):04X} ("), caught.value.message
        assert char not in caught.value.message  # named by its code point, never shown
    # The same bytes signed properly are refused by the verifier too.
    good = enroll_payload(P256, ES256)
    bad = {**good, "body": {**good["body"], "name": text}}
    assert code_of(verify_enrollment, signed_raw(ES256, P256, canonical_bytes(bad))) == "text_not_allowed"


def _payload_with(msg_type: str, change: dict) -> dict:
    kid = key_id(_spki(P256))
    if msg_type == "enroll":
        return enroll_payload(P256, ES256, **change)
    if msg_type == "store":
        store = _store_enroll(P256, ES256)
        return build_payload(
            "enroll",
            aud=CENTER,
            kid=kid,
            msg_id=store["msg_id"],
            ctr=1,
            body={**store["body"], **change},
            now_s=NOW,
        )
    body = {
        "pay": {
            "payee": "S-0123456789abcdef",
            "payee_name": "Kissa Hoshi",
            "amount_minor": 1,
            "currency": "JPY",
            "order_ref": "A-100",
        },
        "operator_action": {"action": "revoke_key", "args": {"kid": kid, "reason": "lost"}},
    }[msg_type]
    if msg_type == "operator_action":
        body = {**body, "args": {**body["args"], **change}}
    else:
        body = {**body, **change}
    return build_payload(
        msg_type, aud=CENTER, kid=kid, msg_id="msg-0123456789abcdef", ctr=1, body=body, now_s=NOW
    )


def test_visible_text_of_every_script_passes():
    for text in [
        "山田 花子",
        "Hauptstraße 5, Zürich",
        "Kissa Hoshi [bold] :smile: \\",
        "Тест",
        "مقهى",
        "קפה",
        "Nguyễn Văn A",
        "☕ Café ❤️",
        "\u3000全角\u3000",
    ]:
        enroll_payload(P256, ES256, name=text)
        _payload_with("pay", {"order_ref": text[:64], "payee_name": text})


def test_text_fields_accept_non_ascii_and_refuse_blank_or_long():
    enroll_payload(P256, ES256, name="山田 花子", address="Hauptstraße 5, Zürich")
    for bad in ["", "   ", "x" * 201]:
        with pytest.raises(WireError, match="name"):
            enroll_payload(P256, ES256, name=bad)


@pytest.mark.parametrize(
    "date, ok",
    [
        ("1990-02-28", True),
        ("2024-02-29", True),
        ("2000-02-29", True),
        ("2023-02-30", False),
        ("2023-02-29", False),
        ("1900-02-29", False),
        ("2023-13-01", False),
        ("2023-00-10", False),
        ("2023-04-31", False),
        ("2023-2-3", False),
        ("20230203", False),
        ("2023-02-03T00:00", False),
        (" 2023-02-03", False),
        ("２０２３-02-03", False),
        ("٢٠٢٣-02-03", False),
    ],
)
def test_birth_date(date, ok):
    if ok:
        assert enroll_payload(P256, ES256, birth_date=date)["body"]["birth_date"] == date
    else:
        assert code_of(enroll_payload, P256, ES256, birth_date=date) == "malformed_payload"


def test_birth_date_must_be_a_string():
    assert code_of(enroll_payload, P256, ES256, birth_date=19900228) == "malformed_payload"


# --------------------------------------------------------------------------
# base64url


@pytest.mark.parametrize(
    "text",
    [
        "AA==",
        "AAA=",
        "AA=",
        "AA=A",  # padding, anywhere
        "AB",
        "AAB",
        "AP8=",  # stray bits (AB -> 0x00 with a 1 bit left over)
        "A",
        "AAAAA",  # impossible lengths
        "+/8",
        "ab+c",
        "ab/c",  # standard alphabet
        "AA AA",
        "AAAA\n",
        " AAAA",
        "AA\tAA",  # whitespace
        "AAé",
        "AA\x00",  # not base64 at all
    ],
)
def test_b64url_decode_refuses(text):
    assert code_of(b64url_decode, text, "field", 64) == "malformed_envelope"


@pytest.mark.parametrize("value", [b"AAAA", None, 0, ["AAAA"], {"AAAA": 1}, bytearray(b"AAAA")])
def test_b64url_decode_refuses_non_str(value):
    assert code_of(b64url_decode, value, "field", 64) == "malformed_envelope"


def test_b64url_decode_refuses_more_than_max_bytes_worth_of_text():
    assert b64url_decode(b64url_encode(b"\x01" * 30), "f", 30) == b"\x01" * 30
    assert code_of(b64url_decode, "A" * (30 * 4 // 3 + 5), "f", 30) == "malformed_envelope"


@pytest.mark.parametrize(
    "text, data", [("", b""), ("AA", b"\x00"), ("AAA", b"\x00\x00"), ("_-8", b"\xff\xef")]
)
def test_b64url_decode_known_answers(text, data):
    assert b64url_decode(text, "f", 64) == data
    assert b64url_encode(data) == text


@PROPERTY
@given(st.binary(max_size=200))
def test_b64url_round_trip_has_one_spelling(data):
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text, "f", 200) == data
    if text:
        # Any other character in the last position is either another value
        # or refused: never the same bytes spelled differently.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for ch in alphabet.replace(text[-1], ""):
            try:
                assert b64url_decode(text[:-1] + ch, "f", 200) != data
            except WireError as exc:
                assert exc.code == "malformed_envelope"


# --------------------------------------------------------------------------
# Envelope object


def test_envelope_json_round_trip():
    envelope = sealed(ES256, P256, receipt_payload(P256))
    document = envelope.to_json()
    assert set(document) == {"payload", "alg", "kid", "sig"}
    assert Envelope.from_json(json.loads(json.dumps(document))) == envelope


@pytest.mark.parametrize(
    "change, code",
    [
        (lambda d: {**d, "extra": 1}, "malformed_envelope"),
        (lambda d: {k: v for k, v in d.items() if k != "sig"}, "malformed_envelope"),
        (lambda d: {**d, "alg": "none"}, "unsupported_algorithm"),
        (lambda d: {**d, "alg": "es256"}, "unsupported_algorithm"),
        (lambda d: {**d, "alg": "HS256"}, "unsupported_algorithm"),
        (lambda d: {**d, "alg": ["ES256"]}, "unsupported_algorithm"),
        (lambda d: {**d, "kid": d["kid"].upper()}, "malformed_envelope"),
        (lambda d: {**d, "kid": d["kid"][:-1]}, "malformed_envelope"),
        (lambda d: {**d, "kid": d["kid"] + "0"}, "malformed_envelope"),
        (lambda d: {**d, "kid": d["kid"] + "\n"}, "malformed_envelope"),
        (lambda d: {**d, "kid": None}, "malformed_envelope"),
        (lambda d: {**d, "payload": d["payload"] + "="}, "malformed_envelope"),
        (lambda d: {**d, "sig": 12}, "malformed_envelope"),
        (lambda d: [d], "malformed_envelope"),
        (lambda d: json.dumps(d), "malformed_envelope"),
    ],
)
def test_envelope_from_json_refuses(change, code):
    document = sealed(ES256, P256, receipt_payload(P256)).to_json()
    assert code_of(Envelope.from_json, change(document)) == code


def test_seal_signs_the_exact_canonical_bytes():
    seen = []
    payload = receipt_payload(P256)
    envelope = seal(
        payload,
        alg=ES256,
        kid=key_id(_spki(P256)),
        sign=lambda data: seen.append(data) or sign_with(ES256, P256, data),
    )
    assert seen == [canonical_bytes(payload)] == [envelope.payload]
    header, body = verify_envelope(envelope, spki_der=_spki(P256), algorithm=ES256)
    assert (header.type, header.ctr, body) == ("receipt", 1, payload["body"])


# --------------------------------------------------------------------------
# Signatures: every single-byte change fails

MASKS = (0x01, 0x80, 0xFF)


def _small_receipt(alg: str) -> Envelope:
    key = KEYS[alg]
    return sealed(alg, key, receipt_payload(key, result={}))


@pytest.mark.parametrize("alg", [ES256, ED25519])
def test_every_payload_byte_flip_fails(alg):
    envelope = _small_receipt(alg)
    spki = _spki(KEYS[alg])
    verify_envelope(envelope, spki_der=spki, algorithm=alg)  # the original is good
    checked = 0
    for position in range(len(envelope.payload)):
        for mask in MASKS:
            payload = bytearray(envelope.payload)
            payload[position] ^= mask
            flipped = dataclasses.replace(envelope, payload=bytes(payload))
            # The signature is checked before the payload is parsed.
            assert code_of(verify_envelope, flipped, spki_der=spki, algorithm=alg) == "bad_signature", (
                position
            )
            checked += 1
    assert checked == 3 * len(envelope.payload) > 300


@pytest.mark.parametrize("alg", [ES256, ED25519])
def test_every_enrollment_payload_byte_flip_fails(alg):
    """Enrollment reads the body before the signature: a flip may fail in
    parsing, in the key or kid checks, or in the signature, but never pass."""
    key = KEYS[alg]
    envelope = sealed(alg, key, enroll_payload(key, alg))
    assert verify_enrollment(envelope)[2] == _spki(key)
    codes = set()
    for position in range(len(envelope.payload)):
        payload = bytearray(envelope.payload)
        payload[position] ^= 0x01
        codes.add(code_of(verify_enrollment, dataclasses.replace(envelope, payload=bytes(payload))))
    assert "bad_signature" in codes and "malformed_payload" in codes


@pytest.mark.parametrize("alg", [ES256, ED25519, RS256, PS256])
def test_every_signature_byte_flip_fails(alg):
    envelope = _small_receipt(alg)
    spki = _spki(KEYS[alg])
    verify_envelope(envelope, spki_der=spki, algorithm=alg)
    for position in range(len(envelope.sig)):
        for mask in MASKS:
            sig = bytearray(envelope.sig)
            sig[position] ^= mask
            flipped = dataclasses.replace(envelope, sig=bytes(sig))
            assert code_of(verify_envelope, flipped, spki_der=spki, algorithm=alg) == "bad_signature", (
                position
            )


@pytest.mark.parametrize("alg", [ES256, ED25519, RS256, PS256])
def test_truncated_or_extended_signature_fails(alg):
    envelope = _small_receipt(alg)
    spki = _spki(KEYS[alg])
    for sig in (
        envelope.sig[:-1],
        envelope.sig + b"\x00",
        b"\x00" + envelope.sig,
        b"",
        b"\x00" * len(envelope.sig),
    ):
        bad = dataclasses.replace(envelope, sig=sig)
        assert code_of(verify_envelope, bad, spki_der=spki, algorithm=alg) == "bad_signature"


def test_signature_longer_than_the_limit_is_refused_before_use():
    key = load_public_key(_spki(ED), ED25519)
    assert (
        code_of(verify_signature, ED25519, key, b"m", b"\x00" * (MAX_SIGNATURE_BYTES + 1)) == "bad_signature"
    )


# --------------------------------------------------------------------------
# ECDSA encodings


def _es256_der(message: bytes) -> tuple[int, int]:
    return decode_dss_signature(P256.sign(message, ec.ECDSA(hashes.SHA256())))


@PROPERTY
@given(st.binary(max_size=64), st.booleans())
def test_ecdsa_raw_to_der_low_s(message, make_high):
    r, s = _es256_der(message)
    s = P256_ORDER - min(s, P256_ORDER - s) if make_high else min(s, P256_ORDER - s)
    assert (s > HALF_N) == make_high
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    der = ecdsa_raw_to_der_low_s(raw)
    r2, s2 = decode_dss_signature(der)
    assert r2 == r and s2 <= HALF_N and s2 in (s, P256_ORDER - s)
    assert encode_dss_signature(r2, s2) == der  # strict DER
    verify_signature(ES256, load_public_key(_spki(P256), ES256), message, der)
    P256.public_key().verify(der, message, ec.ECDSA(hashes.SHA256()))
    assert ecdsa_der_low_s(r2, s2) == der  # idempotent


def test_ecdsa_low_s_boundary():
    assert ecdsa_der_low_s(1, HALF_N) == encode_dss_signature(1, HALF_N)
    assert ecdsa_der_low_s(1, HALF_N + 1) == encode_dss_signature(1, HALF_N)  # n - (n//2 + 1) == n//2
    assert ecdsa_der_low_s(5, P256_ORDER - 1) == encode_dss_signature(5, 1)


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_ecdsa_raw_must_be_64_bytes(length):
    with pytest.raises(ValueError):
        ecdsa_raw_to_der_low_s(b"\x01" * length)


def test_ecdsa_high_s_is_accepted_and_out_of_range_values_are_not():
    message = b"pinned decision"
    r, s = _es256_der(message)
    key = load_public_key(_spki(P256), ES256)
    for good in (encode_dss_signature(r, s), encode_dss_signature(r, P256_ORDER - s)):
        verify_signature(ES256, key, message, good)
    for bad in (
        encode_dss_signature(r, s + P256_ORDER),
        encode_dss_signature(r + P256_ORDER, s),
        encode_dss_signature(0, s),
        encode_dss_signature(r, 0),
        encode_dss_signature(r, P256_ORDER),
    ):
        assert code_of(verify_signature, ES256, key, message, bad) == "bad_signature"


def test_ecdsa_raw_signature_is_refused():
    message = b"raw r||s is not the wire format"
    r, s = _es256_der(message)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert (
        code_of(verify_signature, ES256, load_public_key(_spki(P256), ES256), message, raw) == "bad_signature"
    )


# --------------------------------------------------------------------------
# Keys and pinned algorithms

ALL_KEYS = {"p256": P256, "ed25519": ED, "rsa2048": RSA2048, "p384": P384, "rsa1024": RSA1024}
FITS = {
    "p256": {ES256},
    "ed25519": {ED25519},
    "rsa2048": {RS256, PS256},
    "p384": set(),
    "rsa1024": set(),
}


@pytest.mark.parametrize("key_name", sorted(ALL_KEYS))
@pytest.mark.parametrize("alg", [ES256, ED25519, RS256, PS256])
def test_verify_envelope_refuses_a_key_the_pinned_algorithm_cannot_use(key_name, alg):
    key = ALL_KEYS[key_name]
    spki = _spki(key)
    if alg in FITS[key_name]:
        envelope = sealed(alg, key, receipt_payload(key))
        header, _ = verify_envelope(envelope, spki_der=spki, algorithm=alg)
        assert header.kid == key_id(spki)
        return
    # Labelled and pinned alike, kid right: only the key/algorithm pairing is wrong.
    envelope = Envelope(
        payload=canonical_bytes(receipt_payload(key)), alg=alg, kid=key_id(spki), sig=b"\x00" * 64
    )
    assert code_of(verify_envelope, envelope, spki_der=spki, algorithm=alg) == "algorithm_mismatch"
    assert code_of(load_public_key, spki, alg) == "algorithm_mismatch"


@pytest.mark.parametrize("alg", [RS256, PS256])
def test_rsa_1024_is_refused_even_with_a_good_signature(alg):
    spki = _spki(RSA1024)
    envelope = sealed(alg, RSA1024, receipt_payload(RSA1024))
    RSA1024.public_key().verify(
        envelope.sig,
        envelope.payload,  # the signature itself is fine
        padding.PKCS1v15() if alg == RS256 else PSS,
        hashes.SHA256(),
    )
    assert code_of(verify_envelope, envelope, spki_der=spki, algorithm=alg) == "algorithm_mismatch"
    # verify_signature re-checks the key even when handed an object directly.
    key_object = RSA1024.public_key()
    assert code_of(verify_signature, alg, key_object, envelope.payload, envelope.sig) == "algorithm_mismatch"
    # And an enrollment of that key is refused.
    enrollment = sealed(alg, RSA1024, enroll_payload(RSA1024, alg))
    assert code_of(verify_enrollment, enrollment) == "algorithm_mismatch"


def test_envelope_alg_must_equal_the_pinned_alg():
    envelope = sealed(RS256, RSA2048, receipt_payload(RSA2048))
    relabelled = dataclasses.replace(envelope, alg=PS256)
    assert (
        code_of(verify_envelope, relabelled, spki_der=_spki(RSA2048), algorithm=RS256) == "algorithm_mismatch"
    )
    # Pinned to PS256, a PKCS#1 v1.5 signature labelled PS256 does not verify.
    assert code_of(verify_envelope, relabelled, spki_der=_spki(RSA2048), algorithm=PS256) == "bad_signature"
    # Pinned to RS256, a PSS signature does not verify either.
    pss = sealed(PS256, RSA2048, receipt_payload(RSA2048))
    assert (
        code_of(
            verify_envelope, dataclasses.replace(pss, alg=RS256), spki_der=_spki(RSA2048), algorithm=RS256
        )
        == "bad_signature"
    )


def test_verify_envelope_checks_kid_against_the_key():
    envelope = sealed(ES256, P256, receipt_payload(P256))
    other = ec.generate_private_key(ec.SECP256R1())
    # Envelope kid names P256; checked against another key's SPKI.
    assert code_of(verify_envelope, envelope, spki_der=_spki(other), algorithm=ES256) == "kid_mismatch"


def test_key_id_is_sha256_of_spki():
    spki = _spki(P256)
    assert key_id(spki) == hashlib.sha256(spki).hexdigest()
    assert len(key_id(spki)) == 64 and key_id(spki) == key_id(spki).lower()


def test_load_public_key_refusals():
    spki = _spki(P256)
    assert code_of(load_public_key, spki, "HS256") == "unsupported_algorithm"
    assert code_of(load_public_key, spki, "none") == "unsupported_algorithm"
    assert code_of(load_public_key, b"not der", ES256) == "bad_public_key"
    assert code_of(load_public_key, b"", ES256) == "bad_public_key"
    assert code_of(load_public_key, spki + b"\x00", ES256) == "bad_public_key"
    assert code_of(load_public_key, spki[:-1], ES256) == "bad_public_key"
    assert code_of(load_public_key, b"\x30" * 3000, ES256) == "bad_public_key"
    compressed = P256.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    point = P256.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # SPKI with the compressed point: same key, non-canonical encoding.
    compressed = (
        compressed[: compressed.index(b"\x03\x42\x00")] + b"\x03" + bytes([len(point) + 1]) + b"\x00" + point
    )
    compressed = b"\x30" + bytes([len(compressed) - 2]) + compressed[2:]
    assert (
        serialization.load_der_public_key(compressed).public_numbers() == P256.public_key().public_numbers()
    )
    assert code_of(load_public_key, compressed, ES256) == "bad_public_key"


# --------------------------------------------------------------------------
# Messages


def test_build_payload_refuses_what_a_verifier_refuses():
    key = P256
    kid = key_id(_spki(key))
    body = receipt_payload(key)["body"]
    ok = dict(aud=CENTER, kid=kid, msg_id="msg-0123456789abcdef", ctr=1, body=body, now_s=NOW)
    build_payload("receipt", **ok)
    for changes in [
        {"ctr": 0},
        {"ctr": 2**53},
        {"ctr": True},
        {"msg_id": "short"},
        {"msg_id": "x" * 65},
        {"msg_id": "has space 0123456789"},
        {"kid": kid.upper()},
        {"aud": "ab"},
        {"aud": "bad/aud"},
        {"lifetime_s": 0},
        {"lifetime_s": MAX_LIFETIME_S + 1},
        {"now_s": -1},
        {"body": {**body, "extra": 1}},
        {"body": {**body, "for_type": "transmogrify"}},
        {"body": {**body, "result": []}},
    ]:
        with pytest.raises(WireError) as caught:
            build_payload("receipt", **{**ok, **changes})
        assert caught.value.code == "malformed_payload", changes
    assert code_of(build_payload, "transmogrify", **ok) == "unknown_message_type"
    build_payload("receipt", **{**ok, "lifetime_s": MAX_LIFETIME_S})


def test_enroll_roles_and_alg():
    store = _store_enroll(P256, ES256)
    assert store["body"]["role"] == "store"
    with_birth_date = {**store["body"], "birth_date": "1990-02-28"}
    assert (
        code_of(
            build_payload,
            "enroll",
            aud=CENTER,
            kid=store["kid"],
            msg_id=store["msg_id"],
            ctr=1,
            body=with_birth_date,
            now_s=NOW,
        )
        == "malformed_payload"
    )
    assert code_of(enroll_payload, P256, ES256, role="store") == "malformed_payload"  # member fields, no bank
    assert code_of(enroll_payload, P256, ES256, role="admin") == "malformed_payload"
    assert code_of(enroll_payload, P256, ES256, role=None) == "malformed_payload"
    assert code_of(enroll_payload, P256, "none") == "unsupported_algorithm"
    assert code_of(enroll_payload, P256, ["ES256"]) == "unsupported_algorithm"


def _store_enroll(key, alg):
    body = {
        "role": "store",
        "public_key": b64url_encode(_spki(key)),
        "alg": alg,
        "name": "Shop",
        "address": "Somewhere 1",
        "bank_account": "JP 0001-123-4567890",
    }
    return build_payload(
        "enroll",
        aud=CENTER,
        kid=key_id(_spki(key)),
        msg_id="enr-0123456789abcdef",
        ctr=1,
        body=body,
        now_s=NOW,
    )


def test_store_enrollment_verifies():
    header, body, spki = verify_enrollment(sealed(ED25519, ED, _store_enroll(ED, ED25519)))
    assert (header.type, body["role"], spki) == ("enroll", "store", _spki(ED))


@pytest.mark.parametrize(
    "offset, code",
    [
        (-CLOCK_SKEW_S - 1, "not_yet_valid"),
        (-CLOCK_SKEW_S, None),
        (0, None),
        (None, "expired"),
    ],
)
def test_check_freshness_boundaries(offset, code):
    header, _ = parse_payload(canonical_bytes(receipt_payload(P256)))
    now = header.exp if offset is None else header.iat + offset
    if code is None:
        check_freshness(header, now)
        check_freshness(header, header.exp - 1)
    else:
        assert code_of(check_freshness, header, now) == code


def test_new_message_id():
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100 and all(MSG_ID_PATTERN.fullmatch(i) for i in ids)


def _receipt_bytes_with(**changes) -> bytes:
    return canonical_bytes({**receipt_payload(P256), **changes})


@pytest.mark.parametrize(
    "changes, code",
    [
        ({"dom": "TokenPay"}, "wrong_domain"),
        ({"dom": 1}, "wrong_domain"),
        ({"v": 0}, "wrong_domain"),
        ({"v": 2}, "wrong_domain"),
        ({"v": "1"}, "wrong_domain"),
        ({"type": "transmogrify"}, "unknown_message_type"),
        ({"type": None}, "unknown_message_type"),
        ({"ctr": 0}, "malformed_payload"),
        ({"iat": NOW, "exp": NOW}, "malformed_payload"),
        ({"iat": True}, "malformed_payload"),
        ({"body": []}, "malformed_payload"),
        ({"msg_id": 1234567890123456}, "malformed_payload"),
    ],
)
def test_parse_payload_header_refusals(changes, code):
    assert code_of(parse_payload, _receipt_bytes_with(**changes)) == code


def test_bug_version_true_is_not_version_1():
    """BUG: `document["v"] != VERSION` is False for `true` (True == 1 in
    Python), so {"v":true} is accepted as version 1: a second signed byte
    string for the same message, against the one-spelling rule. Fix in
    paywire/messages.py parse_payload_document (line 78):
        if document["dom"] != DOMAIN or type(document["v"]) is not int or document["v"] != VERSION:"""
    assert code_of(parse_payload, _receipt_bytes_with(v=True)) == "wrong_domain"


@pytest.mark.parametrize("value", [[], {}, ["enroll"], {"enroll": 1}])
def test_bug_unhashable_message_type_is_a_wire_error(value):
    """BUG: `msg_type not in MESSAGE_TYPES` (a frozenset) raises TypeError
    for a list or object; verify_enrollment parses before checking any
    signature, so an unsigned request gets a 500. Fix in paywire/messages.py
    parse_payload_document (line 81):
        if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:"""
    data = _receipt_bytes_with(type=value)
    assert code_of(parse_payload, data) == "unknown_message_type"
    envelope = Envelope(payload=data, alg=ES256, kid="0" * 64, sig=b"\x00")
    assert code_of(verify_enrollment, envelope) == "unknown_message_type"


@pytest.mark.parametrize("value", [[], {}, ["enroll"]])
def test_bug_unhashable_receipt_for_type_is_a_wire_error(value):
    """BUG: same TypeError in _check_receipt. Fix in paywire/messages.py
    (line 130): `if not isinstance(body["for_type"], str) or body["for_type"] not in MESSAGE_TYPES:`"""
    payload = receipt_payload(P256)
    data = canonical_bytes({**payload, "body": {**payload["body"], "for_type": value}})
    assert code_of(parse_payload, data) == "malformed_payload"


# --------------------------------------------------------------------------
# Enrollment (proof of possession)


@pytest.mark.parametrize("alg", [ES256, ED25519, RS256, PS256])
def test_enrollment_round_trip(alg):
    key = KEYS[alg]
    envelope = Envelope.from_json(sealed(alg, key, enroll_payload(key, alg)).to_json())
    header, body, spki = verify_enrollment(envelope)
    assert spki == _spki(key) and header.kid == key_id(spki) and body["alg"] == alg
    # Once enrolled, the same envelope verifies against the stored key.
    assert verify_envelope(envelope, spki_der=spki, algorithm=alg)[0] == header


def test_enrollment_signed_by_another_key_is_refused():
    victim = ec.generate_private_key(ec.SECP256R1())
    payload = enroll_payload(victim, ES256)  # names the victim's key and kid
    envelope = Envelope(
        payload=canonical_bytes(payload),
        alg=ES256,
        kid=key_id(_spki(victim)),
        sig=sign_with(ES256, P256, canonical_bytes(payload)),
    )
    assert code_of(verify_enrollment, envelope) == "bad_signature"


def test_enrollment_public_key_must_be_canonical_base64url():
    payload = enroll_payload(P256, ES256)
    padded = {
        **payload,
        "body": {**payload["body"], "public_key": base64.urlsafe_b64encode(_spki(P256)).decode()},
    }
    assert padded["body"]["public_key"].endswith("=")
    assert (
        code_of(verify_enrollment, signed_raw(ES256, P256, canonical_bytes(padded))) == "malformed_envelope"
    )


# --- the fast RFC 8785 path agrees with the rfc8785 library ---------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.text(max_size=20)
    | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=20)
)
_json_documents = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json_documents, max_size=6))
def test_fast_canonical_bytes_equal_the_rfc8785_library(document):
    import rfc8785

    from paywire.canonical import jcs_bytes

    try:
        expected = rfc8785.dumps(document)
    except ValueError:  # lone surrogates: both must refuse
        with pytest.raises(ValueError):
            jcs_bytes(document)
        return
    assert jcs_bytes(document) == expected


def test_fast_canonical_bytes_escape_control_characters_like_rfc8785():
    import rfc8785

    from paywire.canonical import jcs_bytes

    document = {"b": '\x00\x01\x1f\x7f"\\/\b\f\n\r\t', "a": [1, -2, True, None], "\x7f": {"z": "", "A": 0}}
    assert jcs_bytes(document) == rfc8785.dumps(document)
