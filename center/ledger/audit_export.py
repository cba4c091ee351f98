"""Exporting the audit trail so an outsider can check it with paywire alone.

The export is JSON Lines: UTF-8, one compact JSON object per `\\n`-terminated
line, so both sides hold one line at a time without a streaming parser:

    {"format": "tokenpay-audit-export", "format_version": 2, "center_id": ...,
     "center_cert_pem": ..., "exported_at_ms": ..., "head": {"seq", "entry_hash"}}
    {"key": {"kid", "algorithm", "spki", "party_id", "status"}}          (one per key)
    {"entry": {"seq", "created_at_ms", "kid", "alg", "msg_type", "msg_id",
               "payload", "signature", "action", "prev_hash", "entry_hash"}}  (in seq order)
    {"tree_head": <signed tree head envelope: {payload, alg, kid, sig}>}  (format 3, in size order)

(Each line above is one line in the file.) Every key line comes before the
first entry line, so signatures are checked in a single pass; the tree heads
(every one the center signed over the exported entries) come after the last
entry, so a verifier has every leaf when it recomputes their roots. Format 2
files (no tree heads) stay verifiable. Bytes (spki,
payload, signature) are base64url without padding, as on the wire. `action`
is the recorded JSON itself, not its text. The checker: center.ledger.audit_export_verify.

Everything is read from one snapshot (center.ledger.audit_snapshot): the
export is consistent and payments go on while it is written. Memory: the
exporter holds EXPORT_BATCH_ROWS rows at a time (an entry is at most ~64 KiB
of payload, so a few tens of MiB at worst).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine

from center.errors import ApiError
from center.ledger.audit_snapshot import Snapshot, read_snapshot
from hostkit.private_files import fsync_directory, link_new_name, new_file_stream
from paywire.center_cert import read_center_certificate
from paywire.envelope import b64url_encode
from paywire.log_entry import entry_fields

FORMAT_NAME = "tokenpay-audit-export"
FORMAT_VERSION = 3
READABLE_VERSIONS = frozenset({2, 3})  # what the verifier accepts
EXPORT_BATCH_ROWS = 500


def export_audit(
    engine: Engine, path: Path, *, center_id: str, cert_pem: bytes, batch_rows: int = EXPORT_BATCH_ROWS
) -> dict:
    """Write the whole audit trail and every enrolled key to `path`, atomically; never overwrite."""
    path = Path(path)
    _check_certificate(center_id, cert_pem)
    if path.exists():
        raise _file_exists(path)
    # Same directory, so the final link is atomic; owner-only, because the
    # enrollment payloads carry names, addresses and birth dates.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with read_snapshot(engine) as snapshot, new_file_stream(tmp) as out:
            head = _read_head(snapshot)
            counts = _write_document(out, snapshot, head, center_id, cert_pem, batch_rows)
        _publish_without_overwrite(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return {
        "entries": counts["entries"],
        "keys": counts["keys"],
        "tree_heads": counts["tree_heads"],
        "file": str(path),
    }


def _check_certificate(center_id: str, cert_pem: bytes) -> None:
    # An export whose certificate names another center could never verify.
    try:
        identity = read_center_certificate(cert_pem)
    except ValueError as error:
        raise ApiError("invalid_certificate", f"center certificate: {error}") from None
    if identity.center_id != center_id:
        raise ApiError(
            "invalid_certificate", f"the certificate is for {identity.center_id!r}, not {center_id!r}"
        )


def _file_exists(path: Path) -> ApiError:
    return ApiError(
        "file_exists", f"{path} already exists; choose a new file name (exports are never overwritten)"
    )


def _read_head(snapshot: Snapshot) -> dict:
    seq, entry_hash = snapshot.one("SELECT seq, entry_hash FROM audit_head WHERE id = 1")
    return {"seq": seq, "entry_hash": entry_hash}


def _write_document(
    out: BinaryIO, snapshot: Snapshot, head: dict, center_id: str, cert_pem: bytes, batch_rows: int
) -> dict:
    out.write(
        _line(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "center_id": center_id,
                "center_cert_pem": cert_pem.decode("ascii"),
                "exported_at_ms": time.time_ns() // 1_000_000,
                "head": head,
            }
        )
    )
    # Keys first: the verifier needs them all before the first signed entry. Every key ever
    # enrolled, revoked ones too: old entries are signed by them.
    key_rows = snapshot.rows(
        "SELECT kid, algorithm, spki, party_id, status FROM keys ORDER BY kid", fetch_rows=batch_rows
    )
    key_count = _write_records(out, "key", map(_key_json, key_rows))
    entry_rows = snapshot.rows(
        "SELECT seq, created_at_ms, kid, alg, msg_type, msg_id, payload, signature, action, prev_hash, "
        "entry_hash FROM audit_log WHERE seq <= ? ORDER BY seq",
        (head["seq"],),
        fetch_rows=batch_rows,
    )
    entry_count = _write_records(out, "entry", map(_entry_json, entry_rows))
    # The heads over the exported entries, each as signed (its stored JSON text, parsed).
    head_rows = snapshot.rows(
        "SELECT envelope FROM tree_heads WHERE tree_size <= ? ORDER BY tree_size",
        (head["seq"],),
        fetch_rows=batch_rows,
    )
    head_count = _write_records(out, "tree_head", (json.loads(envelope) for (envelope,) in head_rows))
    return {"keys": key_count, "entries": entry_count, "tree_heads": head_count}


def _write_records(out: BinaryIO, kind: str, items: Iterator[dict]) -> int:
    count = 0
    for item in items:
        out.write(_line({kind: item}))
        count += 1
    return count


def _line(value: object) -> bytes:
    # json.dumps escapes control characters inside strings, so the only raw
    # newline is the terminator.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text + "\n").encode("utf-8")


def _key_json(row: tuple) -> dict:
    kid, algorithm, spki, party_id, status = row
    return {
        "kid": kid,
        "algorithm": algorithm,
        "spki": b64url_encode(bytes(spki)),
        "party_id": party_id,
        "status": status,
    }


_ENTRY_NAMES = ("seq", "created_at_ms", "kid", "alg", "msg_type", "msg_id", "payload", "signature", "action")


def _entry_json(row: tuple) -> dict:
    stored = dict(zip(_ENTRY_NAMES, row[:9], strict=True))
    try:
        action = json.loads(stored["action"])
    except ValueError:
        raise ApiError(
            "audit_corrupt",
            f"audit entry {stored['seq']}: the recorded action is not JSON; run `center audit verify`",
        ) from None
    return entry_fields(stored, action) | {"prev_hash": row[9], "entry_hash": row[10]}


def _publish_without_overwrite(tmp: Path, path: Path) -> None:
    try:
        link_new_name(tmp, path)
    except FileExistsError:
        raise _file_exists(path) from None
