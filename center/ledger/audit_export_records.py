"""The records of an audit export (center.ledger.audit_export), checked one line at a time.

What a record check proves is described in center.ledger.audit_export_verify (the entry point).
The state a check carries from line to line (center.ledger.audit_export_state) is explicit so
that the same checks run over one part of a file in a helper process
(center.ledger.audit_export_chunks) and resume from where such a part left off. Entries: chain
link and content hash, their member's signature over the recorded bytes, the signed header naming
the entry, rotation proofs; each entry's leaf hash is kept for the tree heads (format 3), which are
checked once every entry is in (finish).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator

from center.ledger.audit import UNSIGNED_ALGS
from center.ledger.audit_export import FORMAT_NAME, READABLE_VERSIONS
from center.ledger.audit_export_state import Bad, Chain, Header, Key, Report, parse_strict
from center.ledger.audit_tree_check import CenterKey, check_heads, levels_from_leaves
from paywire import merkle
from paywire.algorithms import (
    ALGORITHMS,
    MAX_SIGNATURE_BYTES,
    MAX_SPKI_BYTES,
    key_id,
    load_public_key,
    verify_signature,
)
from paywire.center_cert import read_center_certificate
from paywire.envelope import Envelope, b64url_decode
from paywire.errors import WireError
from paywire.log_entry import entry_bytes
from paywire.messages import ENROLL, ROTATE, parse_payload
from paywire.verify import verify_key_proof

MAX_ENTRY_PAYLOAD_BYTES = 1024 * 1024
KEY_CACHE_SIZE = 4096

HEX64 = re.compile(r"[0-9a-f]{64}")
HEADER_FIELDS = frozenset(
    {"format", "format_version", "center_id", "center_cert_pem", "exported_at_ms", "head"}
)
RECORD_KINDS = {2: frozenset({"key", "entry"}), 3: frozenset({"key", "entry", "tree_head"})}
KEY_FIELDS = frozenset({"kid", "algorithm", "spki", "party_id", "status"})
ENTRY_FIELDS = frozenset(
    {
        "seq",
        "created_at_ms",
        "kid",
        "alg",
        "msg_type",
        "msg_id",
        "payload",
        "signature",
        "action",
        "prev_hash",
        "entry_hash",
    }
)
# What an entry's hash covers (paywire.log_entry.entry_fields; test_export_fields_are_the_hashed_fields).
HASHED_FIELDS = ("seq", "created_at_ms", "kid", "alg", "msg_type", "msg_id", "payload", "signature", "action")
# What bad input raises on its way through json, base64, key loading and the
# payload parser (RecursionError: deeply nested JSON).
MALFORMED = (ValueError, KeyError, TypeError, IndexError, WireError, RecursionError)


def verify_lines(lines: Iterator, header: Header, chain: Chain, report: Report) -> None:
    """Check the lines from where `lines` stands to the end, one at a time (also: resuming a part)."""
    try:
        for record in lines:
            verify_record(record, lines.number, header, chain, report)
    except MALFORMED as error:
        # Once entries have begun (and until the tree heads), the problem is placed at the entry
        # expected next.
        if chain.in_heads:
            raise Bad(
                None, f"line {lines.number} (among the tree heads) is malformed: {describe(error)}"
            ) from None
        if chain.in_entries:
            raise Bad(
                chain.expected_seq,
                f"entry {chain.expected_seq} (line {lines.number}) is malformed: {describe(error)}",
            ) from None
        raise Bad(None, f"line {lines.number} is malformed: {describe(error)}") from None


def parse_header(record: object) -> Header:
    if (
        not isinstance(record, dict)
        or record.get("format") != FORMAT_NAME
        or record.get("format_version") not in READABLE_VERSIONS
        or type(record["format_version"]) is not int
    ):
        raise ValueError("wrong format name or version")
    if set(record) != HEADER_FIELDS:
        raise ValueError(f"the header must have exactly {sorted(HEADER_FIELDS)}")
    center_id, cert_pem, head = record["center_id"], record["center_cert_pem"], record["head"]
    if not isinstance(center_id, str) or not isinstance(cert_pem, str):
        raise ValueError("center_id and center_cert_pem must be text")
    identity = read_center_certificate(cert_pem.encode("utf-8"))
    if identity.center_id != center_id:
        raise ValueError(f"the certificate is for {identity.center_id!r}, the export says {center_id!r}")
    if (
        not isinstance(head, dict)
        or set(head) != {"seq", "entry_hash"}
        or not _is_int(head["seq"], 0)
        or not isinstance(head["entry_hash"], str)
        or not HEX64.fullmatch(head["entry_hash"])
    ):
        raise ValueError("head must be {seq: integer >= 0, entry_hash: 64 hex digits}")
    return Header(
        center_id=center_id,
        head_seq=head["seq"],
        head_hash=head["entry_hash"],
        version=record["format_version"],
        center_key=CenterKey(center_id=center_id, spki=identity.receipt_spki, alg=identity.receipt_alg),
    )


def verify_record(record: object, number: int, header: Header, chain: Chain, report: Report) -> None:
    kinds = RECORD_KINDS[header.version]
    if not isinstance(record, dict) or len(record) != 1 or not set(record) <= kinds:
        raise ValueError(
            'a line after the header must be {"key": {...}} or {"entry": {...}}'
            + (' or {"tree_head": {...}}' if "tree_head" in kinds else "")
        )
    if "tree_head" in record:
        # Kept for finish(): a head's root needs every entry up to its size.
        chain.in_heads = True
        chain.heads.append((number, record["tree_head"]))
    elif "key" in record:
        # Keys first, so every signature can be checked as its entry goes by.
        if chain.in_entries:
            raise Bad(
                chain.expected_seq,
                f"line {number} is a key after the first entry; all keys must come before the entries",
            )
        _add_key(header.keys, record["key"])
    else:
        if chain.in_heads:
            raise Bad(
                chain.expected_seq,
                f"line {number} is an entry after a tree head; all entries must come before the tree heads",
            )
        chain.in_entries = True
        _verify_entry(record["entry"], chain, header, report)


def _add_key(found: dict[str, Key], record: object) -> None:
    kid, key = _parse_key(record)
    if kid in found:
        raise Bad(None, f"key {kid} is listed twice")
    found[kid] = key


def _parse_key(record: object) -> tuple[str, Key]:
    if not isinstance(record, dict) or set(record) != KEY_FIELDS:
        raise Bad(None, f"every key must have exactly {sorted(KEY_FIELDS)}")
    kid = record["kid"]
    try:
        spki = b64url_decode(record["spki"], "spki", MAX_SPKI_BYTES)
        load_public_key(spki, record["algorithm"])  # the key must fit its pinned algorithm
    except WireError as error:
        raise Bad(None, f"key {kid}: {error.message}") from None
    # The kid is the hash of the key, so a substituted key cannot keep its kid.
    if kid != key_id(spki):
        raise Bad(None, f"key {kid}: kid is not the SHA-256 of its public key")
    return kid, Key(algorithm=record["algorithm"], spki=spki)


def _verify_entry(entry: object, chain: Chain, header: Header, report: Report) -> None:
    seq = _check_entry_shape(entry, chain.expected_seq or 0)
    if chain.expected_seq is None:  # the first entry of a part checked on its own
        chain.expected_seq = chain.first_seq = seq
        chain.prev_hash = chain.first_prev_hash = entry["prev_hash"]
    if seq != chain.expected_seq:
        reason = (
            f"entry {chain.expected_seq} is missing (next is {seq})"
            if seq > chain.expected_seq
            else f"entry {seq} appears again or out of order after {chain.expected_seq - 1}"
        )
        raise Bad(chain.expected_seq, reason)
    if entry["prev_hash"] != chain.prev_hash:
        raise Bad(seq, "entry does not link to the one before it")
    payload = b64url_decode(entry["payload"], "payload", MAX_ENTRY_PAYLOAD_BYTES)
    signature = b64url_decode(entry["signature"], "signature", MAX_SIGNATURE_BYTES)
    # The bytes the chain and the tree both hash (center.ledger.audit.append_group), made once: the
    # fields of paywire.log_entry.entry_fields, whose base64url texts b64url_decode has just found
    # canonical, so they are taken as they are instead of being encoded again.
    encoded = entry_bytes({name: entry[name] for name in HASHED_FIELDS})
    if hashlib.sha256(bytes.fromhex(chain.prev_hash) + encoded).hexdigest() != entry["entry_hash"]:
        raise Bad(seq, "entry content changed since it was written")
    if entry["alg"] in UNSIGNED_ALGS:
        _check_local_actor(entry)
        report.unsigned_entries += 1
    else:
        _check_signed_entry(entry, payload, signature, header)
        report.signatures_checked += 1
    chain.leaves += merkle.leaf_hash(encoded)
    chain.prev_hash, chain.last_seq, chain.expected_seq = entry["entry_hash"], seq, seq + 1
    report.entries += 1


def _check_entry_shape(entry: object, expected_seq: int) -> int:
    if not isinstance(entry, dict) or entry.keys() != ENTRY_FIELDS:
        raise Bad(expected_seq, f"entry {expected_seq} must have exactly {sorted(ENTRY_FIELDS)}")
    texts = ("kid", "alg", "msg_type", "msg_id", "payload", "signature", "prev_hash", "entry_hash")
    if (
        not _is_int(entry["seq"], 1)
        or not _is_int(entry["created_at_ms"], 0)
        or not all(isinstance(entry[name], str) for name in texts)
        or not isinstance(entry["action"], dict)
    ):
        raise Bad(expected_seq, f"entry {expected_seq} has a field of the wrong type")
    return entry["seq"]


def _check_local_actor(entry: dict) -> None:
    # A member's signed entry must not pass as a local one: local actors are
    # named ("operator:<who>", "webhook:<name>"), never a key id.
    if ":" not in entry["kid"] or HEX64.fullmatch(entry["kid"]):
        raise Bad(
            entry["seq"],
            f"unsigned entry ({entry['alg']}) names {entry['kid']!r}, which is not a local actor",
        )


def _check_signed_entry(entry: dict, payload: bytes, signature: bytes, header: Header) -> None:
    seq, kid, alg = entry["seq"], entry["kid"], entry["alg"]
    if alg not in ALGORITHMS:
        raise Bad(seq, f"entry has unknown algorithm {alg!r}")
    key = header.keys.get(kid)
    if key is None:
        raise Bad(seq, f"entry is signed by key {kid}, which is not among the exported keys")
    if key.algorithm != alg:
        raise Bad(seq, f"entry says {alg} but key {kid} is pinned to {key.algorithm}")
    try:
        verify_signature(alg, _public_key(key.spki, alg), payload, signature)
    except WireError:
        raise Bad(seq, "signature does not verify over the recorded payload bytes") from None
    _check_signed_header(entry, payload, key, header.center_id)
    if entry["msg_type"] == ROTATE:
        _check_rotation_proof(entry, payload, header)


def _check_signed_header(entry: dict, payload: bytes, key: Key, center_id: str) -> None:
    # The signature is good; now the entry must say what the signer signed.
    seq = entry["seq"]
    (kid, msg_type, msg_id, aud), body = _signed_fields(payload, entry["msg_type"])
    if kid != entry["kid"]:
        raise Bad(seq, "the signed kid differs from the entry's kid")
    if msg_type != entry["msg_type"] or msg_id != entry["msg_id"]:
        raise Bad(seq, "the signed message type or id differs from the entry's")
    if aud != center_id:
        raise Bad(seq, f"the signed message is addressed to {aud!r}, not {center_id!r}")
    if msg_type == ENROLL and body["alg"] != key.algorithm:
        raise Bad(seq, "the key's pinned algorithm differs from the one signed at enrollment")


def _signed_fields(payload: bytes, msg_type: str) -> tuple[tuple, dict]:
    """(kid, type, msg_id, aud) and the body, as signed. Enrollments and rotations are parsed in full
    (their bodies are checked); for the rest only these four are compared with the entry, so the bytes
    are read as strict JSON (no repeated names: one meaning), not again through every rule the center
    applied on acceptance: half of an entry's checking time, for nothing the comparison needs."""
    if msg_type in (ENROLL, ROTATE):
        header, body = parse_payload(payload)
        return (header.kid, header.type, header.msg_id, header.aud), body
    document = parse_strict(payload)
    if not isinstance(document, dict):
        raise ValueError("the signed payload is not a JSON object")
    return tuple(document.get(name) for name in ("kid", "type", "msg_id", "aud")), document.get("body")


def _check_rotation_proof(entry: dict, payload: bytes, header: Header) -> None:
    # A rotation is signed by both keys: the old one signed the entry, the new
    # one the proof inside it, which must name the old key and be the key exported.
    seq = entry["seq"]
    _header, body = parse_payload(payload)
    try:
        proof_header, proof_body, spki = verify_key_proof(Envelope.from_json(body["new_key"]))
    except WireError as error:
        raise Bad(seq, f"the new key's proof does not verify: {error.message}") from None
    if proof_header.aud != header.center_id or proof_body["replaces"] != entry["kid"]:
        raise Bad(seq, "the new key's proof is for another center or names another key to replace")
    exported = header.keys.get(proof_header.kid)
    if exported is None or exported.spki != spki or exported.algorithm != proof_body["alg"]:
        raise Bad(
            seq, f"the new key {proof_header.kid} is not among the exported keys as its proof states it"
        )


def finish(chain: Chain, header: Header, report: Report) -> None:
    """After the last line: the chain ends at the exported head, and (format 3) every tree head
    verifies and recomputes from the entries."""
    if header.head_seq > chain.last_seq:
        raise Bad(
            chain.last_seq + 1,
            f"chain ends at {chain.last_seq} but the head says {header.head_seq}: entries removed",
        )
    if header.head_seq < chain.last_seq:
        raise Bad(header.head_seq + 1, f"entries continue past the head ({header.head_seq})")
    if header.head_hash != chain.prev_hash:
        raise Bad(chain.last_seq or None, "the last entry's hash is not the head's")
    report.tree_size = report.entries_after_newest_head = chain.last_seq
    if header.version < 3:
        return
    heads = ((f"the tree head on line {number}", document, None) for number, document in chain.heads)
    checked = check_heads(heads, levels_from_leaves(bytes(chain.leaves)), chain.last_seq, header.center_key)
    report.heads_checked = checked.count
    report.entries_after_newest_head = chain.last_seq - checked.newest_size


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _public_key(spki: bytes, algorithm: str):
    return load_public_key(spki, algorithm)


def _is_int(value: object, low: int) -> bool:
    return type(value) is int and value >= low


def describe(error: Exception) -> str:
    if isinstance(error, WireError):
        return error.message
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error) or error.__class__.__name__
