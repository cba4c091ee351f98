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


# --- the data directory: the owner's alone (hostkit.private_files holds the rule) ------------------

# A data directory holds a few dozen files; a walk stops here rather than run for ever.
MAX_TREE_ENTRIES = 10_000


def _walk_tree(root: Path, skip: frozenset[Path]) -> list[Path]:
    """root and everything under it, links not followed, `skip` subtrees left out; at most MAX_TREE_ENTRIES."""
    found = [root]
    for directory, subdirs, names in os.walk(root, followlinks=False):
        here = Path(directory)
        subdirs[:] = sorted(d for d in subdirs if here / d not in skip)
        found += [here / name for name in sorted(subdirs) + sorted(names) if here / name not in skip]
        if len(found) > MAX_TREE_ENTRIES:
            raise ValueError(f"{root} holds over {MAX_TREE_ENTRIES} files: move what the center does not need "
                             "elsewhere")
    return found


def make_tree_private(root: Path) -> None:
    """Directories 0700 and files 0600 under root (root included), whatever they were before."""
    from hostkit.private_files import make_private

    for path in _walk_tree(root, frozenset()):
        make_private(path)


def first_open_path(root: Path, *, skip: frozenset[Path] = frozenset(),
                    extra: tuple[Path, ...] = ()) -> str | None:
    """One line for the first path under root (or in `extra`) that group or others can access, else None.

    The root itself is checked first: with a private root nothing below it is reachable by others,
    but an open file under it still is once someone loosens the directory again.
    """
    from hostkit.private_files import access_problem

    for path in (*_walk_tree(root, skip), *extra):
        problem = access_problem(path)
        if problem is not None:
            return problem
    return None
