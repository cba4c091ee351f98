"""The body of each request type (and of the center's tree heads), and the arguments of each
operator action.

Each check takes the body a payload carries and raises WireError unless it has exactly
its fields, each within its limits. paywire.messages picks the check by message type.
(The receipt and rotate bodies are checked there: one names a message type, the other
carries a whole message.)
"""

from __future__ import annotations

import hashlib
import re

from paywire.algorithms import ALGORITHMS
from paywire.canonical import canonical_bytes
from paywire.envelope import Envelope, b64url_decode
from paywire.errors import WireError
from paywire.fields import (
    CONSOLE_CHALLENGE_PATTERN,
    CURRENCY_PATTERN,
    FUNDING_METHODS,
    KID_PATTERN,
    MAX_COUNTER,
    MAX_KEY_CERT_BYTES,
    MAX_NOTICES_PER_REQUEST,
    MAX_REASON_CHARS,
    OBJECT_ID_PATTERN,
    PARTY_ID_PATTERN,
    SHA256_HEX_PATTERN,
    TOPUP_ID_PATTERN,
    check_amount,
    check_date,
    check_exact_fields,
    check_int,
    check_match,
    check_text,
)
from paywire.merkle import MAX_TREE_SIZE
from paywire.recovery import RECOVERY_KEY_PATTERN, RECOVERY_PROOF_PATTERN

MAX_PUBLIC_KEY_CHARS = 2800  # a PEM public key: an RSA-4096 key with room to spare
MAX_NAME_CHARS = 200
# A center id is a message audience (paywire.messages.AUDIENCE_PATTERN); tree heads are addressed to it.
TREE_HEAD_CENTER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{3,64}")
MAX_ADDRESS_CHARS = 500
MAX_BANK_ACCOUNT_CHARS = 34  # IBAN's maximum; pain.001 allows no more
MAX_ORDER_REF_CHARS = 64


def check_enroll(body: dict) -> None:
    common = {"role", "public_key", "alg", "name", "address"} | _enroll_extras(body)
    role = body.get("role")
    if role == "member":
        check_exact_fields(body, common | {"birth_date"})
        check_date(body["birth_date"], "birth_date")
    elif role == "store":
        check_exact_fields(body, common | {"bank_account"})
        check_text(body["bank_account"], "bank_account", MAX_BANK_ACCOUNT_CHARS)
    else:
        raise WireError("malformed_payload", "role must be 'member' or 'store'")
    _check_public_key(body)
    check_text(body["name"], "name", MAX_NAME_CHARS)
    check_text(body["address"], "address", MAX_ADDRESS_CHARS)


def _enroll_extras(body: dict) -> set[str]:
    """The optional enroll fields present in body, each checked."""
    extras = set()
    if "rebind" in body:  # a new key (lost card) asking to be bound to this existing account
        check_match(body["rebind"], PARTY_ID_PATTERN, "rebind")
        extras.add("rebind")
        if "recovery_proof" in body:  # the account's recovery code signed this claim (paywire.recovery)
            check_match(body["recovery_proof"], RECOVERY_PROOF_PATTERN, "recovery_proof")
            extras.add("recovery_proof")
    if "recovery_key" in body:  # the public key of the recovery code the wallet made (paywire.recovery)
        check_match(body["recovery_key"], RECOVERY_KEY_PATTERN, "recovery_key")
        extras.add("recovery_key")
    if "key_cert" in body:  # the card issuer's certificate for this key (center.keys.issuer_policy)
        check_key_cert_field(body["key_cert"])
        extras.add("key_cert")
    return extras


def _check_public_key(body: dict) -> None:
    if body["alg"] not in ALGORITHMS:
        raise WireError("unsupported_algorithm", f"alg must be one of {', '.join(ALGORITHMS)}")
    check_text(body["public_key"], "public_key", MAX_PUBLIC_KEY_CHARS)


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


def check_key_proof(body: dict) -> None:
    fields = {"public_key", "alg", "replaces"}
    if "key_cert" in body:  # the card issuer's certificate for the new key, as at enrollment
        check_key_cert_field(body["key_cert"])
        fields.add("key_cert")
    check_exact_fields(body, fields)
    _check_public_key(body)
    check_match(body["replaces"], KID_PATTERN, "replaces")


def check_rotate_shape(body: dict) -> Envelope:
    """{"new_key": <envelope>}: the envelope read here; paywire.messages checks what it carries."""
    check_exact_fields(body, {"new_key"})
    return Envelope.from_json(body["new_key"])


def check_topup(body: dict) -> None:
    check_exact_fields(body, {"amount_minor", "currency", "method"})
    check_amount(body["amount_minor"])
    check_match(body["currency"], CURRENCY_PATTERN, "currency")
    if body["method"] not in FUNDING_METHODS:
        raise WireError("malformed_payload", f"method must be one of {', '.join(FUNDING_METHODS)}")


def check_pay(body: dict) -> None:
    fields = {"payee", "payee_name", "amount_minor", "currency", "order_ref"}
    if "repeat" in body:  # "I mean to pay this order again" (center.pipeline.money: duplicate_order)
        if body["repeat"] is not True:  # absent means not a repeat: one spelling of each meaning
            raise WireError("malformed_payload", "repeat must be true when present")
        fields.add("repeat")
    check_exact_fields(body, fields)
    check_match(body["payee"], PARTY_ID_PATTERN, "payee")
    check_text(body["payee_name"], "payee_name", MAX_NAME_CHARS)
    check_amount(body["amount_minor"])
    check_match(body["currency"], CURRENCY_PATTERN, "currency")
    check_text(body["order_ref"], "order_ref", MAX_ORDER_REF_CHARS)


def check_refund(body: dict) -> None:
    check_exact_fields(body, {"payment_id", "amount_minor", "currency"})
    check_match(body["payment_id"], OBJECT_ID_PATTERN, "payment_id")
    if body["amount_minor"] is not None:  # None: the whole amount not yet refunded
        check_amount(body["amount_minor"])
    check_match(body["currency"], CURRENCY_PATTERN, "currency")


def check_payout(body: dict) -> None:
    check_exact_fields(body, {"currency"})
    check_match(body["currency"], CURRENCY_PATTERN, "currency")


def check_notices(body: dict) -> None:
    check_exact_fields(body, {"after", "limit"})
    check_int(body["after"], "after", 0, MAX_COUNTER)
    check_int(body["limit"], "limit", 1, MAX_NOTICES_PER_REQUEST)


# The signed LOG_QUERY names the one GET it authorizes (center.api.log_routes): its path and its
# canonical query ("from=3&to=9", "index=4&size=9", "" for /v1/log/sth).
LOG_QUERY_PATHS = frozenset({"/v1/log/sth", "/v1/log/consistency", "/v1/log/inclusion"})
LOG_QUERY_PATTERN = re.compile(r"(?:[a-z]{1,16}=[0-9]{1,19}(?:&[a-z]{1,16}=[0-9]{1,19}){0,3})?")


def check_log_query(body: dict) -> None:
    """{"path", "query"}: a read of the center's log, authorized for exactly this path and query."""
    check_exact_fields(body, {"path", "query"})
    if not isinstance(body["path"], str) or body["path"] not in LOG_QUERY_PATHS:
        raise WireError("malformed_payload", f"path must be one of {', '.join(sorted(LOG_QUERY_PATHS))}")
    check_match(body["query"], LOG_QUERY_PATTERN, "query")


def check_empty(body: dict) -> None:
    """balance, account_info: the signing key names the account; the query has no arguments."""
    check_exact_fields(body, set())


def check_notice(body: dict) -> None:
    check_exact_fields(
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
    check_int(body["notice_seq"], "notice_seq", 1, MAX_COUNTER)
    check_match(body["payment_id"], OBJECT_ID_PATTERN, "payment_id")
    check_match(body["store_id"], PARTY_ID_PATTERN, "store_id")
    check_match(body["buyer_id"], PARTY_ID_PATTERN, "buyer_id")
    check_amount(body["amount_minor"])
    check_match(body["currency"], CURRENCY_PATTERN, "currency")
    check_text(body["order_ref"], "order_ref", MAX_ORDER_REF_CHARS)
    check_int(body["paid_at_ms"], "paid_at_ms", 0, MAX_COUNTER)


def check_tree_head(body: dict) -> None:
    """A signed tree head (paywire.tree_head): the log's size and root at a time, and the head before."""
    check_exact_fields(body, {"center_id", "tree_size", "root_hash", "timestamp_ms", "prev_head_sha256"})
    check_match(body["center_id"], TREE_HEAD_CENTER_ID_PATTERN, "center_id")
    check_int(body["tree_size"], "tree_size", 0, MAX_TREE_SIZE)
    check_match(body["root_hash"], SHA256_HEX_PATTERN, "root_hash")
    check_int(body["timestamp_ms"], "timestamp_ms", 0, MAX_COUNTER)
    check_match(body["prev_head_sha256"], SHA256_HEX_PATTERN, "prev_head_sha256")


def check_console_login(body: dict) -> None:
    """{"challenge", "client_sha256"}: the approval names the client facts the operator was shown."""
    if set(body) == {"challenge"}:  # a wallet from before client facts were shown and bound
        raise WireError(
            "console_login_outdated",
            "this console login approval does not name the client it "
            "approves: update the wallet, then run `wallet console-login` again",
        )
    check_exact_fields(body, {"challenge", "client_sha256"})
    check_match(body["challenge"], CONSOLE_CHALLENGE_PATTERN, "challenge")
    check_match(body["client_sha256"], SHA256_HEX_PATTERN, "client_sha256")


def console_client_sha256(challenge: str, client_address: str, user_agent: str, created_at_ms: int) -> str:
    """The hash a console login approval binds: the challenge's client facts as the center recorded them."""
    facts = {
        "challenge": challenge,
        "client_address": client_address,
        "user_agent": user_agent,
        "created_at_ms": created_at_ms,
    }
    return hashlib.sha256(canonical_bytes(facts)).hexdigest()


def check_operator_action(body: dict) -> None:
    """{"action": one of OPERATOR_ACTION_ARGS, "args": exactly that action's arguments}."""
    check_exact_fields(body, {"action", "args"})
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
    check_exact_fields(args, {"topup_id", "member_id", "amount_minor", "currency"}, "args")
    check_match(args["topup_id"], TOPUP_ID_PATTERN, "topup_id")
    check_match(args["member_id"], PARTY_ID_PATTERN, "member_id")
    check_amount(args["amount_minor"])
    check_match(args["currency"], CURRENCY_PATTERN, "currency")


def _args_topup_id(args: dict) -> None:
    check_exact_fields(args, {"topup_id"}, "args")
    check_match(args["topup_id"], TOPUP_ID_PATTERN, "topup_id")


def _args_revoke_key(args: dict) -> None:
    check_exact_fields(args, {"kid", "reason"}, "args")
    check_match(args["kid"], KID_PATTERN, "kid")
    check_text(args["reason"], "reason", MAX_REASON_CHARS)


def _args_kid(args: dict) -> None:
    check_exact_fields(args, {"kid"}, "args")
    check_match(args["kid"], KID_PATTERN, "kid")


def _args_none(args: dict) -> None:
    check_exact_fields(args, set(), "args")


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
