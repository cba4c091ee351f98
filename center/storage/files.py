"""The center's data directory: its permissions checked and tightened (the rule itself is
hostkit.private_files, which also writes every file the center hands out)."""

from __future__ import annotations

import os
from pathlib import Path

from hostkit.private_files import access_problem, make_private

# A data directory holds a few dozen files; a walk stops here rather than run for ever.
MAX_TREE_ENTRIES = 10_000


def _walk_tree(root: Path, skip: frozenset[Path]) -> list[Path]:
    """root and everything under it, links not followed, `skip` subtrees left out.

    At most MAX_TREE_ENTRIES."""
    found = [root]
    for directory, subdirs, names in os.walk(root, followlinks=False):
        here = Path(directory)
        subdirs[:] = sorted(d for d in subdirs if here / d not in skip)
        found += [here / name for name in sorted(subdirs) + sorted(names) if here / name not in skip]
        if len(found) > MAX_TREE_ENTRIES:
            raise ValueError(
                f"{root} holds over {MAX_TREE_ENTRIES} files: move what the center does not need elsewhere"
            )
    return found


def make_tree_private(root: Path) -> None:
    """Directories 0700 and files 0600 under root (root included), whatever they were before."""
    for path in _walk_tree(root, frozenset()):
        make_private(path)


def first_open_path(
    root: Path, *, skip: frozenset[Path] = frozenset(), extra: tuple[Path, ...] = ()
) -> str | None:
    """One line for the first path under root (or in `extra`) that group or others can access, else None.

    The root itself is checked first: with a private root nothing below it is reachable by others,
    but an open file under it still is once someone loosens the directory again.
    """
    for path in (*_walk_tree(root, skip), *extra):
        problem = access_problem(path)
        if problem is not None:
            return problem
    return None
