"""Checking an audit export (center.ledger.audit_export) with nothing but the file and paywire.

What a successful `verify_export` proves: the entries form an unbroken hash chain (the same bytes
center.ledger.audit chains and the tree hashes, paywire.log_entry) that ends at the exported head,
and every signed entry carries a valid signature, made with the key its kid names and that key's
pinned algorithm, over its exact payload bytes, addressed to this center (and a key rotation also
carries the new key's own valid proof naming the old key). Entries of local actions (an operator's
decision, a funding webhook) are chained but carry no member signature; they are counted as
unsigned. Format 3 adds the signed tree heads: each verifies with the center's key (the receipt key
of the certificate in the file, or of a pinned one: `center_cert_pem`), they chain, and each one's
root recomputes from the file's entries, so entries rewritten after a head was signed fail even when
the whole chain was recomputed. What it cannot prove on its own: that nothing was cut off after the
newest tree head (`entries_after_newest_head`) or that the newest heads were not dropped; compare
the newest head with one obtained independently (a receipt, `wallet audit check`, an earlier export).
Without a pinned certificate, the file's own certificate is trusted to name the center's key.

Speed: files of PARALLEL_MIN_BYTES and more are checked in parts on both cores
(center.ledger.audit_export_chunks); a problem found there is then named exactly by this same
line-by-line check, resumed where the last good part ended.

Memory: the verifier holds one line (at most MAX_LINE_BYTES, read by center.ledger.json_lines),
the enrolled keys and, for the tree, ~64 bytes per entry (center.ledger.audit_tree_check).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from center.ledger.audit_export import FORMAT_NAME, FORMAT_VERSION
from center.ledger.audit_export_chunks import verify_in_parts
from center.ledger.audit_export_records import (
    MALFORMED,
    describe,
    finish,
    parse_header,
    verify_lines,
    verify_record,
)
from center.ledger.audit_export_state import Bad, Chain, Header, Report
from center.ledger.json_lines import JsonLines
from paywire.center_cert import read_center_certificate

MAX_EXPORT_FILE_BYTES = 2 * 1024**3
# One entry, one key or the header (with the certificate), newline excluded.
# Signed payloads are at most 16 KiB, webhook evidence at most 64 KiB (the
# API's body limit); this leaves room.
MAX_LINE_BYTES = 4 * 1024 * 1024
PARALLEL_MIN_BYTES = 16 * 1024 * 1024
WORKERS = 2


def verify_export(
    path: Path, *, center_cert_pem: bytes | None = None, workers: int = WORKERS, part_bytes: int | None = None
) -> dict:
    """Check an export with nothing but the file: chain, head, every signature, every tree head.

    Never raises on bad input. `center_cert_pem`: the center's certificate as the verifier knows
    it; the file's must name the same center and key. `workers`/`part_bytes`: parallel checking
    (default: both cores for files of PARALLEL_MIN_BYTES and more).
    """
    assert 1 <= workers <= 64
    report = Report()
    chain = Chain()
    try:
        size_bytes = _check_file_size(Path(path))
        with open(path, "rb") as handle:
            lines = JsonLines(handle, max_line_bytes=MAX_LINE_BYTES, max_total_bytes=MAX_EXPORT_FILE_BYTES)
            header = _read_header(lines, center_cert_pem)
            report.center_id, report.head_entry_hash = header.center_id, header.head_hash
            in_parts = workers > 1 and size_bytes >= (PARALLEL_MIN_BYTES if part_bytes is None else 0)
            if in_parts:
                start, before = _read_keys(handle, lines, header)
                verify_in_parts(
                    Path(path),
                    start=start,
                    lines_before=before,
                    header=header,
                    chain=chain,
                    report=report,
                    max_line_bytes=MAX_LINE_BYTES,
                    workers=workers,
                    part_bytes=part_bytes or PARALLEL_MIN_BYTES // 4,
                )
            else:
                verify_lines(lines, header, chain, report)
        finish(chain, header, report)
    except Bad as bad:
        report.first_bad_seq, report.problem = bad.seq, bad.reason
    except OSError as error:
        report.problem = f"cannot read {path}: {error.strerror or error}"
    except MALFORMED as error:
        # Belt and braces: whatever slipped past the checks below is still a
        # malformed file, reported, not a traceback.
        report.problem = f"malformed export: {describe(error)}"
    return report.to_json()


def _check_file_size(path: Path) -> int:
    size_bytes = path.stat().st_size
    if size_bytes > MAX_EXPORT_FILE_BYTES:
        raise Bad(
            None, f"file is {size_bytes} bytes; exports above {MAX_EXPORT_FILE_BYTES} bytes are refused"
        )
    return size_bytes


def _read_header(lines: JsonLines, center_cert_pem: bytes | None) -> Header:
    try:
        record = next(lines, None)
        if record is None:
            raise ValueError("the file is empty")
        header = parse_header(record)
    except MALFORMED as error:
        raise Bad(
            None,
            f"line 1 is not a {FORMAT_NAME} version 2 or {FORMAT_VERSION} header (JSON Lines): "
            f"{describe(error)}",
        ) from None
    if center_cert_pem is not None:
        pinned = read_center_certificate(center_cert_pem)
        if (pinned.center_id, pinned.receipt_spki) != (header.center_id, header.center_key.spki):
            raise Bad(None, "the export's center certificate is not the pinned one (another center or key)")
    return header


def _read_keys(handle: BinaryIO, lines: JsonLines, header: Header) -> tuple[int, int]:
    """Read the key lines after the header; return where the first other line starts and how many
    lines come before it. A line that is not a good key line ends the keys: the parts check it."""
    while True:
        start, before = handle.tell(), lines.number
        try:
            record = next(lines, None)
            if record is None or not isinstance(record, dict) or set(record) != {"key"}:
                return start, before
            verify_record(record, lines.number, header, Chain(), Report())
        except (Bad, *MALFORMED):
            return start, before
