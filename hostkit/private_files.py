"""Private files: who may read them, and the one way both programs write a secret to disk.

A directory holding keys, PINs or personal data is 0700 and every file in it 0600. Commands that
create such a directory tighten whatever was there before; commands that open one refuse it, in one
line naming the path and the chmod that fixes it, while group or others have any access (a copy of
the vault can be attacked offline; the center's database names people and their bank accounts).

Every secret the wallet or the center writes (vault, config, keys, backups, exports) goes through
`write_new_file` or `replace_file` (or, streamed, `new_file_stream` then `link_new_name`), so
each has the same guarantees: created 0600 (never briefly wider), never through a symbolic link
planted at the path (O_NOFOLLOW), and on disk before the call returns (fsync of the file, then of
its directory, so a crash cannot leave the name pointing at nothing or at half a file).
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Any permission bit for group or others: read, write or (for a directory) search.
OTHERS_BITS = 0o077
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# link() fails with these where the file system has no hard links (FAT, some network and FUSE mounts).
NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK})


def access_problem(path: Path) -> str | None:
    """One line when group or others have access to `path` (not following a link).

    None when it is private or absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & OTHERS_BITS:
        return None
    mode = stat.S_IMODE(info.st_mode)
    wanted = PRIVATE_DIR_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
    return (
        f"{path} is open to other users (mode {mode:04o}): "
        f"run `chmod {wanted:o} {shlex.quote(str(path))}` and try again"
    )


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


@contextmanager
def new_file_stream(path: Path, *, mode: int = PRIVATE_FILE_MODE) -> Iterator[BinaryIO]:
    """Stream a secret into a new file, for what is too large to hold in memory (a backup archive).

    `path` is created exactly as `write_new_file` creates it (FileExistsError when anything is there).
    When the block ends normally the data is fsynced and the directory too; when it raises, the
    partial file is removed. Write to a temporary name and `link_new_name` it to publish it whole.
    """
    assert not mode & 0o022, "no file of ours is writable by group or others"
    fd = os.open(path, _NEW_FILE_FLAGS, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def link_new_name(tmp: Path, path: Path) -> None:
    """Give the finished file `tmp` the name `path`; FileExistsError if anything is at `path`.

    link() is atomic and fails on an existing name (a link planted there included), where rename()
    would silently replace it. Without hard links: check, then rename (the window is two writers
    choosing the same name at the same instant). The caller removes `tmp` if it is still there
    (`tmp.unlink(missing_ok=True)`) and fsyncs the directory.
    """
    try:
        os.link(tmp, path, follow_symlinks=False)
    except OSError as error:
        if error.errno not in NO_LINK_ERRNOS:  # EEXIST (something at `path`) included
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.rename(tmp, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)
