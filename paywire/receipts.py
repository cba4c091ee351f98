"""Receipts: the center's answer to an accepted signed request, and signed refusals.

A receipt is an inclusion proof (`build_log_receipt`): the request's audit log entry (the
fields not already in the request: seq, time, action), the Merkle inclusion proof of that
entry's leaf, and the signed tree head the proof leads to:

    {"format": "tokenpay-log-receipt", "v": 1,
     "entry": {"seq", "created_at_ms", "kid", "alg", "msg_type", "msg_id", "action"},
     "proof": [b64url hashes], "tree_head": <tree head envelope JSON>}

The wallet checks it with `check_receipt` against the center key it pinned, before recording
anything: the leaf is rebuilt from the wallet's own request bytes and signature, so a receipt
cannot be replayed onto another request, and the one signature (on the head) is shared by every
receipt of a commit group. Receipts issued before the log became a tree are signed RECEIPT
envelopes (`build_receipt_payload`) naming the request by key id, message id and the SHA-256
of its bytes; `check_receipt` still verifies them.

A refusal is signed the same way (`build_refusal_payload`, `check_refusal`): a
receipt whose result is {"action": "refused", "code", "message", "status"}. The
wallet believes a refusal only when it verifies and names its exact request;
`check_receipt` never takes a refusal for an acceptance, nor the reverse.
"""

from __future__ import annotations

import base64
import hashlib
import re

from paywire import merkle
from paywire.canonical import MAX_PAYLOAD_BYTES, canonical_bytes
from paywire.envelope import ENVELOPE_FIELDS, Envelope, b64url_encode
from paywire.errors import WireError
from paywire.fields import KID_PATTERN, MAX_COUNTER, check_exact_fields, check_int, check_match
from paywire.log_entry import entry_fields, entry_leaf_hash
from paywire.messages import (
    MSG_ID_PATTERN,
    RECEIPT,
    REQUEST_TYPES,
    Header,
    build_payload,
    new_message_id,
    parse_payload,
)
from paywire.tree_head import check_tree_head
from paywire.verify import verify_envelope

RECEIPT_LIFETIME_S = 30 * 24 * 3600
LOG_RECEIPT_FORMAT = "tokenpay-log-receipt"
LOG_RECEIPT_VERSION = 1
LOG_RECEIPT_FIELDS = frozenset({"format", "v", "entry", "proof", "tree_head"})
# 32 bytes are 43 base64url characters; the last carries 2 padding bits, which must be zero.
_PROOF_HASH_PATTERN = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
LOG_ENTRY_FIELDS = frozenset({"seq", "created_at_ms", "kid", "alg", "msg_type", "msg_id", "action"})
REFUSED = "refused"  # the result action of a signed refusal
MAX_REFUSAL_MESSAGE_CHARS = 500


def request_digest(request: Envelope) -> str:
    return hashlib.sha256(request.payload).hexdigest()


def build_receipt_payload(
    *, center_kid: str, request_header: Header, request: Envelope, result: dict, ctr: int, now_s: int
) -> dict:
    body = {
        "for_kid": request_header.kid,
        "for_msg_id": request_header.msg_id,
        "for_type": request_header.type,
        "request_sha256": request_digest(request),
        "result": result,
    }
    return build_payload(
        RECEIPT,
        aud=request_header.kid,
        kid=center_kid,
        msg_id=new_message_id(),
        ctr=ctr,
        body=body,
        now_s=now_s,
        lifetime_s=RECEIPT_LIFETIME_S,
    )


def build_refusal_payload(
    *,
    center_kid: str,
    request_header: Header,
    request: Envelope,
    code: str,
    message: str,
    status: int,
    now_s: int,
) -> dict:
    """The center's signed statement that it refused these exact request bytes, for good."""
    result = {
        "action": REFUSED,
        "code": code,
        "message": message[:MAX_REFUSAL_MESSAGE_CHARS],
        "status": status,
    }
    return build_receipt_payload(
        center_kid=center_kid,
        request_header=request_header,
        request=request,
        result=result,
        ctr=request_header.ctr,
        now_s=now_s,
    )


def build_log_receipt(
    *,
    seq: int,
    created_at_ms: int,
    kid: str,
    alg: str,
    msg_type: str,
    msg_id: str,
    action: dict,
    proof: list[bytes],
    tree_head: dict,
) -> dict:
    """A receipt for the entry `seq` (leaf seq - 1): its fields, its inclusion proof at the tree
    head's size, and that signed head (its envelope JSON)."""
    assert 1 <= seq <= merkle.MAX_TREE_SIZE and len(proof) <= merkle.MAX_PROOF_HASHES
    return {
        "format": LOG_RECEIPT_FORMAT,
        "v": LOG_RECEIPT_VERSION,
        "entry": {
            "seq": seq,
            "created_at_ms": created_at_ms,
            "kid": kid,
            "alg": alg,
            "msg_type": msg_type,
            "msg_id": msg_id,
            "action": action,
        },
        "proof": [b64url_encode(item) for item in proof],
        "tree_head": tree_head,
    }


def check_receipt(
    receipt: dict | Envelope,
    *,
    center_spki: bytes,
    center_alg: str,
    request: Envelope,
    center_id: str | None = None,
) -> dict:
    """Verify that `receipt` answers `request` with an acceptance; return
    {"for_kid", "for_msg_id", "for_type", "result", "log"}.

    A log receipt: the leaf rebuilt from the request's own bytes and signature and the receipt's
    entry fields is in the tree whose head the center signed ("log": seq, index, tree_size,
    root_hash hex, tree_head). An old signed receipt (an Envelope or its JSON): the signature and
    the request digest, "log" None. A refusal is never taken for an acceptance.
    """
    if isinstance(receipt, dict) and set(receipt) == ENVELOPE_FIELDS:
        receipt = Envelope.from_json(receipt)
    if isinstance(receipt, Envelope):
        body = _check_answer(
            receipt, "receipt", center_spki=center_spki, center_alg=center_alg, request=request
        )
        if body["result"].get("action") == REFUSED:
            raise WireError("receipt_mismatch", "the center's answer is a refusal, not a receipt")
        return {**body, "log": None}
    index, leaf, entry, proof = _log_leaf(receipt, request)
    head = check_tree_head(
        receipt["tree_head"], center_spki=center_spki, center_alg=center_alg, center_id=center_id
    )
    merkle.verify_inclusion(leaf, index, head.tree_size, proof, head.root_hash)
    return {
        "for_kid": entry["kid"],
        "for_msg_id": entry["msg_id"],
        "for_type": entry["msg_type"],
        "result": entry["action"],
        "log": {
            "seq": entry["seq"],
            "index": index,
            "tree_size": head.tree_size,
            "root_hash": head.root_hash.hex(),
            "tree_head": head.document,
        },
    }


def receipt_leaf(receipt: dict, request: Envelope) -> tuple[int, bytes]:
    """(leaf index, leaf hash) of a log receipt's entry, rebuilt from `request`: what a later
    inclusion check against a newer tree head needs. Checks the receipt's shape, not its proof."""
    index, leaf, _entry, _proof = _log_leaf(receipt, request)
    return index, leaf


def proof_hash(text: object) -> bytes:
    """One proof hash: exactly 43 base64url characters, the last with no stray bits (one spelling)."""
    if not isinstance(text, str) or not _PROOF_HASH_PATTERN.fullmatch(text):
        raise WireError("log_proof_invalid", "each proof hash must be 32 bytes in canonical base64url")
    return base64.urlsafe_b64decode(text + "=")


def _log_leaf(receipt: object, request: Envelope) -> tuple[int, bytes, dict, list[bytes]]:
    """Check a log receipt's shape and that its entry names `request`; rebuild the entry's leaf hash."""
    if not isinstance(receipt, dict):
        raise WireError("receipt_mismatch", "a receipt must be an object")
    check_exact_fields(receipt, LOG_RECEIPT_FIELDS, "receipt")
    version = receipt["v"]
    if receipt["format"] != LOG_RECEIPT_FORMAT or type(version) is not int or version != LOG_RECEIPT_VERSION:
        raise WireError("receipt_mismatch", f"receipt is not a {LOG_RECEIPT_FORMAT} v{LOG_RECEIPT_VERSION}")
    entry = receipt["entry"]
    if not isinstance(entry, dict):
        raise WireError("receipt_mismatch", "receipt entry must be an object")
    check_exact_fields(entry, LOG_ENTRY_FIELDS, "receipt entry")
    seq = check_int(entry["seq"], "seq", 1, merkle.MAX_TREE_SIZE)
    check_int(entry["created_at_ms"], "created_at_ms", 0, MAX_COUNTER)
    check_match(entry["kid"], KID_PATTERN, "kid")
    check_match(entry["msg_id"], MSG_ID_PATTERN, "msg_id")
    action = entry["action"]
    if not isinstance(action, dict) or len(canonical_bytes({"action": action})) > MAX_PAYLOAD_BYTES:
        raise WireError(
            "receipt_mismatch", f"receipt action must be an object of at most {MAX_PAYLOAD_BYTES} bytes"
        )
    if action.get("action") == REFUSED:
        raise WireError("receipt_mismatch", "the center's answer is a refusal, not a receipt")
    header, _body = parse_payload(request.payload)
    if (
        entry["kid"] != request.kid
        or entry["alg"] != request.alg
        or entry["msg_type"] != header.type
        or entry["msg_id"] != header.msg_id
        or header.type not in REQUEST_TYPES
    ):
        raise WireError("receipt_mismatch", "the receipt answers a different request")
    proof = receipt["proof"]
    if not isinstance(proof, list) or len(proof) > merkle.MAX_PROOF_HASHES:
        raise WireError("log_proof_invalid", f"a proof is a list of at most {merkle.MAX_PROOF_HASHES} hashes")
    hashes = [proof_hash(item) for item in proof]
    row = {**entry, "payload": request.payload, "signature": request.sig}
    return seq - 1, entry_leaf_hash(entry_fields(row, action)), entry, hashes


def check_refusal(refusal: Envelope, *, center_spki: bytes, center_alg: str, request: Envelope) -> dict:
    """Verify a signed refusal of `request` (signature, this key, this message, these bytes); return
    {"code", "message", "status"}."""
    result = _check_answer(
        refusal, "refusal", center_spki=center_spki, center_alg=center_alg, request=request
    )["result"]
    if (
        result.get("action") != REFUSED
        or not isinstance(result.get("code"), str)
        or not isinstance(result.get("message"), str)
        or type(result.get("status")) is not int
    ):
        raise WireError("receipt_mismatch", "the center's answer is not a refusal")
    return {"code": result["code"], "message": result["message"], "status": result["status"]}


def _check_answer(
    answer: Envelope, what: str, *, center_spki: bytes, center_alg: str, request: Envelope
) -> dict:
    """The checks every signed answer passes: the center's key, a receipt-type document, addressed to
    the request's key and naming these exact request bytes."""
    header, body = verify_envelope(answer, spki_der=center_spki, algorithm=center_alg)
    if header.type != RECEIPT:
        raise WireError("wrong_message_type", f"the center's answer is not a {what}")
    if header.aud != request.kid or body["for_kid"] != request.kid:
        raise WireError("wrong_audience", f"the {what} is addressed to another key")
    if body["request_sha256"] != request_digest(request):
        raise WireError("receipt_mismatch", f"the {what} answers a different request")
    return body
