"""One process at a time on a vault: an flock on ``<vault>.lock`` held from open to save."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import time
from collections.abc import Iterator

from hostkit.private_files import PRIVATE_FILE_MODE
from hostkit.sealing import is_int, show
from token_wallet.vault import VaultBusy, VaultError, ensure_private_dir, sibling

LOCK_TIMEOUT_MAX_MS = 600_000
LOCK_POLL_MAX_MS = 50
DEFAULT_LOCK_TIMEOUT_MS = 10_000


@contextlib.contextmanager
def vault_lock(path, timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> Iterator[None]:
    """Hold an exclusive flock on ``<path>.lock`` for open -> edit -> save.

    Waits up to timeout_ms, then raises VaultBusy. The lock file is never
    deleted (deleting it would let two processes lock different inodes).
    flock is per open file: nesting vault_lock on one path in one process
    waits for itself and ends in VaultBusy.
    """
    if not is_int(timeout_ms) or not 0 <= timeout_ms <= LOCK_TIMEOUT_MAX_MS:
        raise VaultError(f"lock timeout_ms={show(timeout_ms)} is outside [0, {LOCK_TIMEOUT_MAX_MS}]")
    lock_path = sibling(pathlib.Path(path), ".lock")
    ensure_private_dir(lock_path.parent)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        _acquire(fd, lock_path, timeout_ms)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, lock_path: pathlib.Path, timeout_ms: int) -> None:
    deadline_s = time.monotonic() + timeout_ms / 1000
    poll_ms = 1
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        remaining_s = deadline_s - time.monotonic()
        if remaining_s <= 0:
            raise VaultBusy(
                f"the vault is in use by another process (lock {lock_path} held for over {timeout_ms} ms): "
                "wait for it to finish and retry"
            )
        time.sleep(min(poll_ms / 1000, remaining_s))
        poll_ms = min(poll_ms * 2, LOCK_POLL_MAX_MS)
