"""Group commit for single payments: concurrent payment requests in one process share a transaction.

Each request still carries one signed payment and gets its own answer, and only after the commit
that makes it durable; what concurrent requests share is the commit, the audit-head lock and the
statements (center.pipeline.batch). Without it every payment is one transaction, and payments to one store
queue behind each other's commit while holding the store's balance row.

One committer thread per process takes whatever payments are waiting (up to a batch), answers
them through center.pipeline.batch, hands each answer back, and takes the next lot. HTTP requests wait
for their answer without holding a thread (answer_async); in-process callers block (answer). At
low load a batch holds one payment and costs what the single path costs. The thread ends after
IDLE_EXIT_S without work and starts again with the next payment.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable

from center.errors import ApiError
from center.pipeline.batch import MAX_BATCH_ITEMS, answer_verified
from center.pipeline.types import CenterContext, Verified

IDLE_EXIT_S = 5.0
# Payments waiting beyond this are refused at once rather than queued without bound.
MAX_WAITING = 10_000

Done = Callable[[dict | None, BaseException | None], None]


class GroupCommit:
    def __init__(self, center: CenterContext):
        self._center = center
        self._waiting: queue.Queue = queue.Queue(maxsize=MAX_WAITING)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, request: Verified, done: Done) -> None:
        """Queue a verified payment; `done(answer, None)` or `done(None, failure)` runs on the committer
        thread."""
        try:
            self._waiting.put_nowait((request, done))
        except queue.Full:
            raise ApiError(
                "overloaded",
                f"more than {MAX_WAITING} payments are waiting to be committed; "
                "retry the same signed message later",
                503,
            ) from None
        self._ensure_committer()

    def answer(self, request: Verified) -> dict:
        """Block until the payment's answer ({"receipt": ...} or {"error": ..., "status": N}) is committed."""
        finished = threading.Event()
        outcome: list = []

        def done(answer, failure) -> None:
            outcome.extend((answer, failure))
            finished.set()

        self.submit(request, done)
        finished.wait()
        return _unwrap(*outcome)

    async def answer_async(self, request: Verified) -> dict:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(answer, failure) -> None:
            loop.call_soon_threadsafe(_settle, future, answer, failure)

        self.submit(request, done)
        return _unwrap(*await future)

    def _ensure_committer(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._commit_forever, name="group-commit", daemon=True)
                self._thread.start()

    def _commit_forever(self) -> None:
        while True:
            try:
                first = self._waiting.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._waiting.empty():  # a submit after this sees the thread gone and starts one
                        self._thread = None
                        return
                continue
            batch = [first]
            while len(batch) < MAX_BATCH_ITEMS:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list) -> None:
        try:
            answers = answer_verified(self._center, [request for request, _ in batch])
        except BaseException as failure:  # the database went away: every payment in it gets the error
            for _, done in batch:
                done(None, failure)
            return
        for (_, done), answer in zip(batch, answers, strict=True):
            done(answer, None)


def _settle(future: asyncio.Future, answer, failure) -> None:
    if not future.done():  # the client may have gone away; its payment is committed all the same
        future.set_result((answer, failure))


def _unwrap(answer, failure) -> dict:
    if failure is not None:
        raise failure
    assert answer is not None
    return answer
