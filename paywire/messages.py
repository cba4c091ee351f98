"""The signed header every payload carries, and the message types.

    {"dom": "tokenpay", "v": 1, "type": ..., "aud": <center id or key id>,
     "kid": <signer key id>, "msg_id": <signer-chosen id>, "ctr": <per-key counter>,
     "iat": <issued, epoch s>, "exp": <expires, epoch s>, "body": {...}}

The domain tag and version keep a signature made for this protocol from being
valid anywhere else; `aud` keeps it from being valid at another center.
Parsing is strict: exactly these fields, each within its limits (paywire.fields),
and the body of its type (paywire.bodies).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from paywire import bodies
from paywire.canonical import parse_canonical
from paywire.errors import WireError
from paywire.fields import (
    KID_PATTERN,
    MAX_COUNTER,
    SHA256_HEX_PATTERN,
    check_exact_fields,
    check_int,
    check_match,
)

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
LOG_QUERY = "log_query"  # a signed read of the center's log (tree heads, proofs): never audited
TREE_HEAD = "tree_head"  # signed by the center: the audit log's size and Merkle root (paywire.tree_head)
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
        LOG_QUERY,
        TREE_HEAD,
    }
)
# Types a member or store signs; RECEIPT, NOTICE and TREE_HEAD come from the center only.
REQUEST_TYPES = MESSAGE_TYPES - {RECEIPT, NOTICE, TREE_HEAD}
MSG_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
AUDIENCE_PATTERN = re.compile(r"[A-Za-z0-9._:-]{3,64}")
CLOCK_SKEW_S = 300
# Counters must rise, but requests signed in order may arrive out of order (a store terminal
# sending concurrently, a batch): the center accepts a counter once, and only within this window
# below the highest it has seen from the key. A wallet whose counter fell behind (an older copy of
# its vault) moves past the window to be heard again (token_wallet.cli.account_info).
COUNTER_WINDOW = 4096
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
    check_exact_fields(document, HEADER_FIELDS, "payload")
    # type() check: True == 1 in Python, and "v": true must not be a second spelling of v1.
    if document["dom"] != DOMAIN or type(document["v"]) is not int or document["v"] != VERSION:
        raise WireError("wrong_domain", f"payload is not a {DOMAIN} v{VERSION} message")
    msg_type = document["type"]
    if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:
        raise WireError("unknown_message_type", f"message type {msg_type!r} is not known")
    header = Header(
        type=msg_type,
        aud=check_match(document["aud"], AUDIENCE_PATTERN, "aud"),
        kid=check_match(document["kid"], KID_PATTERN, "kid"),
        msg_id=check_match(document["msg_id"], MSG_ID_PATTERN, "msg_id"),
        ctr=check_int(document["ctr"], "ctr", 1, MAX_COUNTER),
        iat=check_int(document["iat"], "iat", 0, MAX_COUNTER),
        exp=check_int(document["exp"], "exp", 0, MAX_COUNTER),
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


def _check_rotate(body: dict) -> None:
    """{"new_key": <envelope of a KEY_PROOF>}: checked for shape here, for signatures by the verifier."""
    inner = bodies.check_rotate_shape(body)
    header, _inner_body = parse_payload(inner.payload)
    if header.type != KEY_PROOF or header.kid != inner.kid:
        raise WireError("malformed_payload", "new_key must be a key_proof envelope signed by the new key")


def _check_receipt(body: dict) -> None:
    check_exact_fields(body, {"for_kid", "for_msg_id", "for_type", "request_sha256", "result"})
    check_match(body["for_kid"], KID_PATTERN, "for_kid")
    check_match(body["for_msg_id"], MSG_ID_PATTERN, "for_msg_id")
    if not isinstance(body["for_type"], str) or body["for_type"] not in MESSAGE_TYPES:
        raise WireError("malformed_payload", "for_type is not a known message type")
    check_match(body["request_sha256"], SHA256_HEX_PATTERN, "request_sha256")
    if not isinstance(body["result"], dict):
        raise WireError("malformed_payload", "result must be an object")


_BODY_CHECKS = {
    ENROLL: bodies.check_enroll,
    RECEIPT: _check_receipt,
    TOPUP: bodies.check_topup,
    PAY: bodies.check_pay,
    REFUND: bodies.check_refund,
    PAYOUT: bodies.check_payout,
    NOTICES: bodies.check_notices,
    BALANCE: bodies.check_empty,
    NOTICE: bodies.check_notice,
    ROTATE: _check_rotate,
    KEY_PROOF: bodies.check_key_proof,
    CONSOLE_LOGIN: bodies.check_console_login,
    OPERATOR_ACTION: bodies.check_operator_action,
    ACCOUNT_INFO: bodies.check_empty,
    LOG_QUERY: bodies.check_log_query,
    TREE_HEAD: bodies.check_tree_head,
}
