"""Crash harness for the vault's record store: a wallet-like process (tests/vault_crash_worker.py)
is SIGKILLed at random instants of its saves, 200 times on one vault, and of a create and of a
v1 -> v2 migration.

After every kill the store must open, be consistent (the counter, the outbox, the history, the
receipts and the notices agree: never a record without the core that counts it, or the reverse),
hold every acknowledged payment, and hold exactly what the worker's last reported step allows
(a save whose COMMIT returned is on disk; one that had not reached COMMIT is not). Records must be
contiguous: the newest after each kill, all of them at the end.

Half of the kills are checked on a copy of the killed files (database and WAL, no shared-memory
file), so the next worker itself recovers whatever WAL the kill left, torn tail included; the
other half are opened in place. Kill instants come from one seed (VAULT_CRASH_SEED, printed in
every failure); the worker's jitter mode moves them across the COMMIT.
"""

from __future__ import annotations

import collections
import os
import pathlib
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

from hostkit.sealing import MINIMUM_KDF
from token_wallet.vault import V1_BACKUP_SUFFIX, Vault
from token_wallet.vault_base import sibling
from token_wallet.vault_store import KINDS, SQLITE_MAGIC
from token_wallet.vault_v1 import MAGIC as V1_MAGIC
from token_wallet.vault_v1 import VaultV1

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from vault_crash_worker import creation_document, initial_core, notice_record, receipt_text

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("VAULT_CRASH_SEED", "20261203"))
WORKER = pathlib.Path(__file__).parent / "vault_crash_worker.py"
PASSWORD = "crash-harness password A"
PAY_KILLS = 200
CREATE_KILLS = 30
MIGRATE_KILLS = 40
NEWEST_CHECKED = 3
# Kill instants for the payment loop: some during start-up and open, some at the first saves
# after the open (a resumed payment), most anywhere in the loop. Short, so the vault stays small.
STARTUP_KILL_MAX_S = 0.25
EARLY_KILL_MAX_S = 0.002
LOOP_KILL_MAX_S = 0.025
WORKER_START_TIMEOUT_S = 30
WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24

# Disk states (records R, counter) the worker's last step allows, given R/counter before the run.
# n is the payment of the step; save 1 signs it (counter n), save 2 records it (R n).
ALLOWED_AFTER = {
    ("S", 1): lambda n: {(n - 1, n - 1)},
    ("C", 1): lambda n: {(n - 1, n - 1), (n - 1, n)},
    ("D", 1): lambda n: {(n - 1, n)},
    ("S", 2): lambda n: {(n - 1, n)},
    ("C", 2): lambda n: {(n - 1, n), (n, n)},
    ("D", 2): lambda n: {(n, n)},
}
PHASES = {
    None: "start-up or open",
    "READY": "opened, before the first save",
    "S": "in save, before COMMIT",
    "C": "in COMMIT",
    "D": "after COMMIT, before the save returned",
    "ACK": "between saves (acknowledged)",
}


# --- the worker -------------------------------------------------------------------------------------


def start_worker(mode: str, path: pathlib.Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(path), PASSWORD, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: readline takes no step past the one waited for from the pipe
    )


def wait_for_line(proc: subprocess.Popen, wanted: str) -> None:
    """Read the worker's steps until ``wanted`` (the pipe is drained again after the kill)."""
    while True:
        line = proc.stdout.readline().decode()
        if not line:
            raise AssertionError(f"worker ended before {wanted}: {proc.stderr.read().decode()[-2000:]}")
        if line.split() == wanted.split():
            return


def kill_and_collect(proc: subprocess.Popen, *, may_finish: bool = False) -> list[list[str]]:
    """SIGKILL; every step the worker reported (os.write, so all of them are in the pipe).

    ``may_finish``: a create or migration may have ended (DONE) before the kill came."""
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=WORKER_START_TIMEOUT_S)
    finished = may_finish and proc.returncode == 0 and out.decode().splitlines()[-1:] == ["DONE"]
    if proc.returncode != -signal.SIGKILL and not finished:
        raise AssertionError(
            f"worker ended by itself (rc={proc.returncode}, seed={SEED}): {err.decode()[-2000:]}"
        )
    return [line.split() for line in out.decode().splitlines()]


# --- the WAL a kill leaves ----------------------------------------------------------------------------


def wal_frame_list(path: pathlib.Path) -> tuple[int, list[tuple[int, bool]]]:
    """(page size, [(offset, is commit frame)]) of the current WAL generation of ``path``-wal.

    Frames of the current generation carry the header's salts (older ones beyond them are
    leftovers of a generation before a checkpoint). Checksums are not verified: a frame whose
    header was written counts as begun.
    """
    try:
        raw = sibling(path, "-wal").read_bytes()
    except FileNotFoundError:
        return 0, []
    if len(raw) < WAL_HEADER_BYTES:
        return 0, []
    page_size = struct.unpack(">I", raw[8:12])[0]
    salts = raw[16:24]
    frames = []
    for offset in range(
        WAL_HEADER_BYTES, len(raw) - WAL_FRAME_HEADER_BYTES + 1, WAL_FRAME_HEADER_BYTES + page_size
    ):
        if raw[offset + 8 : offset + 16] != salts:
            break
        frames.append((offset, struct.unpack(">I", raw[offset + 4 : offset + 8])[0] != 0))
    return page_size, frames


def wal_frames(path: pathlib.Path) -> tuple[int, int]:
    """(frames in the WAL, frames after its last commit frame): the latter were being written
    when the kill came, a torn transaction SQLite must ignore."""
    _page_size, frames = wal_frame_list(path)
    commits = [i for i, (_offset, commit) in enumerate(frames) if commit]
    return len(frames), len(frames) - (commits[-1] + 1 if commits else 0)


def crash_image(path: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
    """The killed files as they are (database and WAL; SQLite rebuilds the shared-memory index)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    copy = scratch / path.name
    shutil.copyfile(path, copy)
    if sibling(path, "-wal").exists():
        shutil.copyfile(sibling(path, "-wal"), sibling(copy, "-wal"))
    return copy


# --- what the store must hold ---------------------------------------------------------------------------


def last_step(steps: list[list[str]]) -> list[str] | None:
    return steps[-1] if steps else None


def allowed_states(steps: list[list[str]], before: tuple[int, int]) -> set[tuple[int, int]]:
    step = last_step(steps)
    if step is None or step[0] == "READY":
        return {before}
    if step[0] == "ACK":
        n = int(step[1])
        return {(n, n)}
    return ALLOWED_AFTER[(step[0], int(step[2]))](int(step[1]))


def check_consistent(vault: Vault, context: str) -> tuple[int, int]:
    """The core and the records agree; the newest records are the right ones. Returns (R, counter)."""
    data = vault.data
    records, counter = len(data["history"]), data["counter"]
    assert len(data["receipts"]) == records, context
    if counter == records + 1:
        assert [e["msg_id"] for e in data["outbox"]] == [f"p{counter}"], context  # signed, not recorded
    else:
        assert (counter, data["outbox"]) == (records, []), context
    first = max(1, records - NEWEST_CHECKED + 1)
    expected = list(range(first, records + 1))
    assert [h["msg_id"] for h in data["history"].page(NEWEST_CHECKED).items] == [f"p{n}" for n in expected], (
        context
    )
    assert data["receipts"].page(NEWEST_CHECKED).items == [receipt_of(n) for n in expected], context
    notices = data["notices"]
    assert len(notices) == data["notices_total"], context
    if notices:
        assert notices[-1] == notice_record(len(notices)), context
    return records, counter


def receipt_of(n: int) -> dict:
    return {"msg_id": f"p{n}", "receipt": receipt_text(n)}


def check_all_records(path: pathlib.Path) -> int:
    """Every record, read back in order: contiguous, each the right one."""
    vault = Vault.open(path, PASSWORD)
    try:
        records = len(vault.data["history"])
        assert [h["msg_id"] for h in vault.data["history"]] == [f"p{n}" for n in range(1, records + 1)]
        assert list(vault.data["receipts"]) == [receipt_of(n) for n in range(1, records + 1)]
        notices = vault.data["notices"]
        assert list(notices) == [notice_record(i) for i in range(1, len(notices) + 1)]
        return records
    finally:
        vault.close()


def open_and_check(path: pathlib.Path, context: str) -> tuple[int, int]:
    vault = Vault.open(path, PASSWORD)
    try:
        return check_consistent(vault, context)
    finally:
        vault.close()


# --- the payment loop -------------------------------------------------------------------------------------


def kill_one_run(path: pathlib.Path, rng: random.Random) -> list[list[str]]:
    """One worker on the vault, SIGKILLed at a random instant; its reported steps."""
    mode = rng.choice(["pay", "pay-jitter"])
    proc = start_worker(mode, path, rng.randrange(2**32))
    profile = rng.random()
    if profile < 0.1:
        time.sleep(rng.uniform(0, STARTUP_KILL_MAX_S))
        return kill_and_collect(proc)
    wait_for_line(proc, "READY")
    time.sleep(rng.uniform(0, EARLY_KILL_MAX_S if profile < 0.4 else LOOP_KILL_MAX_S))
    steps = kill_and_collect(proc)
    return [["READY"], *steps]  # READY was read before the kill


def test_kills_during_payment_saves_lose_no_acknowledged_receipt(tmp_path):
    path = tmp_path / "home" / "wallet.vault"
    Vault.create(path, PASSWORD, initial_core(), kdf=MINIMUM_KDF).close()
    rng = random.Random(SEED)
    state, acked = (0, 0), 0
    phases, torn_wals, pending_wals = collections.Counter(), 0, 0
    started = time.monotonic()
    for index in range(PAY_KILLS):
        steps = kill_one_run(path, rng)
        step = last_step(steps)
        phases[PHASES[step[0] if step else None]] += 1
        acked = max([acked] + [int(s[1]) for s in steps if s[0] == "ACK"])
        frames, torn = wal_frames(path)
        pending_wals += frames > 0
        torn_wals += torn > 0
        context = f"kill {index}, seed {SEED}, last step {step}, state before {state}, wal {frames}/{torn}"
        # Even kills: the next worker recovers the WAL itself; odd kills: it is recovered here.
        opened = crash_image(path, tmp_path / "image") if index % 2 == 0 else path
        state_now = open_and_check(opened, context)
        assert state_now in allowed_states(steps, state), context
        assert state_now[0] >= acked, f"an acknowledged payment was lost: {context}"
        state = state_now
    records = check_all_records(path)
    elapsed_s = time.monotonic() - started
    print(
        f"\nvault crash: {PAY_KILLS} kills in {elapsed_s:.1f} s, seed {SEED}, {records} payments recorded, "
        f"{acked} acknowledged; phases {dict(phases)}; WAL left with frames {pending_wals}, "
        f"with a torn transaction {torn_wals}"
    )
    assert records >= acked and records == state[0]
    # The harness must really have hit the commit, or it proves little.
    assert phases[PHASES["C"]] > 0 and phases[PHASES["S"]] > 0, dict(phases)


# --- create and migration ---------------------------------------------------------------------------------


def document_of(vault) -> dict:
    """The whole document (core and every record), as VaultV1 and Vault.create take it."""
    data = dict(vault.data)
    for kind in KINDS:
        data[kind] = list(data.get(kind, []))
    return data


def calibrate(mode: str, path: pathlib.Path, prepare) -> tuple[float, float]:
    """Seconds from READY to DONE and from W (the store write) to DONE, from one uncut run."""
    prepare(path)
    proc = start_worker(mode, path, 0)
    wait_for_line(proc, "READY")
    ready_s = time.monotonic()
    wait_for_line(proc, "W")
    write_s = time.monotonic()
    wait_for_line(proc, "DONE")
    done_s = time.monotonic()
    proc.wait(timeout=WORKER_START_TIMEOUT_S)
    return done_s - ready_s, done_s - write_s


def kill_store_write(mode: str, path: pathlib.Path, rng: random.Random, timing: tuple[float, float]):
    """Start create/migrate and kill it: half anywhere, half inside the store write. Its steps."""
    total_s, write_s = timing
    proc = start_worker(mode, path, 0)
    wait_for_line(proc, "READY")
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0, total_s * 1.1))
        return [["READY"], *kill_and_collect(proc, may_finish=True)]
    wait_for_line(proc, "W")
    time.sleep(rng.uniform(0, write_s * 1.1))
    return [["READY"], ["W"], *kill_and_collect(proc, may_finish=True)]


def leftovers(directory: pathlib.Path, path: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in {path.name, path.name + ".lock"})


def test_kill_during_create_leaves_no_vault_or_a_complete_one(tmp_path):
    rng = random.Random(SEED + 1)
    document = creation_document(0)
    timing = calibrate("create", tmp_path / "calibrate" / "wallet.vault", lambda _p: None)
    outcomes, stray, last_steps = collections.Counter(), collections.Counter(), collections.Counter()
    for index in range(CREATE_KILLS):
        path = tmp_path / f"home{index}" / "wallet.vault"
        steps = kill_store_write("create", path, rng, timing)
        last_steps[last_step(steps)[0]] += 1
        context = f"create kill {index}, seed {SEED}, steps {steps}"
        if path.exists():
            vault = Vault.open(path, PASSWORD)
            assert document_of(vault) == document, context
            outcomes["complete vault"] += 1
        else:
            assert "l" not in {s[0] for s in steps}, f"the vault was linked, then vanished: {context}"
            vault = Vault.create(path, PASSWORD, document, kdf=MINIMUM_KDF)  # a retry clears what is left
            outcomes["absent, created again"] += 1
        vault.close()
        stray.update(leftovers(path.parent, path))
    print(
        f"\nvault create kills: {dict(outcomes)}; last steps {dict(last_steps)}; "
        f"files left beside the vault: {dict(stray)}"
    )
    assert outcomes["complete vault"] > 0 and outcomes["absent, created again"] > 0, dict(outcomes)


def write_v1(path: pathlib.Path) -> None:
    VaultV1.create(path, PASSWORD, creation_document(0), kdf=MINIMUM_KDF)


def check_migration_state(path: pathlib.Path, document: dict, context: str) -> str:
    """Either the v1 file is still in place, or the new store is and the v1 backup beside it."""
    magic = path.read_bytes()[: len(SQLITE_MAGIC)]
    if magic.startswith(V1_MAGIC):
        assert VaultV1.open(path, PASSWORD).data == document, context
        return "still v1"
    assert magic == SQLITE_MAGIC, context
    backup = sibling(path, V1_BACKUP_SUFFIX)
    assert backup.exists(), f"migrated but the v1 backup is gone before any save: {context}"
    assert VaultV1.open(backup, PASSWORD).data == document, context
    return "migrated, backup kept"


def test_kill_during_migration_keeps_the_v1_data(tmp_path):
    rng = random.Random(SEED + 2)
    document = creation_document(0)
    timing = calibrate("migrate", tmp_path / "calibrate" / "wallet.vault", write_v1)
    outcomes, stray, last_steps = collections.Counter(), collections.Counter(), collections.Counter()
    for index in range(MIGRATE_KILLS):
        path = tmp_path / f"home{index}" / "wallet.vault"
        write_v1(path)
        steps = kill_store_write("migrate", path, rng, timing)
        last_steps[last_step(steps)[0]] += 1
        context = f"migrate kill {index}, seed {SEED}, steps {steps}"
        outcomes[check_migration_state(path, document, context)] += 1
        # The next run finishes the job; the run after it saves to the new store, which drops
        # the backup.
        for _run in range(2):
            vault = Vault.open(path, PASSWORD)
            assert document_of(vault) == document, context
            vault.save()
            vault.close()
        assert not sibling(path, V1_BACKUP_SUFFIX).exists(), context
        stray.update(leftovers(path.parent, path))
    print(
        f"\nvault migrate kills: {dict(outcomes)}; last steps {dict(last_steps)}; "
        f"files left beside the vault: {dict(stray)}"
    )
    assert outcomes["still v1"] > 0 and outcomes["migrated, backup kept"] > 0, dict(outcomes)


# --- a torn WAL transaction, cut at every frame -------------------------------------------------------------


def pay_in_one_save(vault: Vault, n: int, notices: int) -> None:
    """Payment n recorded in one save (nothing waits in the outbox), with ``notices`` notices."""
    vault.data["counter"] = n
    vault.data["history"].append({"at_ms": 1_700_000_000_000 + n, "type": "pay", "msg_id": f"p{n}"})
    vault.data["receipts"].append(receipt_of(n))
    first = vault.data["notices_total"] + 1
    for index in range(first, first + notices):
        vault.data["notices"].append(notice_record(index))
    vault.data["notices_total"] = first + notices - 1
    vault.save()


def cut_image(image: pathlib.Path, scratch: pathlib.Path, wal_bytes: int) -> pathlib.Path:
    """The crash image with its WAL cut after ``wal_bytes``: a kill between two frame writes."""
    copy = crash_image(image, scratch)
    with open(sibling(copy, "-wal"), "r+b") as wal:
        wal.truncate(wal_bytes)
    return copy


def test_torn_wal_transaction_opens_to_the_previous_save(tmp_path):
    """Deterministic counterpart of the random kills: the last save's WAL frames cut at every
    frame boundary and inside every frame; each cut opens to the save before it."""
    path = tmp_path / "home" / "wallet.vault"
    Vault.create(path, PASSWORD, initial_core(), kdf=MINIMUM_KDF).close()
    vault = Vault.open(path, PASSWORD)
    pay_in_one_save(vault, 1, notices=0)
    pay_in_one_save(vault, 2, notices=80)  # many frames (16 KiB pages): records, index and state pages
    image = crash_image(path, tmp_path / "image")  # the vault still open: nothing checkpointed
    vault.close()
    page_size, frames = wal_frame_list(image)
    commits = [i for i, (_offset, commit) in enumerate(frames) if commit]
    assert len(commits) == 2 and commits[-1] == len(frames) - 1, commits
    last_save = frames[commits[0] + 1 :]
    assert len(last_save) >= 8, "the second save should span many frames"
    cuts = [offset + part for offset, _ in last_save for part in (0, WAL_FRAME_HEADER_BYTES + page_size // 2)]
    for cut in cuts:
        assert open_and_check(cut_image(image, tmp_path / "cut", cut), f"cut at {cut}") == (1, 1)
    full = sibling(image, "-wal").stat().st_size
    assert open_and_check(cut_image(image, tmp_path / "cut", full), "whole WAL") == (2, 2)
    # After a torn tail, the next save goes on from the previous one and reads back whole.
    middle = cut_image(image, tmp_path / "cut", cuts[len(cuts) // 2])
    vault = Vault.open(middle, PASSWORD)
    pay_in_one_save(vault, 2, notices=3)
    vault.close()
    assert check_all_records(middle) == 2
    print(
        f"\ntorn WAL: the last save spans {len(last_save)} frames; {len(cuts)} cuts opened to the save before"
    )
