"""The signed header every payload carries, and the bodies of each type.

    {"dom": "tokenpay", "v": 1, "type": ..., "aud": <center id or key id>,
     "kid": <signer key id>, "msg_id": <signer-chosen id>, "ctr": <per-key counter>,
     "iat": <issued, epoch s>, "exp": <expires, epoch s>, "body": {...}}

The domain tag and version keep a signature made for this protocol from being
valid anywhere else; `aud` keeps it from being valid at another center.
Parsing is strict: exactly these fields, each within its limits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from paywire.algorithms import ALGORITHMS
from paywire.canonical import canonical_bytes, parse_canonical
from paywire.envelope import Envelope, b64url_decode
from paywire.errors import WireError
from paywire.recovery import RECOVERY_KEY_PATTERN, RECOVERY_PROOF_PATTERN
from paywire.text import check_text_chars

DOMAIN = "tokenpay"
VERSION = 1
HEADER_FIELDS = frozenset({"dom", "v", "type", "aud", "kid", "msg_id", "ctr", "iat", "exp", "body"})

ENROLL = "enroll"
RECEIPT = "receipt"
TOPUP = "topup"
PAY = "pay"
REFUND = "refund"
PAYOUT = "payout"
NOTICES = "notices"  # a store's signed request for its payment notices
BALANCE = "balance"  # a signed query for balance and recent account events
ACCOUNT_INFO = "account_info"  # a signed query: which account this key is, its highest counter seen
NOTICE = "notice"  # signed by the center: one payment notice for a store
CONSOLE_LOGIN = "console_login"  # an operator approves a console login challenge
OPERATOR_ACTION = "operator_action"  # an operator's signed action (center.pipeline.operator_actions)
ROTATE = "rotate"  # signed by the old key; carries the new key's KEY_PROOF
KEY_PROOF = "key_proof"  # signed by the new key, naming the key it replaces; only ever inside ROTATE
MESSAGE_TYPES = frozenset(
    {
        ENROLL,
        RECEIPT,
        TOPUP,
        PAY,
        REFUND,
        PAYOUT,
        NOTICES,
        BALANCE,
        NOTICE,
        ROTATE,
        KEY_PROOF,
        CONSOLE_LOGIN,
        OPERATOR_ACTION,
        ACCOUNT_INFO,
    }
)
# Types a member or store signs; RECEIPT and NOTICE come from the center only.
REQUEST_TYPES = frozenset(
    {
        ENROLL,
        TOPUP,
        PAY,
        REFUND,
        PAYOUT,
        NOTICES,
        BALANCE,
        ROTATE,
        KEY_PROOF,
        CONSOLE_LOGIN,
        OPERATOR_ACTION,
        ACCOUNT_INFO,
    }
)
FUNDING_METHODS = ("credit", "bank", "postal", "cash")

PARTY_ID_PATTERN = re.compile(r"[MS]-[0-9a-f]{16}")
OBJECT_ID_PATTERN = re.compile(r"[A-Z]-[0-9a-f]{16}")
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
MAX_AMOUNT_MINOR = 10**12
MAX_NOTICES_PER_REQUEST = 100
MSG_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
KID_PATTERN = re.compile(r"[0-9a-f]{64}")
AUDIENCE_PATTERN = re.compile(r"[A-Za-z0-9._:-]{3,64}")
SHA256_HEX_PATTERN = KID_PATTERN
TOPUP_ID_PATTERN = re.compile(r"U-[0-9a-f]{16}")
# A console login challenge as the browser shows it: 16 base32 characters (80 bits) in four groups.
CONSOLE_CHALLENGE_PATTERN = re.compile(r"[A-Z2-7]{4}(?:-[A-Z2-7]{4}){3}")
MAX_REASON_CHARS = 200
MAX_COUNTER = 2**53 - 1
MAX_KEY_CERT_BYTES = 4096  # an issuer's X.509 certificate for the enrolling key, DER
CLOCK_SKEW_S = 300
# Long enough for a message queued offline in the outbox to be delivered days
# later, short enough that an old signed message does not live forever.
MAX_LIFETIME_S = 30 * 24 * 3600
DEFAULT_LIFETIME_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Header:
    type: str
    aud: str
    kid: str
    msg_id: str
    ctr: int
    iat: int
    exp: int


def new_message_id() -> str:
    """128 random bits, base64url-safe hex; never derived from signature bytes."""
    return secrets.token_hex(16)


def build_payload(
    msg_type: str,
    *,
    aud: str,
    kid: str,
    msg_id: str,
    ctr: int,
    body: dict,
    now_s: int,
    lifetime_s: int = DEFAULT_LIFETIME_S,
) -> dict:
    payload = {
        "dom": DOMAIN,
        "v": VERSION,
        "type": msg_type,
        "aud": aud,
        "kid": kid,
        "msg_id": msg_id,
        "ctr": ctr,
        "iat": now_s,
        "exp": now_s + lifetime_s,
        "body": body,
    }
    parse_payload_document(payload)  # the builder refuses what a verifier would refuse
    return payload


def parse_payload(data: bytes) -> tuple[Header, dict]:
    """Parse canonical payload bytes into the header and the checked body."""
    return parse_payload_document(parse_canonical(data))


def parse_payload_document(document: dict) -> tuple[Header, dict]:
    if set(document) != HEADER_FIELDS:
        missing, extra = HEADER_FIELDS - set(document), set(document) - HEADER_FIELDS
        raise WireError(
            "malformed_payload",
            f"payload fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}",
        )
    # type() check: True == 1 in Python, and "v": true must not be a second spelling of v1.
    if document["dom"] != DOMAIN or type(document["v"]) is not int or document["v"] != VERSION:
        raise WireError("wrong_domain", f"payload is not a {DOMAIN} v{VERSION} message")
    msg_type = document["type"]
    if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:
        raise WireError("unknown_message_type", f"message type {msg_type!r} is not known")
    header = Header(
        type=msg_type,
        aud=_match(document["aud"], AUDIENCE_PATTERN, "aud"),
        kid=_match(document["kid"], KID_PATTERN, "kid"),
        msg_id=_match(document["msg_id"], MSG_ID_PATTERN, "msg_id"),
        ctr=_int(document["ctr"], "ctr", 1, MAX_COUNTER),
        iat=_int(document["iat"], "iat", 0, MAX_COUNTER),
        exp=_int(document["exp"], "exp", 0, MAX_COUNTER),
    )
    if not header.iat < header.exp <= header.iat + MAX_LIFETIME_S:
        raise WireError("malformed_payload", f"exp must be after iat and at most {MAX_LIFETIME_S} s later")
    body = document["body"]
    if not isinstance(body, dict):
        raise WireError("malformed_payload", "body must be an object")
    _BODY_CHECKS[msg_type](body)
    return header, body


def check_freshness(header: Header, now_s: int) -> None:
    if header.iat > now_s + CLOCK_SKEW_S:
        raise WireError("not_yet_valid", "message is issued in the future; check the clock")
    if header.exp <= now_s:
        raise WireError("expired", "message has expired; sign it again")


def _check_enroll(body: dict) -> None:
    role = body.get("role")
    common = {"role", "public_key", "alg", "name", "address"}
    if "rebind" in body:  # a new key (lost card) asking to be bound to this existing account
        _match(body["rebind"], PARTY_ID_PATTERN, "rebind")
        common.add("rebind")
        if "recovery_proof" in body:  # the account's recovery code signed this claim (paywire.recovery)
            _match(body["recovery_proof"], RECOVERY_PROOF_PATTERN, "recovery_proof")
            common.add("recovery_proof")
    if "recovery_key" in body:  # the public key of the recovery code the wallet made (paywire.recovery)
        _match(body["recovery_key"], RECOVERY_KEY_PATTERN, "recovery_key")
        common.add("recovery_key")
    if "key_cert" in body:  # the card issuer's certificate for this key (center.keys.issuer_policy)
        check_key_cert_field(body["key_cert"])
        common.add("key_cert")
    if role == "member":
        _exact_fields(body, common | {"birth_date"})
        _date(body["birth_date"], "birth_date")
    elif role == "store":
        _exact_fields(body, common | {"bank_account"})
        _text(body["bank_account"], "bank_account", 34)  # IBAN's maximum; pain.001 allows no more
    else:
        raise WireError("malformed_payload", "role must be 'member' or 'store'")
    if body["alg"] not in ALGORITHMS:
        raise WireError("unsupported_algorithm", f"alg must be one of {', '.join(ALGORITHMS)}")
    _text(body["public_key"], "public_key", 2800)
    _text(body["name"], "name", 200)
    _text(body["address"], "address", 500)


def check_key_cert_field(value: object) -> bytes:
    """A key certificate as a body carries it: canonical base64url of 1 to MAX_KEY_CERT_BYTES of DER."""
    if not isinstance(value, str) or not value:
        raise WireError("malformed_payload", "key_cert must be a non-empty base64url string")
    try:
        data = b64url_decode(value, "key_cert", MAX_KEY_CERT_BYTES)
    except WireError as error:
        raise WireError("malformed_payload", error.message) from None
    if not data or len(data) > MAX_KEY_CERT_BYTES:  # the text limit alone lets a few bytes more through
        raise WireError("malformed_payload", f"key_cert must decode to 1 to {MAX_KEY_CERT_BYTES} bytes")
    return data


def _check_key_proof(body: dict) -> None:
    fields = {"public_key", "alg", "replaces"}
    if "key_cert" in body:  # the card issuer's certificate for the new key, as at enrollment
        check_key_cert_field(body["key_cert"])
        fields.add("key_cert")
    _exact_fields(body, fields)
    if body["alg"] not in ALGORITHMS:
        raise WireError("unsupported_algorithm", f"alg must be one of {', '.join(ALGORITHMS)}")
    _text(body["public_key"], "public_key", 2800)
    _match(body["replaces"], KID_PATTERN, "replaces")


def _check_rotate(body: dict) -> None:
    """{"new_key": <envelope of a KEY_PROOF>}: checked for shape here, for signatures by the verifier."""
    _exact_fields(body, {"new_key"})
    inner = Envelope.from_json(body["new_key"])
    header, _inner_body = parse_payload(inner.payload)
    if header.type != KEY_PROOF or header.kid != inner.kid:
        raise WireError("malformed_payload", "new_key must be a key_proof envelope signed by the new key")


def _check_receipt(body: dict) -> None:
    _exact_fields(body, {"for_kid", "for_msg_id", "for_type", "request_sha256", "result"})
    _match(body["for_kid"], KID_PATTERN, "for_kid")
    _match(body["for_msg_id"], MSG_ID_PATTERN, "for_msg_id")
    if not isinstance(body["for_type"], str) or body["for_type"] not in MESSAGE_TYPES:
        raise WireError("malformed_payload", "for_type is not a known message type")
    _match(body["request_sha256"], SHA256_HEX_PATTERN, "request_sha256")
    if not isinstance(body["result"], dict):
        raise WireError("malformed_payload", "result must be an object")


def _check_topup(body: dict) -> None:
    _exact_fields(body, {"amount_minor", "currency", "method"})
    _amount(body["amount_minor"])
    _match(body["currency"], CURRENCY_PATTERN, "currency")
    if body["method"] not in FUNDING_METHODS:
        raise WireError("malformed_payload", f"method must be one of {', '.join(FUNDING_METHODS)}")


def _check_pay(body: dict) -> None:
    _exact_fields(body, {"payee", "payee_name", "amount_minor", "currency", "order_ref"})
    _match(body["payee"], PARTY_ID_PATTERN, "payee")
    _text(body["payee_name"], "payee_name", 200)
    _amount(body["amount_minor"])
    _match(body["currency"], CURRENCY_PATTERN, "currency")
    _text(body["order_ref"], "order_ref", 64)


def _check_refund(body: dict) -> None:
    _exact_fields(body, {"payment_id", "amount_minor", "currency"})
    _match(body["payment_id"], OBJECT_ID_PATTERN, "payment_id")
    if body["amount_minor"] is not None:  # None: the whole amount not yet refunded
        _amount(body["amount_minor"])
    _match(body["currency"], CURRENCY_PATTERN, "currency")


def _check_payout(body: dict) -> None:
    _exact_fields(body, {"currency"})
    _match(body["currency"], CURRENCY_PATTERN, "currency")


def _check_notices(body: dict) -> None:
    _exact_fields(body, {"after", "limit"})
    _int(body["after"], "after", 0, MAX_COUNTER)
    _int(body["limit"], "limit", 1, MAX_NOTICES_PER_REQUEST)


def _check_balance(body: dict) -> None:
    _exact_fields(body, set())


def _check_account_info(body: dict) -> None:
    """Empty: the signing key names the account; the answer is the center's (center.pipeline.account_info)."""
    _exact_fields(body, set())


def _check_notice(body: dict) -> None:
    _exact_fields(
        body,
        {
            "notice_seq",
            "payment_id",
            "store_id",
            "buyer_id",
            "amount_minor",
            "currency",
            "order_ref",
            "paid_at_ms",
        },
    )
    _int(body["notice_seq"], "notice_seq", 1, MAX_COUNTER)
    _match(body["payment_id"], OBJECT_ID_PATTERN, "payment_id")
    _match(body["store_id"], PARTY_ID_PATTERN, "store_id")
    _match(body["buyer_id"], PARTY_ID_PATTERN, "buyer_id")
    _amount(body["amount_minor"])
    _match(body["currency"], CURRENCY_PATTERN, "currency")
    _text(body["order_ref"], "order_ref", 64)
    _int(body["paid_at_ms"], "paid_at_ms", 0, MAX_COUNTER)


def _check_console_login(body: dict) -> None:
    """{"challenge", "client_sha256"}: the approval names the client facts the operator was shown."""
    if set(body) == {"challenge"}:  # a wallet from before client facts were shown and bound
        raise WireError(
            "console_login_outdated",
            "this console login approval does not name the client it "
            "approves: update the wallet, then run `wallet console-login` again",
        )
    _exact_fields(body, {"challenge", "client_sha256"})
    _match(body["challenge"], CONSOLE_CHALLENGE_PATTERN, "challenge")
    _match(body["client_sha256"], SHA256_HEX_PATTERN, "client_sha256")


def console_client_sha256(challenge: str, client_address: str, user_agent: str, created_at_ms: int) -> str:
    """The hash a console login approval binds: the challenge's client facts as the center recorded them."""
    facts = {
        "challenge": challenge,
        "client_address": client_address,
        "user_agent": user_agent,
        "created_at_ms": created_at_ms,
    }
    return hashlib.sha256(canonical_bytes(facts)).hexdigest()


def _check_operator_action(body: dict) -> None:
    """{"action": one of OPERATOR_ACTION_ARGS, "args": exactly that action's arguments}."""
    _exact_fields(body, {"action", "args"})
    action = body["action"]
    if not isinstance(action, str) or action not in OPERATOR_ACTION_ARGS:
        raise WireError(
            "malformed_payload", f"action must be one of {', '.join(sorted(OPERATOR_ACTION_ARGS))}"
        )
    if not isinstance(body["args"], dict):
        raise WireError("malformed_payload", "args must be an object")
    OPERATOR_ACTION_ARGS[action](body["args"])


def _args_topup(args: dict) -> None:
    """A decision names exactly what it decides: the top-up, its member, amount and currency."""
    if set(args) == {"topup_id"}:  # the form from before decisions named what they decide
        raise WireError(
            "operator_action_outdated",
            "a top-up decision must name the top-up's member_id, "
            "amount_minor and currency: update the wallet",
        )
    _exact_args(args, {"topup_id", "member_id", "amount_minor", "currency"})
    _match(args["topup_id"], TOPUP_ID_PATTERN, "topup_id")
    _match(args["member_id"], PARTY_ID_PATTERN, "member_id")
    _amount(args["amount_minor"])
    _match(args["currency"], CURRENCY_PATTERN, "currency")


def _args_topup_id(args: dict) -> None:
    _exact_args(args, {"topup_id"})
    _match(args["topup_id"], TOPUP_ID_PATTERN, "topup_id")


def _args_revoke_key(args: dict) -> None:
    _exact_args(args, {"kid", "reason"})
    _match(args["kid"], KID_PATTERN, "kid")
    _text(args["reason"], "reason", MAX_REASON_CHARS)


def _args_kid(args: dict) -> None:
    _exact_args(args, {"kid"})
    _match(args["kid"], KID_PATTERN, "kid")


def _args_none(args: dict) -> None:
    _exact_args(args, set())


def _exact_args(args: dict, expected: set[str]) -> None:
    if set(args) != expected:
        missing, extra = expected - set(args), set(args) - expected
        raise WireError(
            "malformed_payload", f"args fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


# Operator actions and their arguments; center.pipeline.operator_actions.ACTIONS says who
# may perform each and what it does (a test checks the two name the same set).
OPERATOR_ACTION_ARGS = {
    "confirm_topup": _args_topup,
    "decline_topup": _args_topup,
    "revoke_key": _args_revoke_key,
    "whoami": _args_none,
    # a lost card's new key (center.keys.binding): reject_key takes a kid and a reason, like revoke_key
    "bind_key": _args_kid,
    "reject_key": _args_revoke_key,
    # an operator-signed read of one top-up, fetched and shown before a decision is signed
    "show_topup": _args_topup_id,
}


_BODY_CHECKS = {
    ENROLL: _check_enroll,
    RECEIPT: _check_receipt,
    TOPUP: _check_topup,
    PAY: _check_pay,
    REFUND: _check_refund,
    PAYOUT: _check_payout,
    NOTICES: _check_notices,
    BALANCE: _check_balance,
    NOTICE: _check_notice,
    ROTATE: _check_rotate,
    KEY_PROOF: _check_key_proof,
    CONSOLE_LOGIN: _check_console_login,
    OPERATOR_ACTION: _check_operator_action,
    ACCOUNT_INFO: _check_account_info,
}


def _amount(value: object) -> int:
    return _int(value, "amount_minor", 1, MAX_AMOUNT_MINOR)


def _exact_fields(body: dict, expected: set[str]) -> None:
    if set(body) != expected:
        missing, extra = expected - set(body), set(body) - expected
        raise WireError(
            "malformed_payload", f"body fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def _match(value: object, pattern: re.Pattern, field: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WireError("malformed_payload", f"{field} is malformed")
    return value


def _int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise WireError("malformed_payload", f"{field} must be an integer in [{low}, {high}]")
    return value


def _text(value: object, field: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_chars:
        raise WireError(
            "malformed_payload", f"{field} must be non-empty text of at most {max_chars} characters"
        )
    check_text_chars(value, field)
    return value


def _date(value: object, field: str) -> dt.date:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise WireError("malformed_payload", f"{field} must be a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise WireError("malformed_payload", f"{field} is not a real calendar date") from None
