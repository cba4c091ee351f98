"""Exporting the audit trail so an outsider can check it with paywire alone.

The export is JSON Lines: UTF-8, one compact JSON object per `\\n`-terminated
line, so both sides hold one line at a time without a streaming parser:

    {"format": "tokenpay-audit-export", "format_version": 2, "center_id": ...,
     "center_cert_pem": ..., "exported_at_ms": ..., "head": {"seq", "entry_hash"}}
    {"key": {"kid", "algorithm", "spki", "party_id", "status"}}          (one per key)
    {"entry": {"seq", "created_at_ms", "kid", "alg", "msg_type", "msg_id",
               "payload", "signature", "action", "prev_hash", "entry_hash"}}  (in seq order)

(Each line above is one line in the file.) Every key line comes before the
first entry line, so signatures are checked in a single pass. Bytes (spki,
payload, signature) are base64url without padding, as on the wire. `action`
is the recorded JSON itself, not its text. The checker: center.ledger.audit_export_verify.

Memory: the exporter holds EXPORT_BATCH_ROWS entries at a time (an entry is at
most ~64 KiB of payload, so a few tens of MiB at worst).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine, select

from center.errors import ApiError
from center.ledger.audit import entry_fields
from center.storage.db import audit_head, audit_log, keys
from hostkit.private_files import fsync_directory, link_new_name, new_file_stream
from paywire.center_cert import read_center_certificate
from paywire.envelope import b64url_encode

FORMAT_NAME = "tokenpay-audit-export"
FORMAT_VERSION = 2
EXPORT_BATCH_ROWS = 500


def export_audit(
    engine: Engine, path: Path, *, center_id: str, cert_pem: bytes, batch_rows: int = EXPORT_BATCH_ROWS
) -> dict:
    """Write the whole audit trail and every enrolled key to `path`, atomically; never overwrite."""
    path = Path(path)
    _check_certificate(center_id, cert_pem)
    if path.exists():
        raise _file_exists(path)
    head = _read_head(engine)
    # Same directory, so the final link is atomic; owner-only, because the
    # enrollment payloads carry names, addresses and birth dates.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with new_file_stream(tmp) as out:
            counts = _write_document(out, engine, head, center_id, cert_pem, batch_rows)
        _publish_without_overwrite(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return {"entries": counts["entries"], "keys": counts["keys"], "file": str(path)}


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


def _read_head(engine: Engine) -> dict:
    with engine.connect() as conn:
        head = conn.execute(
            select(audit_head.c.seq, audit_head.c.entry_hash).where(audit_head.c.id == 1)
        ).one()
    return {"seq": head.seq, "entry_hash": head.entry_hash}


def _write_document(
    out: BinaryIO, engine: Engine, head: dict, center_id: str, cert_pem: bytes, batch_rows: int
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
    # Keys first: the verifier needs them all before the first signed entry.
    key_count = _write_records(out, "key", map(_key_json, _key_rows(engine, batch_rows)))
    entry_count = _write_records(out, "entry", map(_entry_json, _entry_rows(engine, head["seq"], batch_rows)))
    return {"keys": key_count, "entries": entry_count}


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


def _key_rows(engine: Engine, batch_rows: int) -> Iterator:
    # Every key ever enrolled, revoked ones too: old entries are signed by them.
    after = ""
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(keys.c.kid, keys.c.algorithm, keys.c.spki, keys.c.party_id, keys.c.status)
                .where(keys.c.kid > after)
                .order_by(keys.c.kid)
                .limit(batch_rows)
            ).all()
        yield from rows
        if len(rows) < batch_rows:
            return
        after = rows[-1].kid


def _entry_rows(engine: Engine, head_seq: int, batch_rows: int) -> Iterator:
    # One short transaction per batch: on SQLite every transaction takes the
    # write lock (BEGIN IMMEDIATE), and a long export must not stall payments.
    # Entries up to the head read first are immutable, so batches agree.
    after = 0
    while after < head_seq:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    select(audit_log)
                    .where(audit_log.c.seq > after, audit_log.c.seq <= head_seq)
                    .order_by(audit_log.c.seq)
                    .limit(batch_rows)
                )
                .mappings()
                .all()
            )
        if not rows:
            return
        yield from rows
        after = rows[-1]["seq"]


def _key_json(row) -> dict:
    return {
        "kid": row.kid,
        "algorithm": row.algorithm,
        "spki": b64url_encode(bytes(row.spki)),
        "party_id": row.party_id,
        "status": row.status,
    }


def _entry_json(row) -> dict:
    try:
        action = json.loads(row["action"])
    except ValueError:
        raise ApiError(
            "audit_corrupt",
            f"audit entry {row['seq']}: the recorded action is not JSON; run `center audit verify`",
        ) from None
    return entry_fields(row, action) | {"prev_hash": row["prev_hash"], "entry_hash": row["entry_hash"]}


def _publish_without_overwrite(tmp: Path, path: Path) -> None:
    try:
        link_new_name(tmp, path)
    except FileExistsError:
        raise _file_exists(path) from None
