"""Group commit for single payments: concurrent payment requests in one process share a transaction.

Each request still carries one signed payment and gets its own answer, and only after the commit
that makes it durable; what concurrent requests share is the commit, the audit-head lock and the
appended rows (center.batch). Without it every payment is one transaction, and payments to one
store queue behind each other's commit while holding the store's balance row.

Leader and followers, no extra thread: a request that finds no batch running leads: it takes
everything queued (its own payment first), answers it through center.batch, wakes the waiters,
and hands the lead to the first request that queued meanwhile. A request that finds a batch
running waits. At low load a batch holds one payment, which costs what the single path costs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from center.batch import MAX_BATCH_ITEMS, answer_verified

@dataclass
class _Slot:
    request: object  # center.service.Verified
    woken: threading.Event = field(default_factory=threading.Event)
    answer: dict | None = None
    failure: BaseException | None = None
    leads: bool = False


class GroupCommit:
    def __init__(self, center):
        self._center = center
        self._lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._leading = False

    def answer(self, request) -> dict:
        """The payment's answer ({"receipt": ...} or {"error": ..., "status": N}), once committed."""
        slot = _Slot(request)
        with self._lock:
            self._queue.append(slot)
            if not self._leading:
                self._leading = slot.leads = True
        if not slot.leads:
            # No timeout on purpose: a waiter that left could be handed the lead and strand the
            # queue. A stuck database stalls the leader, and it would stall a lone request too.
            slot.woken.wait()
        if slot.leads and slot.answer is None and slot.failure is None:
            self._lead()
        if slot.failure is not None:
            raise slot.failure
        assert slot.answer is not None
        return slot.answer

    def _lead(self) -> None:
        with self._lock:
            batch = self._queue[:MAX_BATCH_ITEMS]
            del self._queue[:MAX_BATCH_ITEMS]
        assert batch, "a leader's own payment is queued until it runs"
        try:
            answers = answer_verified(self._center, [slot.request for slot in batch])
            for slot, answer in zip(batch, answers):
                slot.answer = answer
        except BaseException as failure:  # the database went away: every payment in it gets the error
            for slot in batch:
                slot.failure = failure
        finally:
            self._hand_over()
            for slot in batch:
                slot.woken.set()

    def _hand_over(self) -> None:
        with self._lock:
            if self._queue:
                successor = self._queue[0]
                successor.leads = True
                successor.woken.set()
            else:
                self._leading = False
