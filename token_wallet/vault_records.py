"""A kind of vault record (history, receipts, notices) as a read-mostly, append-only sequence.

The wallet's code reads and appends ``doc["history"]`` as if it were a list; underneath, each
record is its own sealed row (token_wallet.vault_store), read a page at a time and decrypted on
demand, so opening a vault and recording a payment cost the same at a thousand records or a
million. Appends wait in memory until ``Vault.save`` writes them in the same transaction as the
core document: a record and the state that counts it are on disk together or not at all.

Records are never changed or removed once written (no ``__setitem__``, no ``pop``): what needs to
move (the audit's progress, the known balance) lives in the core document.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from hostkit.sealing import is_int
from token_wallet.vault_base import VaultError, decode_document, encode_document

# Records decrypted per database read when iterating; a page of a few hundred KB.
READ_PAGE_RECORDS = 256
# A history page, a notices page: what one command shows at once.
PAGE_LIMIT_MAX = 10_000
REF_MAX_CHARS = 512
RECORD_MAX_BYTES = 1024 * 1024

# (kind, first seq, last seq) -> the records, in order; raises VaultCorrupt on a gap.
ReadRecords = Callable[[str, int, int], list[dict]]
# (kind, ref) -> the seq of the newest written record carrying that ref, or None.
FindRef = Callable[[str, str], int | None]


@dataclass(frozen=True)
class RecordPage:
    items: list[dict]
    first_index: int  # 0-based index of items[0] among all records of the kind
    total: int

    @property
    def has_more_after(self) -> bool:
        return self.first_index + len(self.items) < self.total


class RecordList(Sequence):
    """One kind of record: ``len``, indexing, slicing and iteration read from disk; ``append`` queues."""

    def __init__(self, kind: str, committed: int, read: ReadRecords, find_ref: FindRef) -> None:
        assert is_int(committed) and committed >= 0
        self.kind = kind
        self._committed = committed
        self._read, self._find_ref = read, find_ref
        self._pending: list[tuple[bytes, str | None]] = []

    def __repr__(self) -> str:
        # Never the records themselves: they are the member's private history.
        return f"<RecordList {self.kind} len={len(self)}>"

    def __len__(self) -> int:
        return self._committed + len(self._pending)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, RecordList)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # mutable, like a list

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._range(start, stop)
        if not is_int(index):
            raise TypeError(f"record indices must be integers, not {type(index).__name__}")
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"{self.kind} index {index} out of range")
        return self._range(position, position + 1)[0]

    def __iter__(self) -> Iterator[dict]:
        # The length when iteration starts: records appended meanwhile are not visited.
        end = len(self)
        for start in range(0, end, READ_PAGE_RECORDS):
            yield from self._range(start, min(start + READ_PAGE_RECORDS, end))

    def _range(self, start: int, stop: int) -> list[dict]:
        """Records [start, stop) by 0-based index; seq on disk is index + 1."""
        if start >= stop:
            return []
        items = []
        if start < self._committed:
            items += self._read(self.kind, start + 1, min(stop, self._committed))
        first_pending, last_pending = max(0, start - self._committed), max(0, stop - self._committed)
        items += [decode_document(plain) for plain, _ in self._pending[first_pending:last_pending]]
        assert len(items) == stop - start
        return items

    def append(self, item: dict) -> None:
        """Queue a record (copied now: later changes to ``item`` are not recorded)."""
        plaintext = encode_document(item)
        if len(plaintext) > RECORD_MAX_BYTES:
            raise VaultError(
                f"a {self.kind} record of {len(plaintext)} bytes is over the {RECORD_MAX_BYTES} limit: "
                "nothing was written"
            )
        self._pending.append((plaintext, record_ref_text(self.kind, item)))

    def has_ref(self, ref: str) -> bool:
        """Whether a record with this ref (``record_ref_text``) is written or queued: one index lookup,
        nothing decrypted."""
        return any(pending_ref == ref for _, pending_ref in self._pending) or (
            self._find_ref(self.kind, ref) is not None
        )

    def find(self, ref: str) -> dict | None:
        """The newest record with this ref, queued or written (one index lookup, one record read)."""
        for plaintext, pending_ref in reversed(self._pending):
            if pending_ref == ref:
                return decode_document(plaintext)
        seq = self._find_ref(self.kind, ref)
        return None if seq is None else self._read(self.kind, seq, seq)[0]

    def page(self, limit: int, *, since_ms: int | None = None, time_field: str = "at_ms") -> RecordPage:
        """The newest ``limit`` records, or with ``since_ms`` the first ``limit`` whose ``time_field``
        is at or after it. Records are in recording order and their times do not go back (the
        wallet keeps them monotonic), so the start is found by bisection: about 20 records are
        decrypted to find it among a million."""
        if not is_int(limit) or not 1 <= limit <= PAGE_LIMIT_MAX:
            raise VaultError(f"a page holds 1 to {PAGE_LIMIT_MAX} records")
        total = len(self)
        if since_ms is None:
            start = max(0, total - limit)
        else:
            start = bisect.bisect_left(_Times(self, time_field), since_ms)
        return RecordPage(self._range(start, min(total, start + limit)), start, total)

    # --- for Vault.save only ---------------------------------------------------------------------

    def pending(self) -> list[tuple[int, bytes, str | None]]:
        """(seq, plaintext, ref) of each queued record."""
        return [(self._committed + i + 1, plain, ref) for i, (plain, ref) in enumerate(self._pending)]

    def committed(self, count: int) -> None:
        """The first ``count`` queued records are on disk now."""
        assert 0 <= count <= len(self._pending)
        self._committed += count
        del self._pending[:count]


def payment_order_ref(store_id: str, order_ref: str) -> str:
    return f"pay:{store_id}:{order_ref}"


def record_ref_text(kind: str, item: dict) -> str | None:
    """What identifies a record, so the wallet can ask "is payment X recorded?" without reading
    them all: a history entry by its type and reference (a payment by its store and order
    reference), a receipt by its message id, a notice by its payment id. None when the record has
    no such field (nothing to find it by)."""
    if kind == "history":
        details = item.get("details")
        if item.get("type") == "pay" and isinstance(details, dict) and "order_ref" in details:
            # A payment by its store and order: `wallet pay` asks before paying an order twice.
            ref = payment_order_ref(str(details.get("store_id")), str(details["order_ref"]))
        else:
            ref = f"{item.get('type')}:{item.get('msg_id')}"
    elif kind == "receipts":
        ref = item.get("msg_id")
    else:
        notice = item.get("notice")
        ref = notice.get("payment_id") if isinstance(notice, dict) else None
    if not isinstance(ref, str) or not 1 <= len(ref) <= REF_MAX_CHARS:
        return None
    return ref


class _Times(Sequence):
    """The time field of each record, read on demand (what bisect needs, and no more)."""

    def __init__(self, records: RecordList, time_field: str) -> None:
        self._records, self._field = records, time_field

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index):
        value = self._records[index].get(self._field)
        return value if is_int(value) else 0
