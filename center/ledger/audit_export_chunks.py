"""Checking a big audit export in parts, on both cores (center.ledger.audit_export_verify says what).

The lines after the keys are cut into parts of about `part_bytes`, each starting at a line start.
A helper process checks each part on its own with the same record checks
(center.ledger.audit_export_records), its chain starting at its first entry, and gives back its ends,
its counts, its entries' leaf hashes and its tree head lines. Joined in file order, each part must
start where the one before it ended (next seq, same hash, no entry after a tree head). A part that
fails, or does not join, is checked again here, line by line, from where the last good part
ended: the result, problem and message alike, is exactly that of one pass over the whole file.
Per entry the work is a JSON line, two hashes and (for signed entries) one signature check, ~64 us
of a core for P-256: the parts spread that over both cores.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from center.ledger.audit_export_records import MALFORMED, verify_lines, verify_record
from center.ledger.audit_export_state import Bad, Chain, Header, Report, parse_strict, part_chain
from center.ledger.json_lines import JsonLines

MAX_PARTS = 4096

_header: Header | None = None  # set once per helper process (_start_helper)
_max_line_bytes = 0


@dataclass
class PartResult:
    ok: bool
    lines: int = 0
    entries: int = 0
    signatures_checked: int = 0
    unsigned_entries: int = 0
    first_seq: int | None = None
    first_prev_hash: str | None = None
    last_seq: int = 0
    last_hash: str | None = None
    in_heads: bool = False
    leaves: bytes = b""
    heads: list = field(default_factory=list)  # (line number within the part, tree head)


def verify_in_parts(
    path: Path,
    *,
    start: int,
    lines_before: int,
    header: Header,
    chain: Chain,
    report: Report,
    max_line_bytes: int,
    workers: int,
    part_bytes: int,
) -> None:
    """Check the lines from byte `start` (line lines_before + 1) to the end; raise Bad on the first
    problem, as one pass would. `chain` and `report` end as one pass would leave them."""
    bounds = _part_bounds(path, start, part_bytes, max_line_bytes)
    context = get_context("spawn")  # a fresh interpreter: nothing inherited from this one
    with ProcessPoolExecutor(
        min(workers, len(bounds)) or 1,
        mp_context=context,
        initializer=_start_helper,
        initargs=(header, max_line_bytes),
    ) as pool:
        pending = [pool.submit(_check_part, str(path), first, end) for first, end in bounds]
        number = lines_before
        for (first, _end), future in zip(bounds, pending, strict=True):
            part = future.result()
            if not _joins(part, chain):
                for later in pending:
                    later.cancel()
                _resume(path, first, number, header, chain, report, max_line_bytes)
                return
            _take(part, number, chain, report)
            number += part.lines


def _part_bounds(path: Path, start: int, part_bytes: int, max_line_bytes: int) -> list[tuple[int, int]]:
    size = path.stat().st_size
    part_bytes = max(part_bytes, 1, (size - start) // MAX_PARTS + 1)
    starts = [start]
    with open(path, "rb") as handle:
        while starts[-1] + part_bytes < size:
            handle.seek(starts[-1] + part_bytes - 1)
            # To the next line start (a line too long to end here fails its part: checked again).
            handle.readline(max_line_bytes + 2)
            if handle.tell() >= size:
                break
            starts.append(handle.tell())
    return list(zip(starts, [*starts[1:], size], strict=True))


def _start_helper(header: Header, max_line_bytes: int) -> None:
    global _header, _max_line_bytes
    _header, _max_line_bytes = header, max_line_bytes


def _check_part(path: str, first: int, end: int) -> PartResult:
    assert _header is not None
    with open(path, "rb") as handle:
        handle.seek(first)
        data = handle.read(end - first)
    # The strict line rules of center.ledger.json_lines, with one decoder for all lines: whatever
    # fails here is read again by that reader (_resume), which names it.
    *lines, rest = data.split(b"\n")
    chain, report = part_chain(), Report()
    try:
        if rest:
            raise ValueError("the part does not end with a newline")
        for number, line in enumerate(lines, start=1):
            if len(line) > _max_line_bytes or not line.strip():
                raise ValueError("line too long or blank")
            verify_record(parse_strict(line), number, _header, chain, report)
    except (Bad, *MALFORMED):
        return PartResult(ok=False)
    return PartResult(
        ok=True,
        lines=len(lines),
        entries=report.entries,
        signatures_checked=report.signatures_checked,
        unsigned_entries=report.unsigned_entries,
        first_seq=chain.first_seq,
        first_prev_hash=chain.first_prev_hash,
        last_seq=chain.last_seq,
        last_hash=chain.prev_hash,
        in_heads=chain.in_heads,
        leaves=bytes(chain.leaves),
        heads=chain.heads,
    )


def _joins(part: PartResult, chain: Chain) -> bool:
    if not part.ok:
        return False
    if part.first_seq is None:  # no entries: tree heads only
        return True
    return not chain.in_heads and (part.first_seq, part.first_prev_hash) == (
        chain.expected_seq,
        chain.prev_hash,
    )


def _take(part: PartResult, number: int, chain: Chain, report: Report) -> None:
    if part.first_seq is not None:
        chain.expected_seq, chain.prev_hash, chain.last_seq = part.last_seq + 1, part.last_hash, part.last_seq
        chain.in_entries = True
    chain.in_heads = chain.in_heads or part.in_heads
    chain.leaves += part.leaves
    chain.heads.extend((number + line, head) for line, head in part.heads)
    report.entries += part.entries
    report.signatures_checked += part.signatures_checked
    report.unsigned_entries += part.unsigned_entries


def _resume(
    path: Path, first: int, number: int, header: Header, chain: Chain, report: Report, max_line_bytes: int
) -> None:
    """One pass from byte `first` (after line `number`) to the end, from the joined parts' state."""
    with open(path, "rb") as handle:
        handle.seek(first)
        lines = JsonLines(handle, max_line_bytes=max_line_bytes, max_total_bytes=path.stat().st_size)
        lines.number = number
        verify_lines(lines, header, chain, report)
