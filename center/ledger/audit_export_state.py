"""What checking an audit export carries from line to line, and how it reads strict JSON.

Split from center.ledger.audit_export_records (the checks) so that the state (Chain, Report) and
the problems (Bad) can be shared by the one-pass check and the parts checked in helper processes
(center.ledger.audit_export_chunks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from center.ledger.audit import GENESIS_HASH
from center.ledger.audit_tree_check import CenterKey, TreeProblem
from center.ledger.json_lines import strict_loads


def parse_strict(data: bytes) -> object:
    """JSON as center.ledger.json_lines.parse_line reads a line: NaN, Infinity, repeated names refused."""
    return strict_loads(data)


# A problem found in the export, `seq` the first entry it concerns (None: not an entry): the same
# exception the tree and head checks raise, so theirs need no translation.
Bad = TreeProblem


@dataclass(frozen=True)
class Key:
    algorithm: str
    spki: bytes


@dataclass
class Header:
    center_id: str
    head_seq: int
    head_hash: str
    version: int
    center_key: CenterKey  # who signs the tree heads: the certificate's receipt key
    keys: dict[str, Key] = field(default_factory=dict)


@dataclass
class Report:
    entries: int = 0
    signatures_checked: int = 0
    unsigned_entries: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    center_id: str | None = None
    head_entry_hash: str | None = None
    tree_size: int = 0
    heads_checked: int = 0
    entries_after_newest_head: int = 0

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
            "tree_size": self.tree_size,
            "heads_checked": self.heads_checked,
            "entries_after_newest_head": self.entries_after_newest_head,
        }


@dataclass
class Chain:
    """Where the check stands. A part of a file checked on its own starts with expected_seq and
    prev_hash None: its first entry sets them (first_seq, first_prev_hash), and whoever joins the
    parts checks that they link."""

    expected_seq: int | None = 1
    prev_hash: str | None = GENESIS_HASH
    last_seq: int = 0
    in_entries: bool = False  # an entry line was seen: no more key lines
    in_heads: bool = False  # a tree head line was seen: no more entries
    leaves: bytearray = field(default_factory=bytearray)
    heads: list[tuple[int, object]] = field(default_factory=list)  # (line number, tree head)
    first_seq: int | None = None
    first_prev_hash: str | None = None


def part_chain() -> Chain:
    """The state for checking a part of the entries on its own (see Chain)."""
    return Chain(expected_seq=None, prev_hash=None, in_entries=True)
