"""Private files: who may read them, and the one way both programs write a secret to disk.

A directory holding keys, PINs or personal data is 0700 and every file in it 0600. Commands that
create such a directory tighten whatever was there before; commands that open one refuse it, in one
line naming the path and the chmod that fixes it, while group or others have any access (a copy of
the vault can be attacked offline; the center's database names people and their bank accounts).

Every secret the wallet or the center writes (vault, config, keys, backups, exports) goes through
`write_new_file` or `replace_file`, so each has the same guarantees: created 0600 (never briefly
wider), never through a symbolic link planted at the path (O_NOFOLLOW), and on disk before the call
returns (fsync of the file, then of its directory, so a crash cannot leave the name pointing at
nothing or at half a file).
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Any permission bit for group or others: read, write or (for a directory) search.
OTHERS_BITS = 0o077
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def access_problem(path: Path) -> str | None:
    """One line when group or others have access to `path` (not following a link); None when private or absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & OTHERS_BITS:
        return None
    mode = stat.S_IMODE(info.st_mode)
    wanted = PRIVATE_DIR_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
    return (f"{path} is open to other users (mode {mode:04o}): "
            f"run `chmod {wanted:o} {shlex.quote(str(path))}` and try again")


def make_private(path: Path) -> None:
    """0700 for a directory, 0600 for anything else; a symbolic link is left alone (never followed)."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return
    wanted = PRIVATE_DIR_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
    if stat.S_IMODE(info.st_mode) != wanted:
        os.chmod(path, wanted, follow_symlinks=False)


def fsync_directory(directory: Path) -> None:
    """The new directory entry must survive a crash too, not only the data."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Create `path` holding `data`; FileExistsError if anything (a file, a link) is already there."""
    assert not mode & 0o022, "no file of ours is writable by group or others"
    fd = os.open(path, _NEW_FILE_FLAGS, mode)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    fsync_directory(path.parent)


def replace_file(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Atomically make `path` hold `data`: a fresh temporary file beside it, then a rename over it.

    Readers see the old content or the new, never a mix; a link at `path` is replaced, not followed.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    write_new_file(tmp, data, mode=mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)
