"""Checking an audit export (center.ledger.audit_export) with nothing but the file and paywire.

What a successful `verify_export` proves: the entries form an unbroken hash
chain (center.ledger.audit.chain_hash, reused, not re-implemented) that ends at the
exported head, and every signed entry carries a valid signature, made with the
key its kid names and that key's pinned algorithm, over its exact payload
bytes, addressed to this center (and a key rotation also carries the new
key's own valid proof naming the old key). Entries of local actions (an operator's
decision, a funding webhook) are chained but carry no member signature; they
are counted as unsigned. What it cannot prove on its own: that nothing was cut
off the end or rewritten consistently by whoever wrote the file; compare the
head hash with one obtained independently (for example at an earlier export).

Memory: the verifier holds one line (at most MAX_LINE_BYTES, read by center.ledger.json_lines)
plus the enrolled keys.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from center.ledger.audit import GENESIS_HASH, UNSIGNED_ALGS, chain_hash
from center.ledger.audit_export import FORMAT_NAME, FORMAT_VERSION
from center.ledger.json_lines import JsonLines
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
from paywire.messages import ENROLL, ROTATE, parse_payload
from paywire.verify import verify_key_proof

MAX_EXPORT_FILE_BYTES = 2 * 1024**3
# One entry, one key or the header (with the certificate), newline excluded.
# Signed payloads are at most 16 KiB, webhook evidence at most 64 KiB (the
# API's body limit); this leaves room.
MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_ENTRY_PAYLOAD_BYTES = 1024 * 1024
KEY_CACHE_SIZE = 4096

HEX64 = re.compile(r"[0-9a-f]{64}")
HEADER_FIELDS = frozenset(
    {"format", "format_version", "center_id", "center_cert_pem", "exported_at_ms", "head"}
)
RECORD_KINDS = frozenset({"key", "entry"})
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
# What bad input raises on its way through json, base64, key loading and the
# payload parser (RecursionError: deeply nested JSON).
MALFORMED = (ValueError, KeyError, TypeError, IndexError, WireError, RecursionError)


class _Bad(Exception):
    """A problem found in the export; `seq` is the first entry it concerns (None: not an entry)."""

    def __init__(self, seq: int | None, reason: str):
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


@dataclass(frozen=True)
class _Key:
    algorithm: str
    spki: bytes


@dataclass
class _Header:
    center_id: str
    head_seq: int
    head_hash: str
    keys: dict[str, _Key] = field(default_factory=dict)


@dataclass
class _Report:
    entries: int = 0
    signatures_checked: int = 0
    unsigned_entries: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    center_id: str | None = None
    head_entry_hash: str | None = None

    def to_json(self) -> dict:
        return {
            "ok": self.problem is None,
            "entries": self.entries,
            "signatures_checked": self.signatures_checked,
            "unsigned_entries": self.unsigned_entries,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "center_id": self.center_id,
            "head_entry_hash": self.head_entry_hash,
        }


@dataclass
class _Chain:
    expected_seq: int = 1
    prev_hash: str = GENESIS_HASH
    last_seq: int = 0
    in_entries: bool = False  # an entry line was seen: no more key lines


def verify_export(path: Path) -> dict:
    """Check an export with nothing but the file: chain, head, every signature. Never raises on bad input."""
    report = _Report()
    try:
        _check_file_size(Path(path))
        with open(path, "rb") as handle:
            _verify_lines(
                JsonLines(handle, max_line_bytes=MAX_LINE_BYTES, max_total_bytes=MAX_EXPORT_FILE_BYTES),
                report,
            )
    except _Bad as bad:
        report.first_bad_seq, report.problem = bad.seq, bad.reason
    except OSError as error:
        report.problem = f"cannot read {path}: {error.strerror or error}"
    except MALFORMED as error:
        # Belt and braces: whatever slipped past the checks below is still a
        # malformed file, reported, not a traceback.
        report.problem = f"malformed export: {_describe(error)}"
    return report.to_json()


def _check_file_size(path: Path) -> None:
    size_bytes = path.stat().st_size
    if size_bytes > MAX_EXPORT_FILE_BYTES:
        raise _Bad(
            None, f"file is {size_bytes} bytes; exports above {MAX_EXPORT_FILE_BYTES} bytes are refused"
        )


def _verify_lines(lines: JsonLines, report: _Report) -> None:
    header = _read_header(lines)
    report.center_id, report.head_entry_hash = header.center_id, header.head_hash
    chain = _Chain()
    try:
        for record in lines:
            _verify_record(record, lines.number, header, chain, report)
    except MALFORMED as error:
        # Once entries have begun, the problem is placed at the entry expected next.
        if chain.in_entries:
            raise _Bad(
                chain.expected_seq,
                f"entry {chain.expected_seq} (line {lines.number}) is malformed: {_describe(error)}",
            ) from None
        raise _Bad(None, f"line {lines.number} is malformed: {_describe(error)}") from None
    _check_head(chain, header)


def _read_header(lines: JsonLines) -> _Header:
    try:
        record = next(lines, None)
        if record is None:
            raise ValueError("the file is empty")
        return _parse_header(record)
    except MALFORMED as error:
        raise _Bad(
            None,
            f"line 1 is not a {FORMAT_NAME} version {FORMAT_VERSION} header (JSON Lines): {_describe(error)}",
        ) from None


def _parse_header(record: object) -> _Header:
    if (
        not isinstance(record, dict)
        or record.get("format") != FORMAT_NAME
        or record.get("format_version") != FORMAT_VERSION
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
    return _Header(center_id=center_id, head_seq=head["seq"], head_hash=head["entry_hash"])


def _verify_record(record: object, number: int, header: _Header, chain: _Chain, report: _Report) -> None:
    if not isinstance(record, dict) or len(record) != 1 or not set(record) <= RECORD_KINDS:
        raise ValueError('a line after the header must be {"key": {...}} or {"entry": {...}}')
    if "key" in record:
        # Keys first, so every signature can be checked as its entry goes by.
        if chain.in_entries:
            raise _Bad(
                chain.expected_seq,
                f"line {number} is a key after the first entry; all keys must come before the entries",
            )
        _add_key(header.keys, record["key"])
    else:
        chain.in_entries = True
        _verify_entry(record["entry"], chain, header, report)


def _add_key(found: dict[str, _Key], record: object) -> None:
    kid, key = _parse_key(record)
    if kid in found:
        raise _Bad(None, f"key {kid} is listed twice")
    found[kid] = key


def _parse_key(record: object) -> tuple[str, _Key]:
    if not isinstance(record, dict) or set(record) != KEY_FIELDS:
        raise _Bad(None, f"every key must have exactly {sorted(KEY_FIELDS)}")
    kid = record["kid"]
    try:
        spki = b64url_decode(record["spki"], "spki", MAX_SPKI_BYTES)
        load_public_key(spki, record["algorithm"])  # the key must fit its pinned algorithm
    except WireError as error:
        raise _Bad(None, f"key {kid}: {error.message}") from None
    # The kid is the hash of the key, so a substituted key cannot keep its kid.
    if kid != key_id(spki):
        raise _Bad(None, f"key {kid}: kid is not the SHA-256 of its public key")
    return kid, _Key(algorithm=record["algorithm"], spki=spki)


def _verify_entry(entry: object, chain: _Chain, header: _Header, report: _Report) -> None:
    seq = _check_entry_shape(entry, chain.expected_seq)
    if seq != chain.expected_seq:
        reason = (
            f"entry {chain.expected_seq} is missing (next is {seq})"
            if seq > chain.expected_seq
            else f"entry {seq} appears again or out of order after {chain.expected_seq - 1}"
        )
        raise _Bad(chain.expected_seq, reason)
    if entry["prev_hash"] != chain.prev_hash:
        raise _Bad(seq, "entry does not link to the one before it")
    payload = b64url_decode(entry["payload"], "payload", MAX_ENTRY_PAYLOAD_BYTES)
    signature = b64url_decode(entry["signature"], "signature", MAX_SIGNATURE_BYTES)
    if chain_hash(chain.prev_hash, _chain_row(entry, payload, signature)) != entry["entry_hash"]:
        raise _Bad(seq, "entry content changed since it was written")
    if entry["alg"] in UNSIGNED_ALGS:
        _check_local_actor(entry)
        report.unsigned_entries += 1
    else:
        _check_signed_entry(entry, payload, signature, header)
        report.signatures_checked += 1
    chain.prev_hash, chain.last_seq, chain.expected_seq = entry["entry_hash"], seq, seq + 1
    report.entries += 1


def _check_entry_shape(entry: object, expected_seq: int) -> int:
    if not isinstance(entry, dict) or set(entry) != ENTRY_FIELDS:
        raise _Bad(expected_seq, f"entry {expected_seq} must have exactly {sorted(ENTRY_FIELDS)}")
    texts = ("kid", "alg", "msg_type", "msg_id", "payload", "signature", "prev_hash", "entry_hash")
    if (
        not _is_int(entry["seq"], 1)
        or not _is_int(entry["created_at_ms"], 0)
        or not all(isinstance(entry[name], str) for name in texts)
        or not isinstance(entry["action"], dict)
    ):
        raise _Bad(expected_seq, f"entry {expected_seq} has a field of the wrong type")
    return entry["seq"]


def _chain_row(entry: dict, payload: bytes, signature: bytes) -> dict:
    # chain_hash takes the row as stored: bytes as bytes, the action as JSON text.
    return {
        **entry,
        "payload": payload,
        "signature": signature,
        "action": json.dumps(entry["action"], ensure_ascii=False, allow_nan=False),
    }


def _check_local_actor(entry: dict) -> None:
    # A member's signed entry must not pass as a local one: local actors are
    # named ("operator:<who>", "webhook:<name>"), never a key id.
    if ":" not in entry["kid"] or HEX64.fullmatch(entry["kid"]):
        raise _Bad(
            entry["seq"],
            f"unsigned entry ({entry['alg']}) names {entry['kid']!r}, which is not a local actor",
        )


def _check_signed_entry(entry: dict, payload: bytes, signature: bytes, header: _Header) -> None:
    seq, kid, alg = entry["seq"], entry["kid"], entry["alg"]
    if alg not in ALGORITHMS:
        raise _Bad(seq, f"entry has unknown algorithm {alg!r}")
    key = header.keys.get(kid)
    if key is None:
        raise _Bad(seq, f"entry is signed by key {kid}, which is not among the exported keys")
    if key.algorithm != alg:
        raise _Bad(seq, f"entry says {alg} but key {kid} is pinned to {key.algorithm}")
    try:
        verify_signature(alg, _public_key(key.spki, alg), payload, signature)
    except WireError:
        raise _Bad(seq, "signature does not verify over the recorded payload bytes") from None
    _check_signed_header(entry, payload, key, header.center_id)
    if entry["msg_type"] == ROTATE:
        _check_rotation_proof(entry, payload, header)


def _check_signed_header(entry: dict, payload: bytes, key: _Key, center_id: str) -> None:
    # The signature is good; now the entry must say what the signer signed.
    seq = entry["seq"]
    header, body = parse_payload(payload)
    if header.kid != entry["kid"]:
        raise _Bad(seq, "the signed kid differs from the entry's kid")
    if header.type != entry["msg_type"] or header.msg_id != entry["msg_id"]:
        raise _Bad(seq, "the signed message type or id differs from the entry's")
    if header.aud != center_id:
        raise _Bad(seq, f"the signed message is addressed to {header.aud!r}, not {center_id!r}")
    if header.type == ENROLL and body["alg"] != key.algorithm:
        raise _Bad(seq, "the key's pinned algorithm differs from the one signed at enrollment")


def _check_rotation_proof(entry: dict, payload: bytes, header: _Header) -> None:
    # A rotation is signed by both keys: the old one signed the entry, the new
    # one the proof inside it, which must name the old key and be the key exported.
    seq = entry["seq"]
    _header, body = parse_payload(payload)
    try:
        proof_header, proof_body, spki = verify_key_proof(Envelope.from_json(body["new_key"]))
    except WireError as error:
        raise _Bad(seq, f"the new key's proof does not verify: {error.message}") from None
    if proof_header.aud != header.center_id or proof_body["replaces"] != entry["kid"]:
        raise _Bad(seq, "the new key's proof is for another center or names another key to replace")
    exported = header.keys.get(proof_header.kid)
    if exported is None or exported.spki != spki or exported.algorithm != proof_body["alg"]:
        raise _Bad(
            seq, f"the new key {proof_header.kid} is not among the exported keys as its proof states it"
        )


def _check_head(chain: _Chain, header: _Header) -> None:
    if header.head_seq > chain.last_seq:
        raise _Bad(
            chain.last_seq + 1,
            f"chain ends at {chain.last_seq} but the head says {header.head_seq}: entries removed",
        )
    if header.head_seq < chain.last_seq:
        raise _Bad(header.head_seq + 1, f"entries continue past the head ({header.head_seq})")
    if header.head_hash != chain.prev_hash:
        raise _Bad(chain.last_seq or None, "the last entry's hash is not the head's")


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _public_key(spki: bytes, algorithm: str):
    return load_public_key(spki, algorithm)


def _is_int(value: object, low: int) -> bool:
    return type(value) is int and value >= low


def _describe(error: Exception) -> str:
    if isinstance(error, WireError):
        return error.message
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error) or error.__class__.__name__
