"""Paying stores out: ISO 20022 pain.001 files for the bank, then settlement.

A payout's life: a store's signed claim moves its whole balance to
`payouts:pending` and inserts a 'pending' payouts row (center.pipeline.money.payout).
`export_payouts` puts up to MAX_PAYOUTS_PER_FILE pending payouts into one batch,
writes them as a pain.001.001.09 CustomerCreditTransferInitiation file and
marks them 'exported'; the operator hands the file to the bank. When the bank
has paid, `settle_payouts` marks them 'settled' and moves their money from
`payouts:pending` to `payouts:settled`, where it has left the system.

Crash safety of an export. The dangerous failure is a file the bank could
receive for payouts the database still calls 'pending': the next export would
put them into a second file and the bank would pay them twice. The opposite
failure, 'exported' rows whose file is gone, only delays payment and is
repaired by re-creating the file. So, in one transaction:

  1. lock the pending rows (FOR UPDATE) and build the XML in memory;
  2. mark them 'exported' with a conditional update (status = 'pending');
  3. write the bytes to a hidden temporary file beside PATH and fsync it, so a
     full disk or a missing directory rolls everything back;
  4. append the audit entry (it holds the file's SHA-256) and commit;
  5. only then link the temporary file to PATH (never overwriting) and fsync
     the directory.

Dying before 4 commits leaves the payouts pending and at most a hidden
`.PATH.B-....tmp` that names a batch the database never had: delete it, never
send it. Dying after the commit but before 5 leaves the batch 'exported'
without its file: `export_payouts(..., batch_id=B)` re-creates it. The file is a
pure function of the batch's rows (the creation time is the rows'
exported_at_ms), so the re-created file is byte-identical to the lost one as
long as store names and the settlement account have not changed; the summary
says whether it is (`identical_to_original`). A settled batch is never
re-exported: the bank has already paid it. The document itself: center.ledger.pain001.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, select, update

from center.errors import ApiError
from center.ledger import audit
from center.ledger import book as ledger
from center.ledger.pain001 import (
    MAX_NAME_CHARS,
    Batch,
    PayoutLine,
    build_pain001,
    check_currency,
    checked_debtor_account,
    valid_account,
    xml_text,
)
from center.storage.db import audit_log, parties, payouts
from hostkit.private_files import fsync_directory, link_new_name, write_new_file

# One file, one batch: at most this many payouts. More stay pending for the
# next file. Keeps the transaction, the file and the audit entry bounded.
MAX_PAYOUTS_PER_FILE = 10_000
MAX_SETTLE_PER_RUN = 10_000
# Ids per UPDATE ... WHERE id IN (...): far below SQLite's 32,766 host parameters.
UPDATE_CHUNK_ROWS = 500
# Who the audit chain names for an export or a settlement: the payouts run, not a member key.
OPERATOR_KID = "operator:payouts"


# --- export ---------------------------------------------------------------------


def export_payouts(
    engine: Engine,
    path: Path,
    *,
    center_id: str,
    currency: str,
    now_ms: int,
    batch_id: str | None = None,
    settlement_account: str | None = None,
    max_payouts: int = MAX_PAYOUTS_PER_FILE,
) -> dict:
    """Write the pending payouts (or, with batch_id, an exported batch again) to a pain.001 file at `path`.

    Returns {"batch_id", "count", "total_minor", "currency", "file", ...}; with
    nothing pending, count 0 and no file. Refuses (ApiError 'file_exists') to
    overwrite anything at `path`.
    """
    path = Path(path)
    if not 1 <= max_payouts <= MAX_PAYOUTS_PER_FILE:
        raise ValueError(f"max_payouts must be 1..{MAX_PAYOUTS_PER_FILE}")
    check_currency(currency)
    debtor_account = checked_debtor_account(settlement_account or center_id)
    _refuse_existing(path)

    def file_for(batch: Batch) -> bytes:
        return build_pain001(batch, initiator=center_id, currency=currency, debtor_account=debtor_account)

    if batch_id is not None:
        return _commit_then_publish(
            engine, path, lambda conn: _reexport_step(conn, batch_id, file_for, path, currency), now_ms
        )
    return _commit_then_publish(
        engine, path, lambda conn: _export_step(conn, file_for, path, currency, now_ms, max_payouts), now_ms
    )


# A step runs inside the transaction and returns (summary, file bytes or None, audit msg_type).
Step = Callable[[Connection], tuple[dict, bytes | None, str]]


def _commit_then_publish(engine: Engine, path: Path, step: Step, now_ms: int) -> dict:
    tmp = None
    try:
        with engine.begin() as conn:
            summary, document, msg_type = step(conn)
            if document is None:
                return summary
            tmp = _write_tmp(path, document, summary["batch_id"])
            _audit(conn, msg_type, summary["batch_id"], summary, now_ms)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)  # the batch was rolled back: no file may name it
        raise
    _publish(tmp, path, summary["batch_id"])
    return summary


def _export_step(conn: Connection, file_for, path: Path, currency: str, now_ms: int, max_payouts: int):
    rows = _lock_pending(conn, max_payouts + 1)
    more_pending = len(rows) > max_payouts
    lines, held = _split_exportable(rows[:max_payouts])
    extras = {"more_pending": more_pending, "held_payout_ids": held}
    if not lines:
        empty = {
            "batch_id": None,
            "count": 0,
            "total_minor": 0,
            "currency": currency,
            "file": None,
            "payout_ids": [],
        }
        return empty | extras, None, ""
    batch = Batch(ledger.new_id(ledger.PAYOUT_BATCH_ID_PREFIX), now_ms, tuple(lines))
    document = file_for(batch)
    _mark_exported(conn, batch)
    summary = _batch_summary("payouts_exported", batch, currency, path, document)
    return summary | extras, document, "payouts_export"


def _reexport_step(conn: Connection, batch_id: str, file_for, path: Path, currency: str):
    batch = _load_exported_batch(conn, batch_id)
    document = file_for(batch)
    summary = _batch_summary("payouts_reexported", batch, currency, path, document)
    summary["identical_to_original"] = _original_sha256(conn, batch_id) == summary["file_sha256"]
    return summary, document, "payouts_reexport"


def _lock_pending(conn: Connection, limit: int) -> list:
    # Locked in (created_at_ms, id) order, the same order settle uses: two runs cannot deadlock.
    query = (
        select(
            payouts.c.id,
            payouts.c.amount_minor,
            payouts.c.bank_account,
            payouts.c.store_id,
            parties.c.name.label("store_name"),
        )
        .join(parties, parties.c.id == payouts.c.store_id)
        .where(payouts.c.status == "pending")
        .order_by(payouts.c.created_at_ms, payouts.c.id)
        .limit(limit)
        .with_for_update(of=payouts)
    )
    return conn.execute(query).all()


def _split_exportable(rows) -> tuple[list[PayoutLine], list[str]]:
    """Payouts whose bank account cannot go into a valid file are held back (they stay pending).

    Truncating or cleaning an account number would send money elsewhere, and
    refusing the whole file would let one store block every other store.
    """
    lines, held = [], []
    for row in rows:
        if valid_account(row.bank_account):
            name = xml_text(row.store_name, MAX_NAME_CHARS) or row.store_id
            lines.append(PayoutLine(row.id, name, row.bank_account, row.amount_minor))
        else:
            held.append(row.id)
    return lines, held


def _mark_exported(conn: Connection, batch: Batch) -> None:
    ids = [line.payout_id for line in batch.lines]
    for start in range(0, len(ids), UPDATE_CHUNK_ROWS):
        chunk = ids[start : start + UPDATE_CHUNK_ROWS]
        # Conditional: a row that is no longer pending must not be exported twice.
        result = conn.execute(
            update(payouts)
            .where(payouts.c.id.in_(chunk), payouts.c.status == "pending")
            .values(status="exported", batch_id=batch.batch_id, exported_at_ms=batch.exported_at_ms)
        )
        if result.rowcount != len(chunk):
            raise ApiError(
                "payout_changed",
                "a payout changed while it was being exported; nothing was exported, run the export again",
                409,
            )


def _load_exported_batch(conn: Connection, batch_id: str) -> Batch:
    # Locked so that a settle running at the same time cannot slip in between check and file.
    rows = conn.execute(
        select(
            payouts.c.id,
            payouts.c.amount_minor,
            payouts.c.bank_account,
            payouts.c.store_id,
            payouts.c.status,
            payouts.c.exported_at_ms,
            parties.c.name.label("store_name"),
        )
        .join(parties, parties.c.id == payouts.c.store_id)
        .where(payouts.c.batch_id == batch_id)
        .order_by(payouts.c.created_at_ms, payouts.c.id)
        .limit(MAX_PAYOUTS_PER_FILE)
        .with_for_update(of=payouts)
    ).all()
    if not rows:
        raise ApiError("unknown_batch", f"no payout batch {batch_id}", 404)
    if any(row.status != "exported" for row in rows):
        raise ApiError(
            "batch_settled",
            f"batch {batch_id} is already settled: the bank has paid it, and a new file would pay it twice",
            409,
        )
    lines, held = _split_exportable(rows)
    assert not held, "an exported batch only holds payouts whose account passed the check"
    return Batch(batch_id, rows[0].exported_at_ms, tuple(lines))


def _original_sha256(conn: Connection, batch_id: str) -> str | None:
    action = conn.execute(
        select(audit_log.c.action)
        .where(audit_log.c.msg_type == "payouts_export", audit_log.c.msg_id == batch_id)
        .limit(1)
    ).scalar()
    return json.loads(action).get("file_sha256") if action else None


def _batch_summary(action: str, batch: Batch, currency: str, path: Path, document: bytes) -> dict:
    return {
        "action": action,
        "batch_id": batch.batch_id,
        "count": len(batch.lines),
        "total_minor": batch.total_minor,
        "currency": currency,
        "file": str(path),
        "file_sha256": hashlib.sha256(document).hexdigest(),
        "exported_at_ms": batch.exported_at_ms,
        "payout_ids": [line.payout_id for line in batch.lines],
    }


# --- the file on disk ---------------------------------------------------------------


def _refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise ApiError(
            "file_exists",
            f"{path} already exists; payout files are never overwritten, choose a new name",
            409,
        )


def _write_tmp(path: Path, document: bytes, batch_id: str) -> Path:
    # Beside the target, so the final link stays on one filesystem; 0600 (the file holds bank
    # accounts). The random part: a re-export of the same batch never meets a stale copy's name.
    tmp = path.with_name(f".{path.name}.{batch_id}.{secrets.token_hex(4)}.tmp")
    write_new_file(tmp, document)
    return tmp


def _publish(tmp: Path, path: Path, batch_id: str) -> None:
    """Give the committed file its name; never replace a file that appeared meanwhile."""
    try:
        link_new_name(tmp, path)
    except OSError as error:
        raise ApiError(
            "file_not_written",
            f"batch {batch_id} is recorded as exported but {path} could not be "
            f"written ({error.strerror or error}); re-create the file with the "
            f"batch id {batch_id}",
            500,
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


# --- settle ---------------------------------------------------------------------------


def settle_payouts(
    engine: Engine, *, now_ms: int, batch_id: str | None = None, max_payouts: int = MAX_SETTLE_PER_RUN
) -> dict:
    """Mark exported payouts (all, or one batch) as paid by the bank and move their money out.

    Idempotent: a payout is settled once; a second run finds nothing. At most
    max_payouts per run (`more_exported` says whether any are left).
    """
    if not 1 <= max_payouts <= MAX_SETTLE_PER_RUN:
        raise ValueError(f"max_payouts must be 1..{MAX_SETTLE_PER_RUN}")
    with engine.begin() as conn:
        rows = _lock_exported(conn, batch_id, max_payouts + 1)
        more_exported, rows = len(rows) > max_payouts, rows[:max_payouts]
        for row in rows:
            _settle_one(conn, row, now_ms)
        summary = {
            "action": "payouts_settled",
            "count": len(rows),
            "total_minor": sum(r.amount_minor for r in rows),
            "batch_ids": sorted({r.batch_id for r in rows}),
            "payout_ids": [r.id for r in rows],
            "settled_at_ms": now_ms,
        }
        if rows:  # a run that changed nothing leaves no trace in the audit chain
            _audit(conn, "payouts_settle", ledger.new_id(ledger.SETTLEMENT_ID_PREFIX), summary, now_ms)
    return summary | {"more_exported": more_exported}


def _lock_exported(conn: Connection, batch_id: str | None, limit: int) -> list:
    query = select(payouts.c.id, payouts.c.amount_minor, payouts.c.batch_id).where(
        payouts.c.status == "exported"
    )
    if batch_id is not None:
        query = query.where(payouts.c.batch_id == batch_id)
    return conn.execute(
        query.order_by(payouts.c.created_at_ms, payouts.c.id).limit(limit).with_for_update()
    ).all()


def _settle_one(conn: Connection, row, now_ms: int) -> None:
    # Conditional: only an exported payout becomes settled, so its money moves once.
    result = conn.execute(
        update(payouts)
        .where(payouts.c.id == row.id, payouts.c.status == "exported")
        .values(status="settled", settled_at_ms=now_ms)
    )
    if result.rowcount != 1:
        raise ApiError(
            "payout_changed",
            f"payout {row.id} changed while it was being settled; nothing was settled, run settle again",
            409,
        )
    ledger.move(
        conn,
        debit=ledger.PAYOUTS_PENDING,
        credit=ledger.PAYOUTS_SETTLED,
        amount_minor=row.amount_minor,
        kind="settle",
        ref=row.id,
        now_ms=now_ms,
    )


def _audit(conn: Connection, msg_type: str, msg_id: str, summary: dict, now_ms: int) -> None:
    # The summary is both what was asked and what was done: no request arrived signed.
    audit.append_local(
        conn,
        actor=OPERATOR_KID,
        request=summary,
        msg_type=msg_type,
        msg_id=msg_id,
        action=summary,
        now_ms=now_ms,
    )
