"""A wallet-like process for tests/test_vault_crash.py to SIGKILL at random instants.

Run as ``python vault_crash_worker.py MODE VAULT_PATH PASSWORD SEED``. Every step it reaches is
written at once (unbuffered, one line) to stdout, so the test knows after the kill which phase the
process was in and what the store must hold:

    READY                    imports done (pay: vault opened; create/migrate: about to start)
    S <n> <save>             about to call Vault.save (save 1 signs payment n, save 2 records it)
    C <n> <save> / D ...     the SQLite COMMIT statement starts / has returned
    ACK <n>                  save 2 of payment n returned: the payment is acknowledged
    W, L, l, R, r, DONE      create/migrate: store write starts, link before/after, replace before/after

Modes: ``pay`` and ``pay-jitter`` loop over payments (jitter sleeps a few random microseconds
around the SQLite statements of a save, to move the kills across the commit); ``create`` writes a
new vault; ``migrate`` opens a first-format vault, which converts it.

The SQLite connection is a real one (a sqlite3.Connection subclass that only reports and sleeps).
Kept import-light: Python's start-up is most of each kill's cost.
"""

from __future__ import annotations

import functools
import os
import random
import sqlite3
import sys
import time

from hostkit.sealing import MINIMUM_KDF
from token_wallet import vault as vault_module
from token_wallet.vault import Vault

RECEIPT_CHARS = 2000
NOTICE_CHARS = 1500
# Every BULK_EVERY-th payment also records a burst of notices: a commit of many WAL frames, so a
# kill can land between them.
BULK_EVERY = 4
BULK_NOTICES = 24
JITTER_MAX_S = 300e-6


def mark(*fields) -> None:
    # os.write, not print: the line is in the pipe before the next instruction can be killed.
    os.write(1, (" ".join(str(f) for f in fields) + "\n").encode())


def receipt_text(n: int) -> str:
    """The receipt of payment n, recognisable from its number (the test recomputes it)."""
    unit = f"receipt-of-p{n};"
    return (unit * (RECEIPT_CHARS // len(unit) + 1))[:RECEIPT_CHARS]


def notice_record(index: int) -> dict:
    """Notice number index (1-based over the whole vault); its payment id is its position."""
    return {"notice": {"payment_id": f"n{index}"}, "body": (f"notice-{index};" * 200)[:NOTICE_CHARS]}


def initial_core() -> dict:
    return {"counter": 0, "outbox": [], "notices_total": 0, "member_id": "m-crash"}


class ReportingConnection(sqlite3.Connection):
    """Real SQLite; reports the COMMIT of the current save and optionally sleeps around statements."""

    current = ("-", "-")  # (payment, save) being committed, set by the loop
    jitter = None  # a random.Random when the mode jitters

    def execute(self, sql, *args):
        self._sleep()
        if sql != "COMMIT":
            return super().execute(sql, *args)
        mark("C", *ReportingConnection.current)
        self._sleep()
        cursor = super().execute(sql, *args)
        mark("D", *ReportingConnection.current)
        self._sleep()
        return cursor

    def _sleep(self) -> None:
        if ReportingConnection.jitter is not None:
            time.sleep(ReportingConnection.jitter.uniform(0, JITTER_MAX_S))


def save(vault: Vault, n: int, which: int) -> None:
    ReportingConnection.current = (n, which)
    mark("S", n, which)
    vault.save()


def sign(vault: Vault, n: int) -> None:
    """Save 1, like Wallet.pay: the counter moves and the signed message waits in the outbox."""
    vault.data["counter"] = n
    vault.data["outbox"].append({"msg_id": f"p{n}", "counter": n, "body": f"signed-p{n}"})
    save(vault, n, 1)


def record(vault: Vault, n: int) -> None:
    """Save 2, like Wallet._record: the receipt and the history entry, the outbox entry leaves."""
    vault.data["history"].append({"at_ms": 1_700_000_000_000 + n, "type": "pay", "msg_id": f"p{n}"})
    vault.data["receipts"].append({"msg_id": f"p{n}", "receipt": receipt_text(n)})
    if n % BULK_EVERY == 0:
        first = vault.data["notices_total"] + 1
        for index in range(first, first + BULK_NOTICES):
            vault.data["notices"].append(notice_record(index))
        vault.data["notices_total"] = first + BULK_NOTICES - 1
    vault.data["outbox"].pop(0)
    save(vault, n, 2)
    mark("ACK", n)


def run_payments(path: str, password: str) -> None:
    vault = Vault.open(path, password)
    mark("READY")
    if vault.data["outbox"]:
        record(vault, vault.data["counter"])  # a signed payment the last run did not record
    n = vault.data["counter"]
    while True:
        n += 1
        sign(vault, n)
        record(vault, n)


def report_around(function, before: str, after: str):
    @functools.wraps(function)
    def reporting(*args, **kwargs):
        mark(before)
        result = function(*args, **kwargs)
        mark(after)
        return result

    return reporting


def run_store_write(mode: str, path: str, password: str, seed: int) -> None:
    """Create or migrate, reporting the steps: W (store write), L/l (link), R/r (replace)."""
    vault_module._write_new_store = report_around(vault_module._write_new_store, "W", "w")
    vault_module.link_new_name = report_around(vault_module.link_new_name, "L", "l")
    os.replace = report_around(os.replace, "R", "r")
    mark("READY")
    if mode == "create":
        Vault.create(path, password, creation_document(seed), kdf=MINIMUM_KDF)
    else:
        Vault.open(path, password)
    mark("DONE")


def creation_document(seed: int) -> dict:
    """The document create writes (and migrate's first-format file holds), from the seed."""
    core = initial_core() | {"counter": 30, "notices_total": 5, "seed": seed}
    return core | {
        "history": [{"at_ms": 1_700_000_000_000 + n, "type": "pay", "msg_id": f"p{n}"} for n in range(1, 31)],
        "receipts": [{"msg_id": f"p{n}", "receipt": receipt_text(n)} for n in range(1, 31)],
        "notices": [notice_record(index) for index in range(1, 6)],
    }


def main() -> None:
    mode, path, password, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # Every connection the vault opens in this process reports its commits.
    sqlite3.connect = functools.partial(sqlite3.connect, factory=ReportingConnection)
    if mode == "pay-jitter":
        ReportingConnection.jitter = random.Random(seed)
    if mode.startswith("pay"):
        run_payments(path, password)
    else:
        run_store_write(mode, path, password, seed)


if __name__ == "__main__":
    main()
