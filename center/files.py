"""Files the center hands to people (payout files, audit exports): written
completely, fsynced, and given their name only at the end, never over an
existing file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# Filesystems that cannot hard-link (FAT on an auditor's USB stick, some mounts).
NO_LINK_ERRNOS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


def link_no_clobber(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path`; FileExistsError if that name exists.

    link() is atomic and fails on an existing name, where rename() would
    silently replace it. Without hard links: check, then rename (the window is
    two writers choosing the same name at the same instant).
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in NO_LINK_ERRNOS:
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.rename(tmp, path)


def fsync_directory(directory: Path) -> None:
    """The new directory entry must survive a crash too, not only the data."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
