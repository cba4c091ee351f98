"""One audit log entry as bytes: what the hash chain and the Merkle tree both hash.

The entry's fields as JSON (RFC 8785), the same in the center's chain, in an audit
export and in a receipt, which carries the fields that are not in the request itself
(seq, time, action) so the wallet can rebuild these exact bytes from its own request.
"""

from __future__ import annotations

from paywire.canonical import jcs_bytes
from paywire.envelope import b64url_encode
from paywire.merkle import leaf_hash


def entry_fields(row, action: object) -> dict:
    """What an entry's hash covers, as JSON: the same fields in the chain, an export and a receipt.

    `row` is any mapping with seq, created_at_ms, kid, alg, msg_type, msg_id, payload (bytes) and
    signature (bytes); `action` the entry's action as a JSON value.
    """
    return {
        "seq": row["seq"],
        "created_at_ms": row["created_at_ms"],
        "kid": row["kid"],
        "alg": row["alg"],
        "msg_type": row["msg_type"],
        "msg_id": row["msg_id"],
        "payload": b64url_encode(bytes(row["payload"])),
        "signature": b64url_encode(bytes(row["signature"])),
        "action": action,
    }


def entry_bytes(fields: dict) -> bytes:
    return jcs_bytes(fields)


def entry_leaf_hash(fields: dict) -> bytes:
    """The entry's Merkle leaf hash: SHA-256(0x00 || its RFC 8785 bytes)."""
    return leaf_hash(jcs_bytes(fields))
