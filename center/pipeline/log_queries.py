"""Reads of the center's verifiable log (tree heads, consistency and inclusion proofs), answered to
enrolled parties only: the tree size tells the payment volume.

Each GET carries a signed LOG_QUERY (center.api.log_routes reads it from the Tokenpay-Query
header) naming the one path and canonical query it authorizes. It is verified against the
signer's enrolled key, read afresh here (no cache: no counter update checks the status later),
and must be active, addressed to this center, fresh and short-lived (MAX_QUERY_LIFETIME_S).
A query changes nothing: it is not audited and uses no counter. A replay within its lifetime
returns the same kind of data the key holder was already shown, so it is only as useful as the
HTTPS channel that carried it.

The answers: sth -> {"tree_head"}; consistency -> {"from", "to", "proof"}; inclusion ->
{"index", "size", "proof", "tree_head" (the head of exactly that size)}. Sizes beyond the newest
signed head are refused (log_size_invalid): a size no head vouches for proves nothing. /sth
signs a head over the entries appended since the last one first (operator actions, payouts and
webhooks append without a head), so a member always sees everything up to now.
"""

from __future__ import annotations

import binascii
import json

from sqlalchemy import bindparam, select

from center.errors import ApiError
from center.keys.lifecycle import inactive_key_error
from center.ledger import log_tree
from center.pipeline.types import CenterContext
from center.storage.db import audit_head, keys
from paywire.envelope import Envelope, b64url_decode, b64url_encode
from paywire.errors import WireError
from paywire.log_api import CONSISTENCY_PATH, INCLUSION_PATH, MAX_QUERY_LIFETIME_S, QUERY_HEADER, STH_PATH
from paywire.messages import LOG_QUERY, check_freshness
from paywire.verify import verify_envelope

# The header holds base64url of the envelope's JSON: an ES256 or Ed25519 query is ~600 characters;
# RSA-4096 ~1,400. Far below what HTTP servers take in one header (h11: 16 KiB for all of them).
MAX_QUERY_HEADER_CHARS = 4096
MAX_TREE_SIZE = log_tree.MAX_TREE_SIZE

_KEY = select(keys.c.spki, keys.c.algorithm, keys.c.status).where(keys.c.kid == bindparam("k_kid"))
_LOG_SIZES = select(audit_head.c.seq, audit_head.c.signed_size).where(audit_head.c.id == 1)


def canonical_query(path: str, params: dict[str, int]) -> str:
    """The query string a LOG_QUERY names for these arguments, in the order the endpoint lists them."""
    names = {STH_PATH: (), CONSISTENCY_PATH: ("from", "to"), INCLUSION_PATH: ("index", "size")}[path]
    assert set(params) == set(names), f"{path} takes {names}"
    for name in names:
        assert type(params[name]) is int and 0 <= params[name] <= MAX_TREE_SIZE, name
    return "&".join(f"{name}={params[name]}" for name in names)


def query_header_value(envelope: Envelope) -> str:
    """What a client sends in the Tokenpay-Query header: base64url of the envelope's compact JSON."""
    return b64url_encode(json.dumps(envelope.to_json(), separators=(",", ":")).encode())


def read_query_header(value: str | None) -> Envelope:
    """The signed LOG_QUERY in the header, or a 401 (none) / 400 (not an envelope)."""
    if not value:
        raise ApiError(
            "log_query_required",
            f"the log is answered to enrolled parties only: send a signed log_query in the "
            f"{QUERY_HEADER} header",
            401,
        )
    if len(value) > MAX_QUERY_HEADER_CHARS:
        raise ApiError(
            "malformed_envelope", f"the {QUERY_HEADER} header is over {MAX_QUERY_HEADER_CHARS} chars"
        )
    try:
        document = json.loads(b64url_decode(value, QUERY_HEADER, MAX_QUERY_HEADER_CHARS))
        return Envelope.from_json(document)
    except WireError as error:
        raise ApiError.from_wire(error) from None
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ApiError(
            "malformed_envelope", f"the {QUERY_HEADER} header is not base64url of an envelope's JSON"
        ) from None


def check_log_query(center: CenterContext, envelope: Envelope, path: str, params: dict[str, int]) -> str:
    """Verify the query authorizes this very read; returns the signer's kid (for the rate limits).

    Order: the key (unknown: 401), the signature with its pinned algorithm (401), type, audience,
    freshness, lifetime, the key's status (403), then what the query names (403).
    """
    with center.engine.connect() as conn:
        key = conn.execute(_KEY, {"k_kid": envelope.kid}).first()
    if key is None:
        raise ApiError("unknown_key", "this key is not enrolled at this center")
    try:
        header, body = verify_envelope(envelope, spki_der=key.spki, algorithm=key.algorithm)
        if header.type != LOG_QUERY:
            raise WireError(
                "wrong_message_type", f"the log takes {LOG_QUERY!r} messages, not {header.type!r}"
            )
        if header.aud != center.center_id:
            raise WireError("wrong_audience", f"the query is addressed to {header.aud!r}, not this center")
        check_freshness(header, center.clock_ms() // 1000)
    except WireError as error:
        raise ApiError.from_wire(error) from None
    if header.exp - header.iat > MAX_QUERY_LIFETIME_S:
        raise ApiError(
            "log_query_lifetime", f"a log query may live {MAX_QUERY_LIFETIME_S} s at most: sign it again", 403
        )
    if key.status != "active":
        raise inactive_key_error(key.status)
    wanted = canonical_query(path, params)
    if body["path"] != path or body["query"] != wanted:
        raise ApiError(
            "log_query_mismatch",
            f"the signed query authorizes {body['path']}?{body['query']}, not {path}?{wanted}",
            403,
        )
    return header.kid


def latest_tree_head(center: CenterContext) -> dict:
    """The newest signed tree head, signing one first over entries appended since the last."""
    with center.engine.connect() as conn:
        sizes = conn.execute(_LOG_SIZES).one()
        current = log_tree.latest_head(conn) if sizes.signed_size == sizes.seq else None
    if current is None:  # entries wait for a head (or none was ever signed): sign under the head lock
        with center.engine.begin() as conn:
            current = log_tree.sign_pending(conn, center.signer.sign_tree_head, now_ms=center.clock_ms())
    return {"tree_head": log_tree.head_document(current)}


def consistency(center: CenterContext, from_size: int, to_size: int) -> dict:
    """The proof that the tree of `from_size` entries is a prefix of the one of `to_size`."""
    with center.engine.connect() as conn:
        _check_sizes(conn, from_size, to_size, "from", "to")  # from 0: the empty tree proves nothing
        proof = log_tree.consistency_proof(conn, from_size, to_size)
    return {"from": from_size, "to": to_size, "proof": [b64url_encode(digest) for digest in proof]}


def inclusion(center: CenterContext, index: int, size: int) -> dict:
    """The proof that entry `index` (seq - 1) is in the tree of `size` entries, and that size's head."""
    with center.engine.connect() as conn:
        _check_sizes(conn, index + 1, size, "index + 1", "size")
        head = log_tree.head_at(conn, size)
        if head is None:
            raise ApiError("log_size_invalid", f"no signed tree head has size {size}: ask at a head's size")
        proof = log_tree.inclusion_proof(conn, index, size)
    return {
        "index": index,
        "size": size,
        "proof": [b64url_encode(digest) for digest in proof],
        "tree_head": log_tree.head_document(head),
    }


def _check_sizes(conn, low: int, high: int, low_name: str, high_name: str) -> None:
    signed = log_tree.signed_size(conn)
    if not 1 <= low <= high <= signed:
        raise ApiError(
            "log_size_invalid",
            f"need 1 <= {low_name} ({low}) <= {high_name} ({high}) <= the newest signed tree head's "
            f"size ({signed}): GET {STH_PATH} first",
        )
