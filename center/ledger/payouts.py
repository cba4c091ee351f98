"""Paying stores out: ISO 20022 pain.001 files for the bank, then settlement.

A payout's life: a store's signed claim moves its whole balance to
`payouts:pending` and inserts a 'pending' payouts row (center.pipeline.handlers.payout).
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
re-exported: the bank has already paid it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import rfc8785
from sqlalchemy import Connection, Engine, select, update

from center.ledger import audit

from center.ledger import book as ledger
from center.storage.db import audit_log, parties, payouts
from center.storage.files import fsync_directory, link_no_clobber, remove_quietly
from center.errors import ApiError
from paywire.money import AmountError, minor_exponent

PAIN_001_NS = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"
# One file, one batch: at most this many payouts. More stay pending for the
# next file. Keeps the transaction, the file and the audit entry bounded.
MAX_PAYOUTS_PER_FILE = 10_000
MAX_SETTLE_PER_RUN = 10_000
# Ids per UPDATE ... WHERE id IN (...): far below SQLite's 32,766 host parameters.
UPDATE_CHUNK_ROWS = 500
# Field lengths from the pain.001.001.09 schema (Max34Text, Max140Text). The ids
# (MsgId, PmtInfId, EndToEndId: Max35Text) are ours and at most 24 characters.
MAX_ACCOUNT_CHARS = 34
MAX_NAME_CHARS = 140
OPERATOR_KID = "operator:payouts"
NOT_PROVIDED = "NOTPROVIDED"
# Characters XML 1.0 cannot carry at all; ElementTree would write them and make the file unreadable.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class PayoutLine:
    payout_id: str
    store_name: str
    bank_account: str
    amount_minor: int


@dataclass(frozen=True)
class Batch:
    batch_id: str
    exported_at_ms: int
    lines: tuple[PayoutLine, ...]

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)


# --- export ---------------------------------------------------------------------

def export_payouts(engine: Engine, path: Path, *, center_id: str, currency: str, now_ms: int,
                   batch_id: str | None = None, settlement_account: str | None = None,
                   max_payouts: int = MAX_PAYOUTS_PER_FILE) -> dict:
    """Write the pending payouts (or, with batch_id, an exported batch again) to a pain.001 file at `path`.

    Returns {"batch_id", "count", "total_minor", "currency", "file", ...}; with
    nothing pending, count 0 and no file. Refuses (ApiError 'file_exists') to
    overwrite anything at `path`.
    """
    path = Path(path)
    if not 1 <= max_payouts <= MAX_PAYOUTS_PER_FILE:
        raise ValueError(f"max_payouts must be 1..{MAX_PAYOUTS_PER_FILE}")
    _check_currency(currency)
    debtor_account = _debtor_account(settlement_account or center_id)
    _refuse_existing(path)

    def file_for(batch: Batch) -> bytes:
        return build_pain001(batch, initiator=center_id, currency=currency, debtor_account=debtor_account)

    if batch_id is not None:
        return _commit_then_publish(engine, path, lambda conn: _reexport_step(conn, batch_id, file_for, path,
                                                                              currency), now_ms)
    return _commit_then_publish(engine, path, lambda conn: _export_step(conn, file_for, path, currency, now_ms,
                                                                        max_payouts), now_ms)


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
            remove_quietly(tmp)  # the batch was rolled back: no file may name it
        raise
    _publish(tmp, path, summary["batch_id"])
    return summary


def _export_step(conn: Connection, file_for, path: Path, currency: str, now_ms: int, max_payouts: int):
    rows = _lock_pending(conn, max_payouts + 1)
    more_pending = len(rows) > max_payouts
    lines, held = _split_exportable(rows[:max_payouts])
    extras = {"more_pending": more_pending, "held_payout_ids": held}
    if not lines:
        empty = {"batch_id": None, "count": 0, "total_minor": 0, "currency": currency, "file": None, "payout_ids": []}
        return empty | extras, None, ""
    batch = Batch(ledger.new_id("B"), now_ms, tuple(lines))
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
    query = (select(payouts.c.id, payouts.c.amount_minor, payouts.c.bank_account, payouts.c.store_id,
                    parties.c.name.label("store_name"))
             .join(parties, parties.c.id == payouts.c.store_id)
             .where(payouts.c.status == "pending")
             .order_by(payouts.c.created_at_ms, payouts.c.id).limit(limit)
             .with_for_update(of=payouts))
    return conn.execute(query).all()


def _split_exportable(rows) -> tuple[list[PayoutLine], list[str]]:
    """Payouts whose bank account cannot go into a valid file are held back (they stay pending).

    Truncating or cleaning an account number would send money elsewhere, and
    refusing the whole file would let one store block every other store.
    """
    lines, held = [], []
    for row in rows:
        if _valid_account(row.bank_account):
            name = _xml_text(row.store_name, MAX_NAME_CHARS) or row.store_id
            lines.append(PayoutLine(row.id, name, row.bank_account, row.amount_minor))
        else:
            held.append(row.id)
    return lines, held


def _mark_exported(conn: Connection, batch: Batch) -> None:
    ids = [line.payout_id for line in batch.lines]
    for start in range(0, len(ids), UPDATE_CHUNK_ROWS):
        chunk = ids[start:start + UPDATE_CHUNK_ROWS]
        # Conditional: a row that is no longer pending must not be exported twice.
        result = conn.execute(update(payouts).where(payouts.c.id.in_(chunk), payouts.c.status == "pending")
                              .values(status="exported", batch_id=batch.batch_id, exported_at_ms=batch.exported_at_ms))
        if result.rowcount != len(chunk):
            raise ApiError("payout_changed", "a payout changed while it was being exported; nothing was exported, "
                                             "run the export again", 409)


def _load_exported_batch(conn: Connection, batch_id: str) -> Batch:
    # Locked so that a settle running at the same time cannot slip in between check and file.
    rows = conn.execute(
        select(payouts.c.id, payouts.c.amount_minor, payouts.c.bank_account, payouts.c.store_id, payouts.c.status,
               payouts.c.exported_at_ms, parties.c.name.label("store_name"))
        .join(parties, parties.c.id == payouts.c.store_id)
        .where(payouts.c.batch_id == batch_id)
        .order_by(payouts.c.created_at_ms, payouts.c.id).limit(MAX_PAYOUTS_PER_FILE)
        .with_for_update(of=payouts)).all()
    if not rows:
        raise ApiError("unknown_batch", f"no payout batch {batch_id}", 404)
    if any(row.status != "exported" for row in rows):
        raise ApiError("batch_settled", f"batch {batch_id} is already settled: the bank has paid it, and a new file "
                                        "would pay it twice", 409)
    lines, held = _split_exportable(rows)
    assert not held, "an exported batch only holds payouts whose account passed the check"
    return Batch(batch_id, rows[0].exported_at_ms, tuple(lines))


def _original_sha256(conn: Connection, batch_id: str) -> str | None:
    action = conn.execute(select(audit_log.c.action).where(audit_log.c.msg_type == "payouts_export",
                                                           audit_log.c.msg_id == batch_id).limit(1)).scalar()
    return json.loads(action).get("file_sha256") if action else None


def _batch_summary(action: str, batch: Batch, currency: str, path: Path, document: bytes) -> dict:
    return {"action": action, "batch_id": batch.batch_id, "count": len(batch.lines),
            "total_minor": batch.total_minor, "currency": currency, "file": str(path),
            "file_sha256": hashlib.sha256(document).hexdigest(), "exported_at_ms": batch.exported_at_ms,
            "payout_ids": [line.payout_id for line in batch.lines]}


# --- the pain.001.001.09 document ---------------------------------------------------

def build_pain001(batch: Batch, *, initiator: str, currency: str, debtor_account: str) -> bytes:
    """The CustomerCreditTransferInitiation for one batch: one PmtInf, one CdtTrfTxInf per payout."""
    # The default namespace as a plain attribute: no global ET.register_namespace state.
    root = ET.Element("Document", {"xmlns": PAIN_001_NS})
    initiation = _el(root, "CstmrCdtTrfInitn")
    header = _el(initiation, "GrpHdr")
    _el(header, "MsgId", batch.batch_id)
    _el(header, "CreDtTm", iso_datetime(batch.exported_at_ms))
    _el(header, "NbOfTxs", str(len(batch.lines)))
    _el(header, "CtrlSum", format_decimal_amount(batch.total_minor, currency))
    _el(_el(header, "InitgPty"), "Nm", _xml_text(initiator, MAX_NAME_CHARS))
    _payment_information(initiation, batch, initiator=initiator, currency=currency, debtor_account=debtor_account)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _payment_information(parent: ET.Element, batch: Batch, *, initiator: str, currency: str,
                         debtor_account: str) -> None:
    info = _el(parent, "PmtInf")
    _el(info, "PmtInfId", batch.batch_id)
    _el(info, "PmtMtd", "TRF")
    _el(info, "NbOfTxs", str(len(batch.lines)))
    _el(info, "CtrlSum", format_decimal_amount(batch.total_minor, currency))
    _el(_el(info, "ReqdExctnDt"), "Dt", iso_date(batch.exported_at_ms))
    _el(_el(info, "Dbtr"), "Nm", _xml_text(initiator, MAX_NAME_CHARS))
    _other_id(_el(_el(info, "DbtrAcct"), "Id"), debtor_account)
    _other_id(_el(_el(info, "DbtrAgt"), "FinInstnId"), NOT_PROVIDED)
    for line in batch.lines:
        _credit_transfer(info, line, currency)


def _credit_transfer(parent: ET.Element, line: PayoutLine, currency: str) -> None:
    transfer = _el(parent, "CdtTrfTxInf")
    _el(_el(transfer, "PmtId"), "EndToEndId", line.payout_id)
    _el(_el(transfer, "Amt"), "InstdAmt", format_decimal_amount(line.amount_minor, currency), Ccy=currency)
    _el(_el(transfer, "Cdtr"), "Nm", line.store_name)
    _other_id(_el(_el(transfer, "CdtrAcct"), "Id"), line.bank_account)
    _el(_el(transfer, "RmtInf"), "Ustrd", f"tokenpay payout {line.payout_id}")


def _other_id(parent: ET.Element, identifier: str) -> None:
    _el(_el(parent, "Othr"), "Id", identifier)


def _el(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def format_decimal_amount(amount_minor: int, currency: str) -> str:
    """Integer minor units as the schema's decimal: 1250 EUR -> '12.50', 1500 JPY -> '1500'. No floats."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor < 0:
        raise ValueError("amounts in a payment file are non-negative integers of minor units")
    exponent = _check_currency(currency)
    whole, fraction = divmod(amount_minor, 10**exponent)
    return f"{whole}.{fraction:0{exponent}d}" if exponent else str(whole)


def iso_datetime(at_ms: int) -> str:
    # Whole seconds in UTC with an explicit offset (xs:dateTime); from integer ms, no float arithmetic.
    return datetime.fromtimestamp(at_ms // 1000, tz=timezone.utc).isoformat()


def iso_date(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms // 1000, tz=timezone.utc).date().isoformat()


def _xml_text(text: str, max_chars: int) -> str:
    """For names only (display text): drop what XML cannot hold, cut to the schema's length."""
    return _NOT_XML.sub("", text).strip()[:max_chars]


def _valid_account(account: str | None) -> bool:
    return bool(account) and account.strip() == account and len(account) <= MAX_ACCOUNT_CHARS \
        and not _NOT_XML.search(account)


def _debtor_account(account: str) -> str:
    if not _valid_account(account):
        raise ApiError("invalid_request", f"settlement account {account!r} must be 1-{MAX_ACCOUNT_CHARS} characters "
                                          "without surrounding spaces (pain.001 Max34Text)")
    return account


def _check_currency(currency: str) -> int:
    try:
        return minor_exponent(currency)
    except AmountError as error:
        raise ApiError("invalid_request", str(error)) from None


# --- the file on disk ---------------------------------------------------------------

def _refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise ApiError("file_exists", f"{path} already exists; payout files are never overwritten, choose a new name",
                       409)


def _write_tmp(path: Path, document: bytes, batch_id: str) -> Path:
    # Beside the target, so the final link stays on one filesystem. 0600: the file holds bank accounts.
    tmp = path.with_name(f".{path.name}.{batch_id}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(document)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def _publish(tmp: Path, path: Path, batch_id: str) -> None:
    """Give the committed file its name; never replace a file that appeared meanwhile."""
    try:
        link_no_clobber(tmp, path)
    except OSError as error:
        raise ApiError("file_not_written", f"batch {batch_id} is recorded as exported but {path} could not be "
                                           f"written ({error.strerror or error}); re-create the file with the "
                                           f"batch id {batch_id}", 500) from None
    finally:
        remove_quietly(tmp)
    fsync_directory(path.parent)


# --- settle ---------------------------------------------------------------------------

def settle_payouts(engine: Engine, *, now_ms: int, batch_id: str | None = None,
                   max_payouts: int = MAX_SETTLE_PER_RUN) -> dict:
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
        summary = {"action": "payouts_settled", "count": len(rows), "total_minor": sum(r.amount_minor for r in rows),
                   "batch_ids": sorted({r.batch_id for r in rows}), "payout_ids": [r.id for r in rows],
                   "settled_at_ms": now_ms}
        if rows:  # a run that changed nothing leaves no trace in the audit chain
            _audit(conn, "payouts_settle", ledger.new_id("S"), summary, now_ms)
    return summary | {"more_exported": more_exported}


def _lock_exported(conn: Connection, batch_id: str | None, limit: int) -> list:
    query = select(payouts.c.id, payouts.c.amount_minor, payouts.c.batch_id).where(payouts.c.status == "exported")
    if batch_id is not None:
        query = query.where(payouts.c.batch_id == batch_id)
    return conn.execute(query.order_by(payouts.c.created_at_ms, payouts.c.id).limit(limit).with_for_update()).all()


def _settle_one(conn: Connection, row, now_ms: int) -> None:
    # Conditional: only an exported payout becomes settled, so its money moves once.
    result = conn.execute(update(payouts).where(payouts.c.id == row.id, payouts.c.status == "exported")
                          .values(status="settled", settled_at_ms=now_ms))
    if result.rowcount != 1:
        raise ApiError("payout_changed", f"payout {row.id} changed while it was being settled; nothing was settled, "
                                         "run settle again", 409)
    ledger.move(conn, debit=ledger.PAYOUTS_PENDING, credit=ledger.PAYOUTS_SETTLED, amount_minor=row.amount_minor,
                kind="settle", ref=row.id, now_ms=now_ms)


def _audit(conn: Connection, msg_type: str, msg_id: str, summary: dict, now_ms: int) -> None:
    audit.append(conn, kid=OPERATOR_KID, alg="none", payload=rfc8785.dumps(summary), signature=b"",
                 msg_type=msg_type, msg_id=msg_id, action=summary, now_ms=now_ms)
