"""Signed tree heads: the center's signed statement of its audit log's size and Merkle root.

A TREE_HEAD message (paywire.messages), signed with the center's token key once per commit group:

    body {"center_id", "tree_size", "root_hash" (hex), "timestamp_ms", "prev_head_sha256"}

Each head names the one before it by the SHA-256 of its signed payload bytes (the first names
GENESIS_HEAD_SHA256), so the heads form a chain of their own. The header carries what the
header rules require and nothing a verifier must trust on its own: msg_id and ctr follow from
the tree size, aud is the center id, iat the timestamp. The expiry is never checked: a receipt's
head must verify for as long as the receipt is kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from paywire.envelope import Envelope
from paywire.errors import WireError
from paywire.merkle import HASH_BYTES
from paywire.messages import MAX_LIFETIME_S, TREE_HEAD, build_payload
from paywire.verify import verify_envelope

GENESIS_HEAD_SHA256 = "0" * 64


@dataclass(frozen=True)
class TreeHead:
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    prev_head_sha256: str
    head_sha256: str
    document: dict  # the signed envelope as JSON, as stored and as receipts carry it


def tree_head_msg_id(tree_size: int) -> str:
    return f"tree-head-{tree_size:016x}"


def build_tree_head_payload(
    *,
    center_kid: str,
    center_id: str,
    tree_size: int,
    root_hash: bytes,
    timestamp_ms: int,
    prev_head_sha256: str,
) -> dict:
    assert len(root_hash) == HASH_BYTES
    body = {
        "center_id": center_id,
        "tree_size": tree_size,
        "root_hash": root_hash.hex(),
        "timestamp_ms": timestamp_ms,
        "prev_head_sha256": prev_head_sha256,
    }
    return build_payload(
        TREE_HEAD,
        aud=center_id,
        kid=center_kid,
        msg_id=tree_head_msg_id(tree_size),
        ctr=tree_size + 1,  # ctr starts at 1; the empty tree has a head too
        body=body,
        now_s=timestamp_ms // 1000,
        lifetime_s=MAX_LIFETIME_S,  # the header needs an expiry; nobody checks it (see the docstring)
    )


def head_sha256(envelope: Envelope | dict) -> str:
    """What the next head names this one by: SHA-256 (hex) of the signed payload bytes."""
    if isinstance(envelope, dict):
        envelope = Envelope.from_json(envelope)
    return hashlib.sha256(envelope.payload).hexdigest()


def check_tree_head(
    document: dict | Envelope, *, center_spki: bytes, center_alg: str, center_id: str | None
) -> TreeHead:
    """Verify a tree head's signature (the pinned center key), type, body and center; never its expiry.

    center_id None skips only the comparison with the caller's center id (the head must still be
    self-consistent); pass it whenever it is known.
    """
    envelope = document if isinstance(document, Envelope) else Envelope.from_json(document)
    header, body = verify_envelope(envelope, spki_der=center_spki, algorithm=center_alg)
    if header.type != TREE_HEAD:
        raise WireError("wrong_message_type", "expected a tree head signed by the center")
    if center_id is not None and body["center_id"] != center_id:
        raise WireError("wrong_audience", "the tree head is another center's")
    tree_size = body["tree_size"]
    if (
        header.aud != body["center_id"]
        or header.msg_id != tree_head_msg_id(tree_size)
        or header.ctr != tree_size + 1
        or header.iat != body["timestamp_ms"] // 1000
    ):
        raise WireError("malformed_payload", "the tree head's header does not match its body")
    return TreeHead(
        tree_size=tree_size,
        root_hash=bytes.fromhex(body["root_hash"]),
        timestamp_ms=body["timestamp_ms"],
        prev_head_sha256=body["prev_head_sha256"],
        head_sha256=hashlib.sha256(envelope.payload).hexdigest(),
        document=envelope.to_json(),
    )
