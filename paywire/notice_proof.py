"""A payment notice's proof that its payment is in the center's log.

A notice (center-signed, NOTICE) tells a store it was paid; on its own it is only the center's word.
Beside the notices of one fetch the center sends one signed tree head and, per notice, the buyer's
PAY entry in full (the store never saw the buyer's request bytes or signature, so it cannot rebuild
the leaf from its own copy as a wallet does for its receipts) with the entry's inclusion proof:

    "notices_log": {"tree_head": <tree head envelope JSON>,
                    "items": [{"entry": <paywire.log_entry.entry_fields>, "index": seq - 1,
                               "proof": [b64url hashes]}, ...]}       # one per notice, in order

`check_notice_log` rebuilds the leaf from the entry, checks that the entry is a PAY to this store
whose body and recorded result are the notice's payment (payee, amount, currency, order_ref,
payment id), and verifies the inclusion at the head's size; the head is checked once per fetch
(`check_notices_log`). What the store then keeps (index, leaf hash, size, root) lets `wallet audit
check` prove later that the entry is still in the log, as for receipts. Pure: no I/O.
"""

from __future__ import annotations

from paywire import merkle
from paywire.envelope import b64url_decode, b64url_encode
from paywire.errors import WireError
from paywire.fields import check_exact_fields, check_int
from paywire.log_entry import entry_leaf_hash
from paywire.messages import PAY, parse_payload
from paywire.receipts import LOG_ENTRY_FIELDS, proof_hash
from paywire.tree_head import TreeHead, check_tree_head

NOTICES_LOG_FIELDS = frozenset({"tree_head", "items"})
NOTICE_LOG_ITEM_FIELDS = frozenset({"entry", "index", "proof"})
# The full entry: the receipt's entry fields plus the request's own bytes and signature (base64url).
FULL_ENTRY_FIELDS = LOG_ENTRY_FIELDS | {"payload", "signature"}
MAX_NOTICES_LOG_ITEMS = 1000  # a fetch holds at most MAX_NOTICES_PER_REQUEST (100) notices
MAX_ENTRY_PAYLOAD_BYTES = 16 * 1024
MAX_ENTRY_SIGNATURE_BYTES = 1024


def notice_log_item(entry: dict, proof: list[bytes]) -> dict:
    """One notice's item of "notices_log": its payment's full entry (paywire.log_entry.entry_fields)
    and the entry's inclusion proof at the fetch's tree head size."""
    assert len(proof) <= merkle.MAX_PROOF_HASHES and 1 <= entry["seq"] <= merkle.MAX_TREE_SIZE
    return {"entry": entry, "index": entry["seq"] - 1, "proof": [b64url_encode(h) for h in proof]}


def check_notices_log(
    notices_log: object,
    notices: list[dict],
    *,
    center_spki: bytes,
    center_alg: str,
    center_id: str,
    store_id: str,
) -> list[dict]:
    """Verify every notice's proof (`notices`: the verified notice bodies, in order); return per
    notice {"index", "leaf_hash" (hex), "tree_size", "root_hash" (hex)}. Raises WireError
    ("log_proof_invalid", or the tree head's own code) at the first that does not hold."""
    if not isinstance(notices_log, dict):
        raise WireError("log_proof_invalid", "the notices' log proofs are missing")
    check_exact_fields(notices_log, NOTICES_LOG_FIELDS, "notices_log")
    items = notices_log["items"]
    if not isinstance(items, list) or len(items) != len(notices) or len(items) > MAX_NOTICES_LOG_ITEMS:
        raise WireError("log_proof_invalid", "the notices' log proofs do not match the notices one to one")
    head = check_tree_head(
        notices_log["tree_head"], center_spki=center_spki, center_alg=center_alg, center_id=center_id
    )
    return [
        check_notice_log(item, notice, head, store_id=store_id)
        for item, notice in zip(items, notices, strict=True)
    ]


def check_notice_log(item: object, notice: dict, head: TreeHead, *, store_id: str) -> dict:
    """One notice's proof against a checked tree head (see check_notices_log)."""
    if not isinstance(item, dict):
        raise WireError("log_proof_invalid", "a notice's log proof must be an object")
    check_exact_fields(item, NOTICE_LOG_ITEM_FIELDS, "notice log proof")
    entry = item["entry"]
    if not isinstance(entry, dict):
        raise WireError("log_proof_invalid", "a notice's log entry must be an object")
    check_exact_fields(entry, FULL_ENTRY_FIELDS, "notice log entry")
    seq = check_int(entry["seq"], "seq", 1, merkle.MAX_TREE_SIZE)
    index = check_int(item["index"], "index", 0, merkle.MAX_TREE_SIZE - 1)
    if index != seq - 1:
        raise WireError("log_proof_invalid", "a notice's leaf index and its entry's seq disagree")
    _check_paid_entry(entry, notice, store_id)
    proof = item["proof"]
    if not isinstance(proof, list) or len(proof) > merkle.MAX_PROOF_HASHES:
        raise WireError("log_proof_invalid", f"a proof is a list of at most {merkle.MAX_PROOF_HASHES} hashes")
    leaf = entry_leaf_hash(entry)  # the entry as given: the leaf is over exactly these fields
    merkle.verify_inclusion(leaf, index, head.tree_size, [proof_hash(h) for h in proof], head.root_hash)
    return {
        "index": index,
        "leaf_hash": leaf.hex(),
        "tree_size": head.tree_size,
        "root_hash": head.root_hash.hex(),
    }


def _check_paid_entry(entry: dict, notice: dict, store_id: str) -> None:
    """The entry is the buyer's PAY of this notice's payment to this store, accepted as it."""
    try:
        payload = b64url_decode(entry["payload"], "payload", MAX_ENTRY_PAYLOAD_BYTES)
        b64url_decode(entry["signature"], "signature", MAX_ENTRY_SIGNATURE_BYTES)
        header, body = parse_payload(payload)
    except WireError as error:
        raise WireError("log_proof_invalid", f"a notice's log entry is malformed: {error.message}") from None
    action = entry["action"]
    if (
        header.type != PAY
        or entry["msg_type"] != PAY
        or entry["msg_id"] != header.msg_id
        or entry["kid"] != header.kid
        or not isinstance(action, dict)
    ):
        raise WireError("log_proof_invalid", "a notice's log entry is not a payment request")
    same = {
        "payee": (body["payee"], store_id),
        "amount": (body["amount_minor"], notice["amount_minor"]),
        "currency": (body["currency"], notice["currency"]),
        "order_ref": (body["order_ref"], notice["order_ref"]),
        "store": (notice["store_id"], store_id),
        "action": (action.get("action"), "paid"),
        "payment_id": (action.get("payment_id"), notice["payment_id"]),
        "paid store": (action.get("store_id"), store_id),
        "paid amount": (action.get("amount_minor"), notice["amount_minor"]),
    }
    differing = [name for name, (got, want) in same.items() if type(got) is not type(want) or got != want]
    if differing:
        raise WireError(
            "log_proof_invalid",
            f"a notice's log entry is another payment than the notice ({', '.join(differing)} differ)",
        )
